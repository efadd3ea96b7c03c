"""The report's views of evaluation files, saliency files and the comparison table, each number with n and its
95% interval (``advbg.stats``).

Evaluations and saliency are not kept in the store: the page reads the JSON of ``advbg eval --results-file`` and
``advbg saliency --results-file`` (with the saliency maps of ``--maps`` for the overlays). Every view of an eval
file is shown (top-1 and every other top-k, the "none" rate, per-class accuracy, BG-Gap), as tables with one row per
variant and one column per model, so a sweep of many models wraps instead of overflowing.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from advbg.analysis.compare import Table, eval_table, search_table
from advbg.data.store import Store
from advbg.data.variants import make_variant
from advbg.errors import AdvbgError
from advbg.search.results import SearchResult
from advbg.stats import Gap, Rate, format_interval, rate, rate_or_none


def count_rate(pct: float | None, n: int | None) -> Rate | None:
    """A percentage of n items (as stored in JSON) back to k/n with its interval: k = round(pct * n / 100)."""
    if pct is None or not n or not np.isfinite(float(pct)):
        return None
    return rate(round(float(pct) * int(n) / 100.0), int(n))


# --------------------------------------------------------------------------------------------- eval views
@dataclass(frozen=True)
class EvalView:
    """One measure of an eval file: a row per variant, a column per model (None: not measured)."""

    title: str
    short: str                          # the column heading under each model
    variants: list[str]
    cells: list[list[Rate | float | None]]   # [variant][model]; a bare % where an older file has no counts


@dataclass(frozen=True)
class PerClassView:
    """Per-class top-1 accuracy of one model: a row per class, a column per variant."""

    model: str
    variants: list[str]
    classes: list[str]
    cells: list[list[Rate | None]]      # [class][variant]


def eval_views(d: dict, variants: list[str]) -> list[EvalView]:
    """Every top-k the file holds, then the 'none' rate where the label map has one."""
    models = d["models"]
    acc = [m.get("accuracy") or {} for m in models]
    ks = sorted({int(k[3:]) for a in acc for s in a.values() for k in (s.get("topk") or {})} | {1})
    views = []
    for k in ks:
        cells = [[_topk_rate(a.get(v), k) for a in acc] for v in variants]
        if any(c is not None for row in cells for c in row):
            views.append(EvalView(f"top-{k} accuracy", f"top-{k}", variants, cells))
    none = [[count_rate((a.get(v) or {}).get("none_rate"), (a.get(v) or {}).get("n")) for a in acc]
            for v in variants]
    if any(c is not None for row in none for c in row):
        views.append(EvalView("'none' rate (top-1 in no class)", "none", variants, none))
    return views


def _topk_rate(score: dict | None, k: int) -> Rate | float | None:
    s = score or {}
    hits, n, pct = (s.get("correct") or {}).get(f"top{k}"), s.get("n"), (s.get("topk") or {}).get(f"top{k}")
    if pct is None:
        return None
    return rate(int(hits), int(n)) if hits is not None and n else float(pct)   # older files: no counts


def class_views(d: dict, variants: list[str], names: list[str]) -> list[PerClassView]:
    """Per model: per-class top-1 accuracy on every variant, k/n from the file's per-class counts."""
    out = []
    for m, name in zip(d["models"], names):
        acc = m.get("accuracy") or {}
        classes = list(dict.fromkeys(c for v in variants for c in ((acc.get(v) or {}).get("class_counts") or {})))
        if not classes:
            continue
        cells = [[_class_rate(acc.get(v), c) for v in variants] for c in classes]
        out.append(PerClassView(name, variants, classes, cells))
    return out


def _class_rate(score: dict | None, c: str) -> Rate | None:
    s = score or {}
    n, k = (s.get("class_counts") or {}).get(c), (s.get("class_correct") or {}).get(c)
    if n is None:
        return None
    if k is None:        # older files: the percentage only
        return count_rate((s.get("per_class") or {}).get(c), n)
    return rate_or_none(int(k), int(n))


