"""`advbg report`: one self-contained HTML page of everything a store's results say.

Sections: every complete search run (headline + gallery of foreground | worst background | composite), universal
backgrounds per classifier (recomputed from the stored outcome matrix with ``advbg.analysis.universal``: no
forward pass), evaluation results given as ``advbg eval --results-file`` JSON files, other results groups, and
provenance (store attributes, item checksums verified or not, versions).

The page needs nothing but itself: images and plots are embedded as data URIs, the script and styles are inline,
and a Content-Security-Policy meta tag forbids every other source, so it opens offline from disk and makes no
request. The gallery table has one row per searched foreground; images are embedded only for a capped selection
(see ``GalleryCap``) so that a store of thousands of foregrounds gives a page of a few MB that opens fast.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import shlex
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Callable, Sequence

import jinja2
import numpy as np
from PIL import Image

from advbg._version import __version__
from advbg.analysis.evalreport import load_results
from advbg.analysis.evaluate import PAPER_COLUMNS, ordered_variants
from advbg.analysis.outcomes import stored_outcome
from advbg.analysis.plots import pyplot, rate_yerr, subplots
from advbg.analysis.reportviews import (
    Comparison,
    EvalView,
    OverlayRow,
    PerClassView,
    SaliencySection,
    cell,
    class_views,
    comparison,
    count_rate,
    eval_views,
    gap_of,
    load_saliency,
    maps_file,
    overlay_images,
    read_maps,
    saliency_per_class,
    saliency_variants,
)
from advbg.analysis.report_refine import refine_sections
from advbg.analysis.universal import ClassUniversal, analyse
from advbg.data.composite import composite
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.files import now
from advbg.models.classifier import identity_of
from advbg.progress import progress as progress_bar
from advbg.search.results import SearchResult, listing, load_search, result_info, verify_all
from advbg.search.strategies import prune_label
from advbg.stats import GAP_LEGEND, RATE_LEGEND, Rate, rate, rate_or_none

UNIVERSAL_CRITERION = "bg-class"   # the paper's: a universal background pushes toward its own class
TOP_K, GREEDY_K = 5, 20
VERSIONED = ("torch", "timm", "numpy", "h5py", "matplotlib", "jinja2", "pillow", "faiss-cpu", "faiss-gpu")


@dataclass(frozen=True)
class GalleryCap:
    """Which gallery rows get images: the ``worst`` lowest margins, plus fooled foregrounds (lowest margin first)
    up to ``fooled`` more. Every foreground still gets a text row (sortable, filterable), shown ``page_rows`` at
    a time (rows on other pages are not laid out, so thousands of rows open fast)."""

    worst: int = 200
    fooled: int = 100
    thumb: int = 128          # longest side of an embedded thumbnail, pixels (never enlarged)
    page_rows: int = 250

    def __post_init__(self):
        if self.worst < 0 or self.fooled < 0 or self.thumb < 16 or self.page_rows < 1:
            raise AdvbgError(f"gallery caps must be >= 0, thumbnails >= 16 px and pages >= 1 row (got worst="
                             f"{self.worst}, fooled={self.fooled}, thumb={self.thumb}, page={self.page_rows})")

    def select(self, margin: np.ndarray, fooled: np.ndarray, evaluated: np.ndarray) -> np.ndarray:
        """Row positions that get images, lowest margin first (rows with nothing evaluated never do)."""
        order = np.argsort(np.where(np.isnan(margin), np.inf, margin), kind="stable")
        order = order[evaluated[order]]
        worst = order[:self.worst]
        rest = order[self.worst:]
        return np.concatenate([worst, rest[fooled[rest]][:self.fooled]])


# --------------------------------------------------------------------------------------------- page model
@dataclass(frozen=True)
class GalleryRow:
    fg_id: int
    true_class: str
    worst_bg: int                 # -1: nothing evaluated
    bg_class: str
    pred: str
    margin: float                 # NaN: nothing evaluated
    fooled: bool
    n_fooling: int
    n_evaluated: int
    fg_img: str | None = None     # data URIs (None: beyond the gallery cap)
    comp_img: str | None = None
    raw_pred: str | None = None   # what the model saw (its own top-1 class), where the results record it

    @property
    def margin_text(self) -> str:
        return "" if math.isnan(self.margin) else f"{self.margin:+.3f}"


@dataclass(frozen=True)
class SearchSection:
    name: str
    anchor: str
    headline: list[tuple[str, str]]
    fooling_rate: float
    challenge_accuracy: float
    rows: list[GalleryRow]
    fooling: Rate            # k vulnerable of n searched, with its interval
    challenge: Rate
    classes: list[str]
    n_imaged: int
    warnings: list[str]


@dataclass(frozen=True)
class ClassView:
    name: str
    n_backgrounds: int
    n_targets: int
    union: float
    top: list[tuple[int, float]]           # (bg_id, ASR %)
    greedy: list[tuple[int, int, float]]   # (bg_id, +fooled, coverage %)
    plot: str | None                       # data URI of the ASR histogram + greedy curve
    message: str | None
    union_rate: Rate | None = None         # the same numbers as k/n of the targets with their intervals
    top_rates: list[Rate] = field(default_factory=list)
    greedy5_rate: Rate | None = None

    @property
    def greedy5(self) -> float:
        """% of targets fooled by the first 5 greedy picks (all of them if fewer: no pick adds a target)."""
        return self.greedy[min(5, len(self.greedy)) - 1][2] if self.greedy else 0.0


@dataclass(frozen=True)
class UniversalSection:
    model: str
    anchor: str
    sources: list[str]
    classes: list[ClassView]
    n_unlabelled: int
    note: str | None = None


@dataclass(frozen=True)
class EvalSection:
    file: str
    anchor: str
    variants: list[str]
    rows: list[dict]
    plot: str | None
    store_note: str
    models: list[str] = field(default_factory=list)
    views: list[EvalView] = field(default_factory=list)
    per_class: list[PerClassView] = field(default_factory=list)
    plots: list[tuple[str, str]] = field(default_factory=list)    # (view title, data URI) beyond top-1


@dataclass(frozen=True)
class Report:
    title: str
    store: str
    created: str
    searches: list[SearchSection]
    universals: list[UniversalSection]
    evals: list[EvalSection]
    others: list[dict]
    skipped: list[str]
    provenance: list[tuple[str, str]]
    store_attrs: list[tuple[str, str]]
    bg_thumbs: dict[int, str] = field(default_factory=dict)   # bg_id -> data URI, shared by every row using it
    cap: GalleryCap = GalleryCap()
    comparison: Comparison | None = None
    saliency: list[SaliencySection] = field(default_factory=list)
    legends: tuple[str, ...] = (RATE_LEGEND, GAP_LEGEND, "foreground share: mean [95% seeded bootstrap interval] "
                                "(n images)")
    refines: list = field(default_factory=list)     # advbg.analysis.report_refine.RefineSection


# --------------------------------------------------------------------------------------------- building
def build_report(store_path: str | os.PathLike, eval_files: Sequence[str | os.PathLike] = (), *,
                 cap: GalleryCap = GalleryCap(), verify: bool = True, skip_incomplete: bool = False,
                 progress: bool = True, echo: Callable[[str], None] = print,
                 saliency_files: Sequence[str | os.PathLike] = ()) -> Report:
    """Read every complete results group of the store (and the eval and saliency JSON files) into a Report.

    Raises AdvbgError when the store has no complete results group, or holds an incomplete one (unless
    ``skip_incomplete``: then it is listed as skipped)."""
    evals_raw = [(str(f), load_results(f)) for f in eval_files]           # checked before the long work
    saliency_raw = [(str(f), load_saliency(f)) for f in saliency_files]
    with Store(store_path) as s:
        skipped = _check_groups(s, skip_incomplete)
        thumbs: dict[int, str] = {}
        results = _read_searches(s)
        searches = [_search_section(s, n, r, cap, thumbs, progress) for n, r in results.items()]
        universals = _universal_sections(s, cap, thumbs)
        others = _other_groups(s)
        refines = refine_sections(s, thumb_uri, png_uri)
        attrs = _store_attrs(s)
        digest = s.digest()
        saliency = [_saliency_section(s, f, d, i, searches, cap) for i, (f, d) in enumerate(saliency_raw)]
    evals = [_eval_section(f, d, i, digest) for i, (f, d) in enumerate(evals_raw)]
    compared = comparison(list(results.values()), [f for f, _ in evals_raw])
    provenance = _provenance(store_path, digest, verify, progress, echo)
    return Report(f"advbg report: {Path(store_path).name}", str(store_path), now(), searches, universals, evals,
                  others, skipped, provenance, attrs, thumbs, cap, compared, saliency, refines=refines)


def _read_searches(s: Store) -> dict[str, SearchResult]:
    """Every complete search results group of the store, oldest first, read once (the gallery and the comparison)."""
    return {n: load_search(s, n) for n in _complete(s, "search")}


def _complete(s: Store, kind: str | None = None) -> list[str]:
    return [i.name for i in listing(s, kind, complete=True)]


def _check_groups(s: Store, skip_incomplete: bool) -> list[str]:
    """Names of incomplete groups (skipped); raises when there is nothing complete or skipping was not asked."""
    incomplete = [i.name for i in listing(s, complete=False)]
    if incomplete and not skip_incomplete:
        raise AdvbgError(f"{s.path}: results group(s) {', '.join(map(repr, incomplete))} are incomplete "
                         f"(interrupted); finish them (`advbg search --resume`) or pass --skip-incomplete")
    if not _complete(s):
        raise AdvbgError(f"{s.path} has no complete results; run `advbg search` (and `advbg universal`) first")
    return incomplete


def _label(names: Sequence[str], c: int) -> str:
    return names[c] if 0 <= c < len(names) else "no class"   # "none" is only a prediction (README, Terms)


def _search_section(s: Store, name: str, r: SearchResult, cap: GalleryCap, thumbs: dict[int, str],
                    progress: bool) -> SearchSection:
    names = s.class_names
    bg_labels = s.backgrounds.labels
    evaluated = (r.worst_bg >= 0) & (r.n_evaluated > 0)
    imaged = cap.select(r.worst_margin, r.fooled, evaluated)
    images = _gallery_images(s, r, imaged, cap.thumb, thumbs, progress)
    rows = []
    for k in range(len(r)):
        b = int(r.worst_bg[k])
        fg_img, comp_img = images.get(k, (None, None))
        rows.append(GalleryRow(int(r.fg_id[k]), _label(names, int(r.true_class[k])), b,
                               _label(names, int(bg_labels[b])) if b >= 0 else "-",
                               r.prediction_text(k), float(r.worst_margin[k]), bool(r.fooled[k]),
                               int(r.n_fooling[k]), int(r.n_evaluated[k]), fg_img, comp_img))
    rows.sort(key=lambda row: (math.isnan(row.margin), row.margin if not math.isnan(row.margin) else 0.0))
    classes = sorted({row.true_class for row in rows}, key=lambda c: names.index(c) if c in names else len(names))
    fooling = rate(int(r.fooled.sum()), len(r))
    return SearchSection(name, f"search-{_slug(name)}", _headline(s, name, r), r.fooling_rate,
                         r.challenge_accuracy, rows, fooling, fooling.complement(), classes, len(images),
                         _search_warnings(s, r))


def _gallery_images(s: Store, r: SearchResult, imaged: np.ndarray, size: int, thumbs: dict[int, str],
                    progress: bool, block: int = 64) -> dict[int, tuple[str, str]]:
    """{row: (masked foreground, composite)} data URIs; worst backgrounds go to the shared ``thumbs``."""
    out = {}
    bar = progress_bar(total=len(imaged), desc=f"gallery {r.results_name}", unit="fg", enabled=progress, leave=False)
    for start in range(0, len(imaged), block):
        rows = imaged[start:start + block]
        fg_ids, bg_ids = r.fg_id[rows], r.worst_bg[rows]
        fg, masks, bg = s.foregrounds.read(fg_ids), s.foregrounds.read_masks(fg_ids), s.backgrounds.read(bg_ids)
        for k, f, m, b, bid in zip(rows, fg, masks, bg, bg_ids):
            out[int(k)] = (thumb_uri(composite(f, m, 0), size), thumb_uri(composite(f, m, b), size))
            if int(bid) not in thumbs:
                thumbs[int(bid)] = thumb_uri(b, size)
        bar.update(len(rows))
    bar.close()
    return out


def thumb_uri(img: np.ndarray, size: int, quality: int = 85) -> str:
    """A JPEG data URI of an RGB uint8 image, longest side at most ``size`` pixels."""
    im = Image.fromarray(np.ascontiguousarray(img))
    im.thumbnail((size, size), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_uri(fig) -> str:
    """A PNG data URI of a matplotlib figure (closed afterwards)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=90)
    finally:
        pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _headline(s: Store, name: str, r: SearchResult) -> list[tuple[str, str]]:
    run, attrs = r.run, result_info(s, name).attrs
    if run is None:
        return [("results", name), ("foregrounds", str(len(r)))]
    c = run.classifier
    crit = str(attrs.get("criterion", run.criterion))
    return [
        ("criterion", f"{crit}: {run.criterion}" if not str(run.criterion).startswith("Criterion(") else
         str(run.criterion)),
        ("model", f"{c.get('name')} ({c.get('architecture')}.{c.get('weight_tag')}, label map "
                  f"{c.get('label_map')}, source {c.get('source')})"),
        ("weights SHA-256", c.get("weights_sha256") or "not recorded (no weights file)"),
        ("search", f"{prune_label(run.pruning) if run.pruning else run.mode}; {len(r)} foregrounds x "
                   f"{_n_backgrounds(s, run)} backgrounds"),
        ("composites evaluated", f"{run.forwards:,}" + (f" ({int(r.n_invalid.sum())} with non-finite logits)"
                                                        if r.n_invalid.sum() else "")),
        ("rate", f"{run.composites_per_s:,.1f} composites/s ({run.seconds:.1f} s on {run.device}, "
                 f"batch {run.batch_size}, amp {run.amp}, {run.world_size} process(es))"),
        ("date", f"started {run.started}, completed {attrs.get('completed', '?')}"),
        ("command", str(attrs.get("command") or _command_of(s, run))),
        ("advbg", f"{run.advbg_version}, timm {c.get('timm_version', '?')}, torch {c.get('torch_version', '?')}"),
    ]


