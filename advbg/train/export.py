"""`advbg export`: the fooling backgrounds and worst composites of a stored search, in forms training reads.

Output folder ``DIR`` (built as a hidden temporary sibling and renamed when complete: ``atomic_output``)::

    folder format                                       h5 format
    backgrounds/<NN_class>/bg<bg_id>.png                export.h5   an advbg store: backgrounds = the fooling
    composites/<NN_class>/fg<fg_id>_bg<bg_id>.png                   backgrounds, foregrounds = the worst
    manifest.csv, manifest.json                                     composites with their foreground masks
                                                        manifest.csv, manifest.json

PNGs are lossless (they decode to the exact stored / composited pixels). ImageFolder classes, ``NN_<class slug>``
(``02_wheeled_vehicle``: no spaces; sorted order is label order): the background's
class for backgrounds (``none`` for unlabelled ones), the foreground's true class for composites. The manifest
has one row per item (fg/bg ids, labels, source ids, predicted class, margin, fooling counts, ASR, model
identity, criterion); ``manifest.json`` adds the run's metadata.

Ranking. Backgrounds (needs the complete outcome matrix of an exhaustive search): ``fooled`` = how many
searched foregrounds the background fools under the search's criterion; ``asr`` = share in % of the
foregrounds of other classes predicted as the background's class (design.md; ``advbg.search.criteria.asr``). Only backgrounds that fool at least one
foreground are exported. Composites: each fooled foreground on its worst background, lowest margin first.
``per_class`` keeps the first N of each class, then ``top`` the first N overall.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from advbg.data.composite import composite
from advbg.data.labels import class_slug
from advbg.data.store import Store
from advbg.data.writer import StoreWriter
from advbg.errors import AdvbgError
from advbg.files import atomic_output, check_output, now, restore_replaced, write_json
from advbg.search.criteria import Criterion, asr, check_invalid_marked, decode_outcome
from advbg.search.results import (OUTCOME_MISSING, StoredRefine, load_outcome, load_refine, load_search,
                                  result_info)
from advbg.stats import RATE_LEGEND, format_rate, rate_or_none

WHAT = ("backgrounds", "composites", "both")
SOURCES = ("search", "refine")
FORMATS = ("folder", "h5")
RANKS = ("fooled", "asr")
COLUMNS = ("kind", "rank", "file", "index", "fg_id", "bg_id", "fg_label", "fg_class", "bg_label", "bg_class",
           "fg_source_id", "bg_source_id", "pred", "pred_class", "margin", "fooled", "n_fooled", "n_evaluated",
           "asr", "model", "model_name", "weights_sha256", "label_map", "criterion", "results")


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how."""

    what: str = "both"
    fmt: str = "folder"
    top: int | None = None          # keep the first N items of each kind (after per_class)
    per_class: int | None = None    # keep the first N items of each class of each kind
    rank: str = "fooled"            # background ranking: fooled | asr
    include_unfooled: bool = False  # composites: also foregrounds no background fooled (their worst case)
    source: str = "search"          # search | refine (refined backgrounds of `advbg refine` results)
    budget: str | None = None       # refine: the budget exported (default: the largest linf EPS, else the first)

    def validate(self) -> "ExportConfig":
        for value, allowed, what in ((self.what, WHAT, "--what"), (self.fmt, FORMATS, "--format"),
                                     (self.rank, RANKS, "--rank"), (self.source, SOURCES, "--from")):
            if value not in allowed:
                raise AdvbgError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
        for value, what in ((self.top, "--top"), (self.per_class, "--per-class")):
            if value is not None and value < 1:
                raise AdvbgError(f"{what} must be at least 1, got {value}")
        if self.budget is not None and self.source != "refine":
            raise AdvbgError("--budget selects refine results: use it with --from refine")
        return self


@dataclass
class ExportResult:
    path: Path
    n_backgrounds: int
    n_composites: int
    rows: list[dict]