def gap_of(m: dict) -> Gap | float | None:
    """BG-Gap of one model: its paired interval where the file has one, else the bare number (older files)."""
    g = m.get("bg_gap_interval")
    return Gap(**g) if g else m.get("bg_gap")


# --------------------------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class Transposed:
    """A comparison table turned on its side for the page: a column per row of ``table`` (headed by its
    ``head`` cells), a row per measured column, so many variants make a longer table, not a wider one."""

    table: Table
    head: list[str]
    measures: list[str]


@dataclass(frozen=True)
class Comparison:
    """The comparison tables (search runs of the store; evaluation files, top-1) and why any is missing."""

    tables: list[Table]
    eval_tables: list[Transposed] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


EVAL_HEAD = ("model", "weights", "store", "file")


def comparison(searches: Sequence[SearchResult], eval_files: Sequence[str | os.PathLike]) -> Comparison:
    """``compare.search_table`` over the store's complete searches and ``compare.eval_table`` (top-1) of the files;
    every other top-k is in each file's own views."""
    tables, evals, notes = [], [], []
    recorded = [r for r in searches if r.run is not None]
    if recorded:
        tables.append(search_table(recorded))
    if len(recorded) < len(searches):
        notes.append(f"{len(searches) - len(recorded)} search run(s) without a run record left out")
    if eval_files:
        t = eval_table(list(eval_files), 1)
        evals.append(Transposed(t, list(EVAL_HEAD), [c for c in t.columns if c not in EVAL_HEAD]))
    return Comparison(tables, evals, notes)


def cell(v: Any) -> tuple[str, str]:
    """A table cell as (main text, small second line): a rate as '54.5%' and '[23.4, 83.3] 6/11'."""
    if isinstance(v, Rate):
        return f"{v.rate:.1f}%", f"[{v.low:.1f}, {v.high:.1f}] {v.k}/{v.n}"
    if isinstance(v, Gap):
        return f"{v.diff:+.1f}", f"[{v.low:+.1f}, {v.high:+.1f}] n={v.n}"
    if v is None:
        return "-", ""
    if isinstance(v, float):
        return (f"{v:.1f}" if np.isfinite(v) else "-"), ""
    return str(v), ""


# --------------------------------------------------------------------------------------------- saliency
@dataclass(frozen=True)
class SaliencyVariant:
    variant: str
    n: int
    accuracy: Rate | None
    mean_area: float | None
    share: str              # "0.620 [0.550, 0.700] (n=40)"
    normalised: str
    undefined: int
    share_mean: float | None = None
    share_low: float | None = None
    share_high: float | None = None


@dataclass(frozen=True)
class OverlayRow:
    fg_id: int
    true_class: str
    composite: str | None          # data URI of the worst composite (None: no search covers this foreground)
    composite_note: str
    overlays: list[tuple[str, str, str]]   # (variant, data URI, caption)


@dataclass(frozen=True)
class SaliencySection:
    file: str
    anchor: str
    model: str
    layer: str
    explained: str
    interval: str
    variants: list[SaliencyVariant]
    classes: list[str]
    per_class: list[list[str]]     # [class][variant] "0.62 [0.55, 0.70] (n=4)"
    plot: str | None
    overlays: list[OverlayRow]
    store_note: str
    notes: list[str]


def load_saliency(path: str | os.PathLike) -> dict:
    """A JSON results file written by ``advbg saliency --results-file x.json`` (checked)."""
    p = Path(path)
    if not p.is_file():
        raise AdvbgError(f"saliency results file {p} does not exist")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdvbgError(f"{p} is not JSON ({e}); --saliency reads the JSON of `advbg saliency --results-file`") \
            from None
    if not isinstance(data, dict) or not isinstance(data.get("variants"), list) or "layer" not in data:
        raise AdvbgError(f"{p} is not an `advbg saliency` results file (no variants / layer)")
    return data