def _n_backgrounds(s: Store, run) -> int:
    chosen = (run.config or {}).get("backgrounds")
    return len(chosen) if chosen else len(s.backgrounds)


def _command_of(s: Store, run) -> str:
    """The `advbg search` line that reproduces the run (rebuilt from its record; runs do not store argv)."""
    cfg = run.config or {}
    args = ["advbg", "search", "--store", str(s.path), "--model", str(run.classifier.get("name")),
            "--criterion", str(cfg.get("criterion", "any")), "--label-map", str(run.classifier.get("label_map"))]
    if cfg.get("mode") == "early-exit":
        args.append("--early-exit")
    if cfg.get("prune"):
        args += ["--prune", str(cfg["prune"])]
    return shlex.join(args) + "   (rebuilt from the run record)"


def _search_warnings(s: Store, r: SearchResult) -> list[str]:
    out = []
    if r.run is not None and r.run.store_digest != s.digest():
        out.append(f"computed on other store content (digest {r.run.store_digest}, this store {s.digest()}): "
                   f"the images shown may not be the ones searched")
    if r.run is not None and r.run.mode != "exhaustive":
        out.append(f"{r.run.mode} search: the worst background is the worst among the backgrounds tried")
    return out


# --------------------------------------------------------------------------------------------- universal
def _universal_sections(s: Store, cap: GalleryCap, thumbs: dict[int, str]) -> list[UniversalSection]:
    """One section per classifier whose complete searches recorded an outcome matrix."""
    seen, out = set(), []
    for info in listing(s, "search", complete=True):
        cfg = info.json_attr("classifier")
        if cfg is None:
            continue
        key = json.dumps(identity_of(cfg), sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        section = _universal_section(s, cfg, len(out), cap, thumbs)
        if section is not None:
            out.append(section)
    return out


def _universal_section(s: Store, cfg: dict, i: int, cap: GalleryCap,
                       thumbs: dict[int, str]) -> UniversalSection | None:
    """None when no search of this classifier recorded outcomes (early-exit / pruned runs may not)."""
    # stored_outcome matches groups on classifier.config.to_dict(); the recorded config stands in for a loaded model
    full, used = stored_outcome(s, identity_of(cfg))
    if not used:
        return None
    fg_class, bg_class = s.foregrounds.labels, s.backgrounds.labels
    model = f"{cfg.get('architecture')}.{cfg.get('weight_tag')} (label map {cfg.get('label_map')})"
    unlabelled = int((bg_class < 0).sum())
    try:
        per_class = analyse(full, fg_class, bg_class, s.class_names, UNIVERSAL_CRITERION, top=TOP_K, greedy=GREEDY_K)
    except AdvbgError as e:
        return UniversalSection(model, f"universal-{i}", used, [], unlabelled, f"no per-class numbers: {e}")
    for c in per_class:
        for b in c.top_bg:
            if int(b) not in thumbs:
                thumbs[int(b)] = thumb_uri(s.backgrounds.read([int(b)])[0], cap.thumb)
    return UniversalSection(model, f"universal-{i}", used, [_class_view(c) for c in per_class], unlabelled)


def _class_view(c: ClassUniversal) -> ClassView:
    g = c.greedy
    greedy = [(int(b), int(n), float(v)) for b, n, v in zip(g.bg_id, g.gain, g.coverage)]
    n = c.n_targets
    greedy5 = greedy[min(5, len(greedy)) - 1][2] if greedy else 0.0
    return ClassView(c.class_name, c.n_backgrounds, n, c.union,
                     [(int(b), float(a)) for b, a in zip(c.top_bg, c.top_asr)], greedy,
                     None if c.message else _class_plot(c), c.message,
                     count_rate(c.union, n), [count_rate(a, n) for a in c.top_asr], count_rate(greedy5, n))


def _class_plot(c: ClassUniversal) -> str:
    """ASR histogram over the class's backgrounds | greedy cover curve with the union as its ceiling."""
    fig, (ha, ga) = subplots(1, 2, figsize=(6.2, 2.1))
    from matplotlib.ticker import MaxNLocator  # deferred: matplotlib is slow to import

    a = c.asr[np.isfinite(c.asr)]
    ha.hist(a, bins=np.linspace(0, 100, 21), color="#4c78a8", edgecolor="white")
    ha.set(xlim=(0, 100), xlabel="ASR (%)", ylabel="backgrounds")
    ha.set_title(f"ASR of the {c.n_backgrounds} {c.class_name} backgrounds", fontsize=8)
    picks = np.arange(len(c.greedy.coverage) + 1)
    cover = np.concatenate([[0.0], c.greedy.coverage])
    band = [count_rate(v, c.n_targets) for v in cover]
    if all(b is not None for b in band):
        ga.fill_between(picks, [b.low for b in band], [b.high for b in band], color="#e45756", alpha=0.15, lw=0,
                        label="95% interval")
    ga.plot(picks, cover, marker="o", ms=3, color="#e45756")
    ga.axhline(c.union, ls="--", lw=1, color="gray", label=f"union of all: {c.union:.1f}%")
    top = max([c.union * 1.25 + 2] + [b.high + 2 for b in band if b is not None])
    ga.set(xlim=(0, max(1, len(picks) - 1)), ylim=(0, max(5.0, min(100.0, top))),
           xlabel="backgrounds picked (greedy)", ylabel="targets fooled (%)")
    ga.set_title(f"greedy cover of {c.n_targets} targets", fontsize=8)
    ga.legend(fontsize=7, loc="lower right", frameon=False)
    for ax in (ha, ga):
        ax.tick_params(labelsize=7)
        ax.xaxis.label.set_size(7), ax.yaxis.label.set_size(7)
        ax.spines[["top", "right"]].set_visible(False)
    ha.yaxis.set_major_locator(MaxNLocator(integer=True))
    ga.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout(pad=0.4)
    return png_uri(fig)


# --------------------------------------------------------------------------------------------- eval, others
def _eval_section(path: str, d: dict, i: int, digest: str) -> EvalSection:
    """Every view of one `advbg eval` JSON file (each top-k, the 'none' rate, per class, BG-Gap) and its charts."""
    variants = ordered_variants(list(dict.fromkeys(v for m in d["models"] for v in (m.get("accuracy") or {}))))
    rows = []
    for m in d["models"]:
        ident = m.get("model") or {}
        top1 = {v: ((m.get("accuracy") or {}).get(v, {}).get("topk") or {}).get("top1") for v in variants}
        gap = gap_of(m)
        rows.append(dict(name=ident.get("name", "?") + (" (baseline)" if m.get("baseline") else ""),
                         tag=ident.get("tag", ""), sha=(ident.get("weights_sha256") or "")[:16],
                         top1=[top1[v] for v in variants], bg_gap=m.get("bg_gap"), gap=gap,
                         rates=[_rate_of((m.get("accuracy") or {}).get(v)) for v in variants]))
    st = d.get("store") or {}
    note = (f"store {st.get('path', '?')} (digest {st.get('digest', '?')}"
            + (", the same content as this store)" if st.get("digest") == digest else ", NOT this store's content)"))
    names = [r["name"] for r in rows]
    views = eval_views(d, variants)
    plots = [(v.title, p) for v in views[1:] if (p := _eval_plot(variants, rows, v)) is not None]
    return EvalSection(path, f"eval-{i}", variants, rows, _eval_plot(variants, rows), note, names, views,
                       class_views(d, variants, names), plots)


def _eval_plot(variants: list[str], rows: list[dict], view: EvalView | None = None) -> str | None:
    """Bars per variant and model with 95% error bars: top-1 (the BG-Gap in the legend), or another view."""
    if not variants or not rows:
        return None
    x = np.arange(len(variants))
    width = 0.8 / len(rows)
    fig, ax = subplots(figsize=(max(5.0, 0.9 * len(variants) + 2.5), 3.0 + 0.15 * len(rows)), layout="constrained")
    for j, r in enumerate(rows):
        cells = [view.cells[i][j] for i in range(len(variants))] if view is not None else []
        rates = r["rates"] if view is None else [q if isinstance(q, Rate) else None for q in cells]
        vals = ([np.nan if q is None else getattr(q, "rate", q) for q in cells] if view is not None else
                [np.nan if v is None else v for v in r["top1"]])
        gap = r.get("gap")
        bg = "-" if gap is None else (f"{gap.diff:.1f} [{gap.low:.1f}, {gap.high:.1f}]" if hasattr(gap, "diff")
                                      else f"{gap:.1f}")
        label = f"{r['name']} (BG-Gap {bg})" if view is None else r["name"]
        ax.bar(x + (j - (len(rows) - 1) / 2) * width, vals, width, label=label,
               yerr=rate_yerr(rates), capsize=2, error_kw=dict(lw=0.8))
    ax.set_xticks(x, variants, rotation=30, ha="right", fontsize=8)
    ax.set(ylim=(0, 100), ylabel=("top-1 accuracy" if view is None else view.title) + " (%)")
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)
    # the legend above the axes, in the figure's layout (constrained: long model names never push the axes out)
    fig.legend(fontsize=7, frameon=False, loc="outside upper center", ncol=min(3, len(rows)))
    return png_uri(fig)


