"""PNGs people look at: the worst composites of a search, the top backgrounds of each class with their ASR, and
the ASR histogram per class."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from advbg.data.composite import composite
from advbg.data.store import Store
from advbg.files import save_figure
from advbg.stats import RATE_LEGEND, Rate, format_rate, rate


def pyplot():
    """matplotlib.pyplot drawing to files only (the Agg backend, no display): the one set-up of every advbg
    figure; matplotlib is imported on first use because it is slow to import."""
    import matplotlib  # deferred: heavy or optional dependency, loaded only when used

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: heavy or optional dependency, loaded only when used

    return plt


def subplots(*args, **kwargs):
    """``plt.subplots`` on the Agg backend: (figure, axes)."""
    return pyplot().subplots(*args, **kwargs)


def rate_yerr(rates: "list[Rate | None]") -> np.ndarray:
    """(2, N) distances from each rate down to its interval's low and up to its high (NaN for no rate): the
    ``yerr`` of an error bar."""
    return np.array([[r.rate - r.low if r else np.nan for r in rates],
                     [r.high - r.rate if r else np.nan for r in rates]], dtype=float).reshape(2, len(rates))



def _save(fig, path: str | os.PathLike, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # leave room for the suptitle
    return save_figure(fig, path)


def _title(result) -> str:
    return f"{result.model} (label map {result.label_map}), criterion {result.criterion}"


def _short(c) -> str:
    """A cell-sized reason for an empty class (the full message is in the terminal output and JSON)."""
    return "no backgrounds of this class" if not c.n_backgrounds else "no foregrounds of other classes"


def top_backgrounds_png(store: Store, result, path: str | os.PathLike) -> Path:
    """One row per class: its top backgrounds (highest ASR first) titled with bg_id and ASR."""
    classes = result.classes
    k = max([len(c.top_bg) for c in classes] + [1])
    w, h = max(1.9 * k + 0.7, 4.5), 2.2 * len(classes) + 1.1
    fig, axes = subplots(len(classes), k, figsize=(w, h), squeeze=False)
    for row, c in zip(axes, classes):
        for ax in row:
            ax.set_xticks([]), ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
        row[0].set_ylabel(f"{c.class_name}\ntotal {format_rate(c.union_rate)}", fontsize=7)
        if c.message or not len(c.top_bg):
            row[0].text(0.05, 0.5, _short(c), fontsize=8, va="center", transform=row[0].transAxes)
            continue
        images = store.backgrounds.read(c.top_bg)
        for ax, img, b, r in zip(row, images, c.top_bg, c.top_rates):
            ax.imshow(img)
            ax.set_title(f"bg {int(b)}: ASR {format_rate(r)}".replace(" [", "\n["), fontsize=7)
    fig.suptitle(f"Top backgrounds by ASR toward their class\n{_title(result)}\n{RATE_LEGEND}", fontsize=9,
                 y=1 - 0.08 / h, va="top")
    # Fixed margins, not tight_layout: a text-only row would otherwise shrink every image.
    fig.subplots_adjust(left=0.7 / w, right=1 - 0.1 / w, bottom=0.1 / h, top=1 - 1.05 / h, wspace=0.08, hspace=0.45)
    return _save(fig, path, tight=False)


def asr_histogram_png(store: Store, result, path: str | os.PathLike) -> Path:
    """One histogram per class of the ASR over all its backgrounds (0-100 %, 5 % bins)."""
    from matplotlib.ticker import MaxNLocator  # deferred: heavy or optional dependency, loaded only when used

    classes = result.classes
    ncol = min(3, len(classes))
    nrow = math.ceil(len(classes) / ncol)
    fig, axes = subplots(nrow, ncol, figsize=(max(3.4 * ncol, 5.0), 2.5 * nrow + 0.5), squeeze=False)
    bins = np.linspace(0, 100, 21)
    for ax, c in zip(axes.flat, classes):
        ax.set_title(f"{c.class_name}: {c.n_backgrounds} backgrounds", fontsize=9)
        a = c.asr[np.isfinite(c.asr)]
        if c.message or not a.size:
            ax.text(0.5, 0.5, _short(c), ha="center", va="center", fontsize=8, transform=ax.transAxes)
            ax.set_xticks([]), ax.set_yticks([])
            continue
        ax.hist(a, bins=bins, color="steelblue", edgecolor="white")
        ax.axvline(float(np.mean(a)), color="crimson", lw=1, label=f"mean {np.mean(a):.1f}%")
        ax.set_xlim(0, 100)
        ax.set_xlabel("ASR (%)", fontsize=8)
        ax.set_ylabel("backgrounds", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7, title=f"total fooled {format_rate(c.union_rate)}", title_fontsize=7)
    for ax in list(axes.flat)[len(classes):]:
        ax.axis("off")
    fig.suptitle(f"ASR over each class's backgrounds\n{_title(result)}", fontsize=9)
    return _save(fig, path)


def _pct(v: float) -> str:
    return f"{v:.1f}%" if v is not None and np.isfinite(v) else "-"


def worst_grid(store: Store, result, path: str | os.PathLike, n: int = 8, metadata: dict | None = None) -> Path:
    """PNG: for the n foregrounds with the lowest worst margin, foreground | worst background | composite;
    ``metadata``: PNG text entries (e.g. which run drew it)."""
    order = [k for k in np.argsort(result.worst_margin, kind="stable") if result.worst_bg[k] >= 0][:n]
    names = list(store.class_names)
    label = lambda c: names[c] if 0 <= c < len(names) else "no class"  # noqa: E731
    fig, axes = subplots(max(1, len(order)), 3, figsize=(7.5, 2.6 * max(1, len(order))), squeeze=False)
    for row, k in enumerate(order):
        fg_id, bg_id = int(result.fg_id[k]), int(result.worst_bg[k])
        img = store.foregrounds.read([fg_id])[0]
        mask = store.foregrounds.read_masks([fg_id])[0]
        bg = store.backgrounds.read([bg_id])[0]
        comp = composite(img, mask, bg)
        fooled = result.first_fooling_bg[k] >= 0
        titles = (f"fg {fg_id}: {label(int(result.true_class[k]))}",
                  f"bg {bg_id}: {label(int(store.backgrounds.labels[bg_id]))}",
                  f"pred {result.prediction_text(k)}, margin {result.worst_margin[k]:+.2f}"
                  + (" FOOLED" if fooled else ""))
        for ax, im, t in zip(axes[row], (composite(img, mask, 0), bg, comp), titles):
            ax.imshow(im)
            ax.set_title(t, fontsize=8, color="crimson" if (fooled and ax is axes[row][2]) else "black")
            ax.axis("off")
    if not order:
        for ax in axes[0]:
            ax.axis("off")
        axes[0][1].set_title("no composites evaluated")
    run = result.run
    fig.suptitle(f"Worst backgrounds: {run.classifier['name']} ({run.classifier['architecture']}."
                 f"{run.classifier['weight_tag']}), criterion {str(run.criterion).split(':')[0].split('(')[-1]}"
                 + (f"\nfooling rate {format_rate(rate(int(result.fooled.sum()), len(result)))}; {RATE_LEGEND}"
                    if len(result) else ""), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # leave room for the suptitle
    return save_figure(fig, path, metadata=metadata)