def maps_file(path: str | os.PathLike, d: dict) -> Path | None:
    """The .npz of maps of a saliency file: the one it names, else ``<same stem>.npz`` beside it; None if absent."""
    named = d.get("maps")
    for p in ([Path(named)] if named else []) + [Path(path).with_suffix(".npz")]:
        if p.is_file():
            return p
    return None


def saliency_variants(d: dict) -> list[SaliencyVariant]:
    out = []
    for v in d["variants"]:
        ov = v.get("overall") or {}
        images = v.get("images_detail") or []
        hits = sum(1 for r in images if r.get("pred") is not None and r.get("pred") == r.get("label"))
        acc = rate_or_none(hits, len(images)) if images else count_rate(v.get("accuracy"), v.get("images"))
        sh = ov.get("share") or {}
        out.append(SaliencyVariant(v["variant"], int(v.get("images", len(images))), acc, v.get("mean_area"),
                                   _interval_text(sh), _interval_text(ov.get("normalised") or {}),
                                   int(v.get("undefined", 0)), sh.get("mean"), sh.get("low"), sh.get("high")))
    return out


def _interval_text(i: dict, digits: int = 3) -> str:
    if i.get("mean") is None:
        return "-"
    return format_interval(i["mean"], i["low"], i["high"], i.get("n"), digits=digits)


def saliency_per_class(d: dict, class_names: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    variants = d["variants"]
    classes = [c for c in class_names if any(c in (v.get("per_class") or {}) for v in variants)]
    rows = [[_interval_text(((v.get("per_class") or {}).get(c) or {}).get("share") or {}, 2) for v in variants]
            for c in classes]
    return classes, rows


def overlay_images(store: Store, d: dict, maps: dict[str, np.ndarray], fg_ids: Sequence[int],
                   size: int, thumb) -> dict[int, list[tuple[str, str, str]]]:
    """Per foreground: (variant, data URI of the image with its Grad-CAM map over it, caption)."""
    import matplotlib  # deferred: slow to import

    jet = matplotlib.colormaps["jet"]
    seed = int((d.get("config") or {}).get("seed", 0))
    out: dict[int, list] = {int(f): [] for f in fg_ids}
    for v in d["variants"]:
        name = v["variant"]
        if name not in maps or f"{name}_fg_index" not in maps:
            continue
        where = {int(f): i for i, f in enumerate(maps[f"{name}_fg_index"])}
        wanted = [int(f) for f in fg_ids if int(f) in where]
        if not wanted:
            continue
        images = make_variant(store, name, np.asarray(wanted), rng_seed=seed).images
        detail = {int(r["fg_index"]): r for r in v.get("images_detail") or []}
        for f, img in zip(wanted, images):
            m = np.asarray(maps[name][where[f]], np.float32)
            out[f].append((name, thumb(blend(img, m, jet), size), _overlay_caption(name, detail.get(f))))
    return out


def blend(img: np.ndarray, m: np.ndarray, cmap, alpha: float = 0.45) -> np.ndarray:
    """The image with the map (scaled to its own maximum, resized to the image) over it in ``cmap`` colours."""
    if m.shape != img.shape[:2]:
        m = np.asarray(Image.fromarray(m.astype(np.float32)).resize(img.shape[1::-1], Image.BILINEAR))
    peak = float(np.nanmax(m)) if m.size else 0.0
    heat = cmap(np.clip(m / peak, 0, 1) if peak > 0 else np.zeros_like(m))[..., :3] * 255.0
    return np.clip((1 - alpha) * img.astype(np.float32) + alpha * heat, 0, 255).astype(np.uint8)


def _overlay_caption(variant: str, r: dict | None) -> str:
    if r is None:
        return variant
    share = r.get("share")
    share_text = "-" if share is None or not np.isfinite(share) else f"{share:.2f}"
    return f"{variant}: share {share_text}, {r.get('label')} -> {r.get('pred') or 'none'}"


def read_maps(path: Path | None) -> dict[str, np.ndarray]:
    """Every array of a saliency maps .npz (empty when there is none); a damaged file is an AdvbgError."""
    if path is None:
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise AdvbgError(f"cannot read saliency maps {path}: {e}") from None