# --------------------------------------------------------------------------------------------- saliency
OVERLAY_ROWS = 8


def _saliency_section(s: Store, path: str, d: dict, i: int, searches: list[SearchSection],
                      cap: GalleryCap) -> SaliencySection:
    """Foreground share per variant and class with intervals; overlays of the foregrounds the searches found
    worst (lowest margin first), each beside its worst composite."""
    m, st, cfg = d.get("model") or {}, d.get("store") or {}, d.get("config") or {}
    variants = saliency_variants(d)
    classes, per_class = saliency_per_class(d, st.get("class_names") or s.class_names)
    notes = []
    same = st.get("digest") == s.digest()
    note = (f"store {st.get('path', '?')} (digest {st.get('digest', '?')}"
            + (", the same content as this store)" if same else ", NOT this store's content: no overlays)"))
    maps_path = maps_file(path, d)
    overlays: list[OverlayRow] = []
    if maps_path is None:
        notes.append("no maps file (`advbg saliency --maps FILE.npz`, or the .npz of the same name beside the "
                     "JSON): no overlays")
    elif same:
        overlays = _overlay_rows(s, d, read_maps(maps_path), searches, cap)
    return SaliencySection(path, f"saliency-{i}", f"{m.get('name', '?')} ({m.get('tag', '?')})",
                           str(d.get("layer", "?")), f"the {cfg.get('target', 'true')} class's score",
                           f"95% percentile bootstrap of the mean (seed {cfg.get('seed', '?')}, "
                           f"{cfg.get('resamples', '?')} resamples)", variants, classes, per_class,
                           _saliency_plot(variants), overlays, note, notes)