# --------------------------------------------------------------------------------------------- ranking
def background_fooling(outcome: np.ndarray, true_class: np.ndarray, bg_label: np.ndarray,
                       criterion: str) -> dict[str, np.ndarray]:
    """Per background column of a complete outcome matrix (F, B): n_fooled, n_evaluated, asr, dominant prediction.

    ``outcome`` holds mapped predictions (253 = NaN/inf, never fooled; 254 = none); ``true_class`` (F,), ``bg_label`` (B,). ``n_fooled``
    counts the foregrounds fooled under ``criterion`` (as the search counted them per pair); ``asr`` is the
    design's ASR in % (``advbg.analysis.universal.asr``, bg-class), NaN for unlabelled backgrounds; ``pred`` is the most
    common prediction among the fooled foregrounds (-1: none fooled or "none").
    """

    if np.any(outcome == OUTCOME_MISSING):
        raise AdvbgError(f"{int(np.count_nonzero(outcome == OUTCOME_MISSING))} pairs of the outcome matrix were "
                         f"never evaluated (an early-exit or pruned search); ranking backgrounds needs an "
                         f"exhaustive search (`advbg search` without --early-exit), or export --what composites")
    fooled = Criterion(criterion).fooled_outcome(outcome, true_class, bg_label)   # (F, B)
    pred = decode_outcome(outcome)                                                # (F, B)
    n_cls = int(max(pred.max(initial=-1), true_class.max(initial=-1), bg_label.max(initial=-1))) + 2
    counts = np.stack([(fooled & (pred == k - 1)).sum(0) for k in range(n_cls)])  # row 0 = "none"
    dominant = np.where(fooled.any(0), counts.argmax(0) - 1, -1)
    return dict(n_fooled=fooled.sum(0), n_evaluated=np.full(len(bg_label), len(true_class)),
                asr=asr(outcome, true_class, bg_label, "bg-class"), pred=dominant)


def _select(order: np.ndarray, classes: np.ndarray, per_class: int | None, top: int | None) -> np.ndarray:
    """Positions from ``order`` keeping at most ``per_class`` per class, then at most ``top`` overall."""
    if per_class is not None:
        seen: dict[int, int] = {}
        keep = []
        for k in order:
            c = int(classes[k])
            if seen.get(c, 0) < per_class:
                seen[c] = seen.get(c, 0) + 1
                keep.append(k)
        order = np.asarray(keep, np.int64)
    return order[:top] if top is not None else order


def rank_backgrounds(stats: dict[str, np.ndarray], pool: np.ndarray, bg_label: np.ndarray,
                     config: ExportConfig) -> np.ndarray:
    """Pool positions of the exported backgrounds, best first (ties: the other measure, then bg_id)."""
    n, asr = stats["n_fooled"], np.nan_to_num(stats["asr"], nan=-1.0)
    keys = (pool, -n, -asr) if config.rank == "asr" else (pool, -asr, -n)
    order = np.lexsort(keys)
    order = order[n[order] > 0]
    return _select(order, bg_label, config.per_class, config.top)


def rank_composites(result, config: ExportConfig) -> np.ndarray:
    """Rows of the search result exported as composites, lowest worst margin first."""
    ok = result.worst_bg >= 0
    if not config.include_unfooled:
        ok &= result.fooled
    rows = np.flatnonzero(ok)
    rows = rows[np.lexsort((result.fg_id[rows], result.worst_margin[rows]))]
    return _select(rows, result.true_class, config.per_class, config.top)


# --------------------------------------------------------------------------------------------- export
def class_folder(label: int, class_names) -> str:
    """``NN_<class slug>`` (sorted order = label order), ``none`` for label -1; a class name never becomes a path."""
    return f"{label:02d}_{class_slug(class_names[label])}" if 0 <= label < len(class_names) else "none"


def _name(label: int, class_names) -> str:
    return class_names[label] if 0 <= label < len(class_names) else "none"


