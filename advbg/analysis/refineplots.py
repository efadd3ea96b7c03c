"""PNGs of `advbg refine`: fooling rate against the L-infinity budget (with 95% intervals), and a before/after grid
(start background | refined background | composite with prediction and margin)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from advbg.analysis.plots import pyplot
from advbg.files import save_figure


def refine_curve_png(path: str | os.PathLike, eps: Sequence[float], rates: Sequence[tuple[float, float, float]],
                     real: tuple[float, float, float], n: int, title: str,
                     others: dict[str, tuple[float, float, float]] | None = None) -> Path:
    """Fooling rate (%) against EPS (in /255) with 95% interval bars; ``real`` (rate, low, high) is the real worst
    background's rate, drawn at EPS 0 and as a band; ``others`` are budgets without an EPS (e.g. photometric),
    drawn as labelled points at the right."""
    return save_figure(refine_curve_figure(eps, rates, real, n, title, others), path)


def refine_curve_figure(eps: Sequence[float], rates: Sequence[tuple[float, float, float]],
                        real: tuple[float, float, float], n: int, title: str,
                        others: dict[str, tuple[float, float, float]] | None = None):
    """The figure of ``refine_curve_png`` (matplotlib; the caller saves and closes it)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    x = np.array([0.0] + [e * 255 for e in eps])
    r = np.array([real] + list(rates), np.float64).reshape(-1, 3)
    ax.axhspan(real[1], real[2], color="0.9", label=f"real worst background: {real[0]:.1f}%")
    ax.errorbar(x, r[:, 0], yerr=[r[:, 0] - r[:, 1], r[:, 2] - r[:, 0]], marker="o", capsize=3,
                label="L-infinity refined")
    right = (x.max() if len(x) else 0) + 1.5
    for k, (name, (v, lo, hi)) in enumerate((others or {}).items()):
        ax.errorbar([right + k], [v], yerr=[[v - lo], [hi - v]], marker="s", capsize=3, linestyle="none",
                    label=f"{name}: {v:.1f}%")
    ax.set_xlabel("EPS (grey levels, /255)")
    ax.set_ylabel("fooling rate (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"{title}\nn = {n} foregrounds, bars: exact 95% intervals", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def refine_grid_png(path: str | os.PathLike, rows: list[dict], title: str) -> Path:
    """One row per foreground: start background | refined background | composite. Each row dict holds
    ``start``, ``refined``, ``composite`` (H, W, 3) uint8 and the titles ``start_title``, ``refined_title``,
    ``composite_title`` and ``fooled`` (bool)."""
    plt = pyplot()
    fig, axes = plt.subplots(max(1, len(rows)), 3, figsize=(7.5, 2.6 * max(1, len(rows))), squeeze=False)
    for ax_row, row in zip(axes, rows):
        for ax, key in zip(ax_row, ("start", "refined", "composite")):
            ax.imshow(row[key])
            red = key == "composite" and row["fooled"]
            ax.set_title(row[f"{key}_title"], fontsize=8, color="crimson" if red else "black")
    for ax in axes.ravel():
        ax.axis("off")
    if not rows:
        axes[0][1].set_title("nothing refined")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    return save_figure(fig, path)