def _overlay_rows(s: Store, d: dict, maps: dict[str, np.ndarray], searches: list[SearchSection],
                  cap: GalleryCap) -> list[OverlayRow]:
    have = [int(f) for v in d["variants"] for f in maps.get(f"{v['variant']}_fg_index", [])]
    gallery = {row.fg_id: row for sec in reversed(searches) for row in sec.rows}   # the first search wins
    mapped = set(have)
    ranked = [row.fg_id for sec in searches[:1] for row in sec.rows if row.fg_id in mapped]
    chosen = list(dict.fromkeys(ranked + have))[:OVERLAY_ROWS]
    images = overlay_images(s, d, maps, chosen, cap.thumb, thumb_uri)
    names = s.class_names
    out = []
    for f in chosen:
        row = gallery.get(f)
        comp = row.comp_img if row is not None else None
        if row is not None and comp is None and row.worst_bg >= 0:
            fg, mask = s.foregrounds.read([f])[0], s.foregrounds.read_masks([f])[0]
            comp = thumb_uri(composite(fg, mask, s.backgrounds.read([row.worst_bg])[0]), cap.thumb)
        comp_note = ("no search covers this foreground" if row is None else
                     f"worst bg {row.worst_bg}: {row.pred}{': ' + row.raw_pred if row.raw_pred else ''}, "
                     f"margin {row.margin_text or '-'}" + (" (FOOLED)" if row.fooled else ""))
        out.append(OverlayRow(f, _label(names, int(s.foregrounds.labels[f])), comp, comp_note, images.get(f, [])))
    return out