def _provenance(result, name: str, store: Store) -> dict:
    c = result.run.classifier if result.run else {}
    criterion = result_info(store, name).attrs.get("criterion", "")
    return dict(model=f"{c.get('architecture', '?')}.{c.get('weight_tag', '?')}", model_name=c.get("name", ""),
                weights_sha256=c.get("weights_sha256") or "", label_map=c.get("label_map", ""),
                criterion=str(criterion), results=name)


def _rows(store: Store, result, ident: dict, config: ExportConfig) -> list[dict]:
    """Manifest rows, backgrounds first, each kind in rank order (``index`` = position within its kind)."""
    name = ident["results"]
    cn, fgs, bgs = store.class_names, store.foregrounds, store.backgrounds
    rows: list[dict] = []
    if config.what in ("backgrounds", "both"):
        outcome, fg_id, pool = load_outcome(store, name)
        if np.array_equal(fg_id, result.fg_id):
            check_invalid_marked(outcome, result.n_invalid, name)
        stats = background_fooling(outcome, fgs.labels[fg_id], bgs.labels[pool], ident["criterion"])
        for r, pos in enumerate(rank_backgrounds(stats, pool, bgs.labels[pool], config)):
            b, lb = int(pool[pos]), int(bgs.labels[pool[pos]])
            p = int(stats["pred"][pos])
            rows.append(dict(kind="background", rank=r, index=r, fg_id=-1, bg_id=b, fg_label=-1,
                             fg_class="", bg_label=lb, bg_class=_name(lb, cn), fg_source_id="",
                             bg_source_id=bgs.source_ids[b], pred=p, pred_class=_name(p, cn), margin=float("nan"),
                             fooled=True, n_fooled=int(stats["n_fooled"][pos]),
                             n_evaluated=int(stats["n_evaluated"][pos]), asr=float(stats["asr"][pos]), **ident,
                             file=f"backgrounds/{class_folder(lb, cn)}/bg{b:06d}.png"))
    if config.what in ("composites", "both"):
        for r, k in enumerate(rank_composites(result, config)):
            f, b = int(result.fg_id[k]), int(result.worst_bg[k])
            y, lb, p = int(result.true_class[k]), int(bgs.labels[b]), int(result.worst_pred[k])
            rows.append(dict(kind="composite", rank=r, index=r, fg_id=f, bg_id=b, fg_label=y,
                             fg_class=_name(y, cn), bg_label=lb, bg_class=_name(lb, cn),
                             fg_source_id=fgs.source_ids[f], bg_source_id=bgs.source_ids[b], pred=p,
                             pred_class=_name(p, cn), margin=float(result.worst_margin[k]),
                             fooled=bool(result.fooled[k]), n_fooled=int(result.n_fooling[k]),
                             n_evaluated=int(result.n_evaluated[k]), asr=float("nan"), **ident,
                             file=f"composites/{class_folder(y, cn)}/fg{f:06d}_bg{b:06d}.png"))
    return rows


def _composite(store: Store, f: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    fg, mask = store.foregrounds.read([f])[0], store.foregrounds.read_masks([f])[0]
    return composite(fg, mask, store.backgrounds.read([b])[0]), mask


def _png(path: Path, rgb: np.ndarray) -> None:
    # Encoded in memory and written by Python: a full disk is then an OSError with its errno, not a libpng line.
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise AdvbgError(f"could not encode {path.name} as PNG")
    path.write_bytes(png.tobytes())


def _write_folder(tmp: Path, store: Store, rows: list[dict]) -> None:
    for row in rows:
        if row["kind"] == "background":
            _png(tmp / row["file"], store.backgrounds.read([row["bg_id"]])[0])
        else:
            _png(tmp / row["file"], _composite(store, row["fg_id"], row["bg_id"])[0])


def _write_h5(tmp: Path, store: Store, rows: list[dict]) -> None:
    """``export.h5``, an advbg store: backgrounds = exported backgrounds, foregrounds = composites + fg masks."""
    bgs, fgs = store.backgrounds, store.foregrounds
    with StoreWriter(tmp / "export.h5", class_names=store.class_names, image_size=store.image_size,
                     attrs=dict(export_of=str(store.path), export_store_digest=store.digest())) as w:
        for b in (r["bg_id"] for r in rows if r["kind"] == "background"):
            w.add_background(bgs.read([b])[0], int(bgs.labels[b]), bgs.source_ids[b])
        for f, b in ((r["fg_id"], r["bg_id"]) for r in rows if r["kind"] == "composite"):
            image, mask = _composite(store, f, b)
            w.add_foreground(image, mask, int(fgs.labels[f]), f"{fgs.source_ids[f]}|bg:{bgs.source_ids[b]}",
                             fgs.boxes[f])
    for row in rows:
        row["file"] = "export.h5"


def _manifest_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    wr.writeheader()
    for row in rows:
        wr.writerow({k: ("" if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()})
    return buf.getvalue()


def _check_out(out: Path, overwrite: bool, store: str | os.PathLike) -> None:
    check_output(out, inputs=[store], folder=True)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise AdvbgError(f"{out} is not empty; pass --overwrite to replace it, or choose another --out")


def recover_interrupted(out: Path, echo: Callable[[str], None] | None = None) -> None:
    """Put back ``out``'s previous contents when an export was killed while replacing them (``.OUT.old``)."""
    if restore_replaced(out) and echo:
        echo(f"restored {out} from an export killed while replacing it")


def export(store: str | os.PathLike, out: str | os.PathLike, *, results: str | None = None,
           config: ExportConfig = ExportConfig(), overwrite: bool = False,
           echo: Callable[[str], None] | None = None) -> ExportResult:
    """Export a stored search's fooling backgrounds and/or worst composites to the folder ``out``."""
    config.validate()
    out = Path(out)
    recover_interrupted(out, echo)
    _check_out(out, overwrite, store)
    if config.source == "refine":
        return _export_refine(store, out, results, config, echo)
    with Store(store) as s:
        result = load_search(s, results)
        name = result.results_name
        ident = _provenance(result, name, s)
        rows = _rows(s, result, ident, config)
        with atomic_output(out, folder=True) as tmp:
            (_write_folder if config.fmt == "folder" else _write_h5)(tmp, s, rows)
            (tmp / "manifest.csv").write_text(_manifest_csv(rows))
            meta = dict(store=str(s.path), store_digest=s.digest(), results=name, created=now(),
                        config=asdict(config), class_names=list(s.class_names), columns=list(COLUMNS),
                        run=asdict(result.run) if result.run else None)
            write_json(tmp / "manifest.json", dict(export=meta, items=rows))
    n_bg = sum(r["kind"] == "background" for r in rows)
    if echo:
        fooling = rate_or_none(int(result.fooled.sum()), len(result))
        echo(f"exported {n_bg} fooling backgrounds and {len(rows) - n_bg} worst composites of results "
             f"{name!r} (model {ident['model']}, criterion {ident['criterion']}, its fooling rate "
             f"{format_rate(fooling)} of foregrounds; {RATE_LEGEND}) to {out}")
    return ExportResult(out, n_bg, len(rows) - n_bg, rows)


# --------------------------------------------------------------------------------------------- refine
def _refine_rows(store: Store, stored: StoredRefine, b: int, config: ExportConfig) -> list[dict]:
    """Manifest rows of the refined backgrounds and their composites (``refined`` = row of the budget's
    arrays): foregrounds the refined background fools (all with include_unfooled), lowest margin after first."""
    c = stored.budget_cols(b)
    cn, fgs, bgs = store.class_names, store.foregrounds, store.backgrounds
    run_c = stored.run.get("classifier", {})
    ident = dict(model=f"{run_c.get('architecture', '?')}.{run_c.get('weight_tag', '?')}",
                 model_name=run_c.get("name", ""), weights_sha256=run_c.get("weights_sha256") or "",
                 label_map=run_c.get("label_map", ""), criterion=str(stored.attrs.get("criterion", "")),
                 results=stored.name)
    keep = np.ones(len(stored.fg_id), bool) if config.include_unfooled else c["fooled_after"]
    rows_of = np.flatnonzero(keep)
    rows_of = rows_of[np.lexsort((stored.fg_id[rows_of], c["margin_after"][rows_of]))]
    tag = class_slug(stored.budgets[b]["name"])
    out: list[dict] = []
    for kind in ("background", "composite"):
        if config.what not in (kind + "s", "both"):
            continue
        classes = store.backgrounds.labels[stored.start_bg] if kind == "background" else stored.true_class
        for r, k in enumerate(_select(rows_of, classes, config.per_class, config.top)):
            f, bg = int(stored.fg_id[k]), int(stored.start_bg[k])
            y, lb, p = int(stored.true_class[k]), int(bgs.labels[bg]), int(c["pred_after"][k])
            folder = class_folder(lb if kind == "background" else y, cn)
            out.append(dict(kind=kind, rank=r, index=r, fg_id=f, bg_id=bg, fg_label=y, fg_class=_name(y, cn),
                            bg_label=lb, bg_class=_name(lb, cn), fg_source_id=fgs.source_ids[f],
                            bg_source_id=bgs.source_ids[bg], pred=p, pred_class=_name(p, cn),
                            margin=float(c["margin_after"][k]), fooled=bool(c["fooled_after"][k]),
                            n_fooled=int(c["fooled_after"][k]), n_evaluated=1, asr=float("nan"), **ident,
                            file=f"{kind}s/{folder}/fg{f:06d}_bg{bg:06d}_{tag}.png", refined=int(k)))
    return out


def _refined_image(store: Store, stored: StoredRefine, b: int, row: dict) -> tuple[np.ndarray, np.ndarray]:
    """(image, foreground mask) of a refine row: the refined background, or the composite on it."""
    bg = stored.cols["background"][b][row["refined"]]
    mask = store.foregrounds.read_masks([row["fg_id"]])[0]
    if row["kind"] == "background":
        return bg, mask
    return composite(store.foregrounds.read([row["fg_id"]])[0], mask, bg), mask


def _export_refine(store, out: Path, results: str | None, config: ExportConfig, echo) -> ExportResult:
    """`export --from refine`: the refined backgrounds of one budget and their composites, same folder layout."""
    with Store(store) as s:
        stored = load_refine(s, results)
        b = stored.budget_index(config.budget)
        rows = _refine_rows(s, stored, b, config)
        with atomic_output(out, folder=True) as tmp:
            if config.fmt == "folder":
                for row in rows:
                    _png(tmp / row["file"], _refined_image(s, stored, b, row)[0])
            else:
                with StoreWriter(tmp / "export.h5", class_names=s.class_names, image_size=s.image_size,
                                 attrs=dict(export_of=str(s.path), export_store_digest=s.digest())) as w:
                    for row in rows:
                        image, mask = _refined_image(s, stored, b, row)
                        src = f"{row['bg_source_id']}|refined:{stored.budgets[b]['name']}|fg:{row['fg_source_id']}"
                        if row["kind"] == "background":
                            w.add_background(image, row["bg_label"], src)
                        else:
                            w.add_foreground(image, mask, row["fg_label"], src, s.foregrounds.boxes[row["fg_id"]])
                for row in rows:
                    row["file"] = "export.h5"
            for row in rows:
                row.pop("refined")
            (tmp / "manifest.csv").write_text(_manifest_csv(rows))
            meta = dict(store=str(s.path), store_digest=s.digest(), results=stored.name, source="refine",
                        budget=stored.budgets[b], start=stored.attrs.get("start", "worst"), created=now(),
                        config=asdict(config), class_names=list(s.class_names), columns=list(COLUMNS),
                        run=stored.run)
            write_json(tmp / "manifest.json", dict(export=meta, items=rows))
    n_bg = sum(r["kind"] == "background" for r in rows)
    if echo:
        echo(f"exported {n_bg} refined backgrounds and {len(rows) - n_bg} composites on them "
             f"({stored.budgets[b]['name']}) of refine results {stored.name!r} to {out}")
    return ExportResult(out, n_bg, len(rows) - n_bg, rows)