def _saliency_plot(variants) -> str | None:
    """Mean foreground share per variant with its 95% bootstrap interval as error bars."""
    shown = [v for v in variants if v.share_mean is not None]
    if not shown:
        return None
    fig, ax = subplots(figsize=(max(4.0, 0.8 * len(shown) + 2.0), 2.4))
    x = np.arange(len(shown))
    mean = np.array([v.share_mean for v in shown])
    err = np.array([[v.share_mean - v.share_low for v in shown], [v.share_high - v.share_mean for v in shown]])
    ax.bar(x, mean, 0.6, yerr=err, capsize=3, color="#4c78a8", error_kw=dict(lw=0.8))
    ax.set_xticks(x, [v.variant for v in shown], rotation=30, ha="right", fontsize=8)
    ax.set(ylim=(0, 1), ylabel="foreground share")
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return png_uri(fig)


def _rate_of(score: dict | None) -> Rate | None:
    """Top-1 accuracy of an eval JSON entry as k/n with its interval (None where the file has no count)."""
    k, n = ((score or {}).get("correct") or {}).get("top1"), (score or {}).get("n")
    return rate_or_none(int(k), int(n)) if k is not None and n else None


def _other_groups(s: Store) -> list[dict]:
    """Complete results groups of kinds this page has no section for (e.g. saliency): listed with attributes."""
    out = []
    for info in listing(s, complete=True):
        if info.kind in ("search", "refine"):      # refine results have a section of their own
            continue
        out.append(dict(name=info.name, kind=info.kind, attrs=[(k, _short(v)) for k, v in sorted(info.attrs.items())],
                        datasets=", ".join(f"{k} {shape}" for k, shape in info.shapes.items())))
    return out


def _short(v, limit: int = 300) -> str:
    text = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v.tolist() if hasattr(v, "tolist") else v)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _store_attrs(s: Store) -> list[tuple[str, str]]:
    base = [("foregrounds", str(len(s.foregrounds))), ("backgrounds", str(len(s.backgrounds))),
            ("classes", ", ".join(s.class_names)), ("content digest", s.digest())]
    return base + [(k, _short(v)) for k, v in sorted(s.attrs.items())]


def _provenance(store_path, digest: str, verify: bool, progress: bool, echo) -> list[tuple[str, str]]:
    if verify:
        rep = verify_all(store_path, progress=progress)
        checks = ("verified: every item matches its stored checksum; every results group is consistent" if rep.ok
                  else f"{len(rep.problems)} PROBLEM(S): " + "; ".join(rep.problems[:5]))
    else:
        checks = "not verified (--no-verify); run `advbg verify` to check"
    versions = ", ".join(f"{p} {_version(p)}" for p in VERSIONED if _version(p))
    return [("store file", f"{Path(store_path).resolve()} ({os.path.getsize(store_path):,} bytes)"),
            ("content digest", digest), ("item checksums", checks),
            ("report written by", f"advbg {__version__}; {versions}")]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-").lower() or "x"


# --------------------------------------------------------------------------------------------- rendering
def _fmt(v, digits: int = 1) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def render_html(report: Report) -> str:
    """The page as one string (UTF-8 HTML, nothing outside it referenced)."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["num"] = _fmt
    env.filters["cell"] = cell
    env.filters["rate"] = lambda v: "-" if v is None else f"{v.rate:.1f}% [{v.low:.1f}, {v.high:.1f}] ({v.k}/{v.n})"
    text = (resources.files("advbg.analysis") / "templates" / "report.html.j2").read_text(encoding="utf-8")
    return env.from_string(text).render(r=report, paper_columns=PAPER_COLUMNS)
