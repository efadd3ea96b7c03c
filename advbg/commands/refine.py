"""`advbg refine`: start from each foreground's worst real background of a stored search (searching first when
there is none), refine it under each budget, store the results, print the fooling rate of the real worst case vs
refined with n and 95% intervals, draw the curve and a before/after grid."""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from advbg import stats
from advbg._version import __version__
from advbg.analysis.refineplots import refine_curve_png, refine_grid_png
from advbg.commands.common import DEMO_STORE, model_inputs, store_inputs, working_store
from advbg.data.store import Store, sidecar_folder
from advbg.errors import AdvbgError
from advbg.files import check_output, now, write_json
from advbg.models.classifier import Classifier, identity_of
from advbg.models.loading import ModelSpec, as_classifier
from advbg.search.config import SearchConfig
from advbg.search.criteria import CRITERIA
from advbg.search.refine import (
    DEFAULT_STEPS,
    PHOTOMETRIC_RANGES,
    Budget,
    LinfBudget,
    MinEpsBudget,
    PhotometricBudget,
    Refined,
    median_interval,
    parse_budgets,
    refine,
    require_extra,
)
from advbg.search.results import (
    RefineId,
    RefineSink,
    SearchResult,
    StoredRefine,
    check_name,
    load_search,
    refine_fingerprint,
)
from advbg.search.results.refine import PER_BUDGET, START_KINDS
from advbg.search.runner import search
from advbg.stats import RATE_LEGEND, Rate, format_rate

DEFAULT_BUDGETS = "linf:1/255,2/255,4/255,8/255;photometric;min-eps"


def rate(fooled: np.ndarray) -> Rate:
    """The share of True in ``fooled`` with its 95% interval (advbg.stats: the one definition); NaNs for n = 0."""
    k, n = int(np.count_nonzero(fooled)), int(np.size(fooled))
    if not n:
        return Rate(0, 0, float("nan"), float("nan"), float("nan"))
    require_extra("scipy.stats")            # one line when the extra is missing
    return stats.rate(k, n)


@dataclass(frozen=True)
class RefineRun:
    """Everything `advbg refine` computed: the start (a stored search's worst backgrounds) and one Refined per
    budget, over the foregrounds ``fg_id`` (those whose search evaluated a background)."""

    search: SearchResult
    fg_id: np.ndarray
    start_bg: np.ndarray
    refined: tuple[Refined, ...]
    record: dict
    results_name: str | None

    @property
    def real(self) -> Rate:
        """Fooling rate of the start backgrounds (the real worst ones by default; the start of every budget)."""
        return rate(self.refined[0].fooled_before)

    @property
    def start(self) -> str:
        return str(self.record.get("start", "worst"))

    def lines(self) -> list[str]:
        """The headline: real worst case, then each budget."""
        c = self.record["classifier"]
        what = "real worst backgrounds" if self.start == "worst" else f"start backgrounds ({self.start})"
        out = [(f"{what}: fooling rate {format_rate(self.real)} | model {c['name']} ({c['architecture']}."
                f"{c['weight_tag']}), criterion {self.record['criterion']}, search {self.search.results_name} | "
                f"{RATE_LEGEND}")]
        for r in self.refined:
            if isinstance(r.budget, MinEpsBudget):
                out.append(radius_line(r))
            else:
                changed = r.ssim[r.ssim < 1]          # SSIM is exactly 1 for an unchanged background
                ssim = f"median SSIM {np.median(changed):.3f} over {len(changed)} changed" if len(changed) \
                    else "no background changed"
                out.append(f"{r.budget.name}: fooling rate {format_rate(rate(r.fooled_after))} | {ssim} | "
                           f"{int(r.steps.sum())} gradient steps")
        return out


def radius_line(r: Refined) -> str:
    """The background robustness radius: median smallest fooling EPS with its order-statistic 95% interval."""
    med, lo, hi = median_interval(r.eps)
    grid_top = r.budget.grid[-1] * 255
    text = lambda v: "0" if v == 0 else (f">{grid_top:g}/255" if np.isinf(v) else f"{v * 255:g}/255")
    return (f"min-eps: background robustness radius {text(med)} (median smallest fooling EPS over {len(r)} "
            f"foregrounds; 95% CI {text(lo)}-{text(hi)}; {int(np.isinf(r.eps).sum())} not fooled within "
            f"{grid_top:g}/255, {int((r.eps == 0).sum())} fooled at the start)")


def run_refine(store: str | Path = DEMO_STORE, model: ModelSpec | Classifier | str | None = None,
               budgets: str | Sequence[Budget] = DEFAULT_BUDGETS, *, criterion: str = "any",
               search_name: str | None = None, start: str = "worst", steps: int = DEFAULT_STEPS, seed: int = 0,
               batch_size: int = 32, resume: bool = False, results_name: str | None = None,
               results_file: Path | None = None, curve: Path | None = None, grid: Path | None = None,
               progress: bool = True, echo: Callable[[str], None] = print,
               note: Callable[[str], None] | None = None) -> RefineRun:
    """`advbg refine`: refine each foreground's start background under every budget; store, print, draw.

    ``model``: None = the classifier of the stored search (one must exist). Without a stored search of this
    model and criterion, the search runs first (said on ``note``, default stderr). ``start``: ``worst`` (the
    search's worst real background), ``random`` (a seeded random background of the store, per foreground) or
    ``own`` (the background with the foreground's source_id; foregrounds without one are left out). Units of
    ``batch_size`` foregrounds are committed one by one; ``resume`` continues an interrupted run with the same
    settings. ``curve`` / ``grid``: None = beside the store, Path('-') = none."""
    note = note or (lambda text: print(text, file=sys.stderr))
    if criterion not in CRITERIA:
        raise AdvbgError(f"unknown criterion {criterion!r}; use one of: {', '.join(CRITERIA)}")
    if start not in START_KINDS:
        raise AdvbgError(f"unknown start {start!r}; use one of: {', '.join(START_KINDS)}")
    budgets = parse_budgets(budgets, steps) if isinstance(budgets, str) else list(budgets)
    if batch_size < 1:
        raise AdvbgError(f"--batch-size must be >= 1 (got {batch_size})")
    if results_name is not None:
        check_name(results_name)
    inputs = store_inputs(store) + model_inputs(model)
    check_output(results_file, (".json",), inputs=inputs)
    for png in (curve, grid):
        check_output(png, (".png",), inputs=inputs + [results_file])
    store = working_store(store, echo)
    started, t0 = now(), time.perf_counter()
    with Store(store, mode="r+") as s:
        s.require_nonempty()
        clf, found = _classifier_and_search(s, model, criterion, search_name, batch_size, progress, note)
        fg_id, start_bg = _starts(s, found, start, seed, note)
        name = results_name or f"{found.results_name}.refine" + ("" if start == "worst" else f"-{start}")
        check_name(name)
        rid = _refine_id(s, clf, found, fg_id, start_bg, budgets, criterion, start, seed, batch_size)
        sink = RefineSink.open(s, name, rid, resume=resume)
        if sink.discarded:
            note(f"an interrupted refine {name} ({sink.discarded} units committed) was discarded: starting afresh "
                 f"(--resume continues one with the same settings)")
        if resume and sink.done.any():
            note(f"resuming refine {name}: {int(sink.done.sum())}/{len(fg_id)} foregrounds already done"
                 + (" (finished results in the store)" if sink.stored else ""))
        for a, b in sink.todo():
            t1 = time.perf_counter()
            sink.commit((a, b), _refine_unit(s, clf, fg_id[a:b], start_bg[a:b], budgets, criterion, seed,
                                             batch_size))
            if progress:
                print(f"refine: foregrounds {b}/{len(fg_id)} ({time.perf_counter() - t1:.1f} s for the last "
                      f"{b - a}, every budget)", file=sys.stderr)
        record = dict(advbg_version=__version__, classifier=clf.config.to_dict(), store=str(s.path),
                      store_digest=s.digest(), criterion=criterion, search=found.results_name, start=start,
                      budgets=[repr(b) for b in budgets], seed=seed, batch_size=batch_size,
                      device=str(clf.device), started=started, seconds=time.perf_counter() - t0)
        stored = sink.finish(record)
        run = RefineRun(found, stored.fg_id, stored.start_bg, refined_of(stored, budgets), stored.run, name)
        for line in run.lines():
            echo(line)
        _write_outputs(s, run, results_file, curve, grid, echo)
    echo(f"results: {sidecar_folder(store) / 'results' / (name + '.h5')}")
    return run


def _refine_id(s: Store, clf: Classifier, found: SearchResult, fg_id, start_bg, budgets, criterion: str,
               start: str, seed: int, unit: int) -> RefineId:
    fp = refine_fingerprint(s, classifier=clf.config.identity(), criterion=criterion, search=found.results_name,
                            search_run=found.run.started if found.run else "", budgets=[repr(b) for b in budgets],
                            seed=seed, unit=unit, start=start, fg_id=fg_id, start_bg=start_bg)
    attrs = dict(search=str(found.results_name), start=start, criterion=criterion,
                 classifier=json.dumps(clf.config.to_dict(), default=str), params=json.dumps(list(PHOTOMETRIC_RANGES)))
    return RefineId(fp, fg_id, start_bg, s.foregrounds.labels[fg_id], tuple(dict(name=b.name, repr=repr(b))
                                                                           for b in budgets), attrs, unit)


def _refine_unit(s: Store, clf: Classifier, fg_id, start_bg, budgets, criterion, seed, batch_size) -> dict:
    """Every budget on one unit of foregrounds: PER_BUDGET arrays of shape (budgets, rows, ...)."""
    fg, mask, bg = s.foregrounds.read(fg_id), s.foregrounds.read_masks(fg_id), s.backgrounds.read(start_bg)
    true, bg_class = s.foregrounds.labels[fg_id], s.backgrounds.labels[start_bg]
    out = [refine(clf, fg, mask, bg, true, b, bg_class=bg_class, criterion=criterion, seed=seed, keys=fg_id,
                  batch_size=batch_size) for b in budgets]
    nan = np.full((len(fg_id), len(PHOTOMETRIC_RANGES)), np.nan)
    cols = {k: np.stack([getattr(r, k) for r in out]) for k in PER_BUDGET if k != "params"}
    cols["params"] = np.stack([r.params if r.params is not None else nan for r in out])
    return cols


def refined_of(stored: StoredRefine, budgets: Sequence[Budget]) -> tuple[Refined, ...]:
    """The stored rows as one Refined per budget (``budgets``: the Budget objects, in the stored order)."""
    out = []
    for b, budget in enumerate(budgets):
        c = stored.budget_cols(b)
        out.append(Refined(budget=budget, criterion=str(stored.attrs.get("criterion", "any")),
                           params=c["params"] if isinstance(budget, PhotometricBudget) else None,
                           **{k: c[k] for k in PER_BUDGET if k != "params"}))
    return tuple(out)


def _classifier_and_search(s: Store, model, criterion: str, search_name: str | None, batch_size: int,
                           progress: bool, note) -> tuple[Classifier, SearchResult]:
    """The classifier and the stored search to start from (running the search when there is none)."""
    if model is None:
        found = _stored_search(s, None, criterion, search_name)
        if found is None:
            raise AdvbgError(f"{s.path} has no complete stored search with criterion {criterion!r} and no model "
                             f"was given; give --model (refine then searches first) or run `advbg search` first")
        return _classifier_of(found), found
    clf = as_classifier(model)
    found = _stored_search(s, clf, criterion, search_name)
    if found is None:
        note(f"no stored search of {clf.config.name} ({clf.config.tag}) with criterion {criterion} in {s.path}: "
             f"searching first")
        found = search(s, clf, SearchConfig(criterion=criterion, batch_size=batch_size), progress=progress)
    return clf, found


def _stored_search(s: Store, clf: Classifier | None, criterion: str, name: str | None) -> SearchResult | None:
    """``name``, or the latest complete search of this classifier (any, when None) and criterion; exhaustive
    searches first. None when there is none."""
    if name is not None:
        found = load_search(s, name)
        if clf is not None and _identity(found) != clf.config.identity():
            raise AdvbgError(f"search {name!r} was made by another classifier than {clf.config.name!r}")
        return found
    candidates = []
    for n, g in s.results.items():
        if g.attrs.get("kind") != "search" or not g.attrs.get("complete") or str(g.attrs.get("criterion")) != criterion:
            continue
        try:
            same = clf is None or identity_of(json.loads(g.attrs["classifier"])) == clf.config.identity()
        except (KeyError, ValueError, TypeError):
            continue
        if same:
            candidates.append((g.attrs.get("mode") == "exhaustive", str(g.attrs.get("completed", "")), n))
    return load_search(s, max(candidates)[2]) if candidates else None


def _identity(found: SearchResult) -> dict:
    return identity_of(found.run.classifier) if found.run else {}


def _classifier_of(found: SearchResult) -> Classifier:
    """The classifier a stored search recorded, loaded again and checked to be the same."""
    c = found.run.classifier if found.run else None
    if not c:
        raise AdvbgError(f"search {found.results_name!r} records no classifier; give --model")
    source, file = c.get("source"), c.get("weights_file")
    spec = ModelSpec(file if source == "checkpoint" and file else c["name"],
                     arch=c.get("architecture") if source == "checkpoint" else None,
                     weights=file if source == "timm" else None, label_map=c["label_map"],
                     norm=(tuple(c["mean"]), tuple(c["std"])))
    clf = as_classifier(spec)
    if clf.config.identity() != identity_of(c):
        raise AdvbgError(f"the classifier of search {found.results_name!r} ({c['name']}) no longer loads the same "
                         f"(weights or settings changed); give --model")
    return clf


def _starts(s: Store, found: SearchResult, start: str, seed: int, note) -> tuple[np.ndarray, np.ndarray]:
    """(fg_id, start bg_id) of every foreground the search evaluated (``own``: those with an own background);
    refuses empty masks."""
    keep = found.worst_bg >= 0
    fg_id, start_bg = found.fg_id[keep].astype(np.int64), found.worst_bg[keep].astype(np.int64)
    if not len(fg_id):
        raise AdvbgError(f"search {found.results_name!r} evaluated no background for any foreground")
    if start == "random":       # per foreground from (seed, fg_id): independent of the other foregrounds
        start_bg = np.array([np.random.default_rng([int(seed), int(f), 1]).integers(len(s.backgrounds))
                             for f in fg_id], np.int64)
    elif start == "own":
        own = {sid: j for j, sid in enumerate(s.backgrounds.source_ids)}
        start_bg = np.array([own.get(s.foregrounds.source_ids[f], -1) for f in fg_id], np.int64)
        if not (start_bg >= 0).any():
            raise AdvbgError(f"{s.path}: no foreground has its own background (a background with its source_id); "
                             f"use --start worst or random")
        if (start_bg < 0).any():
            note(f"--start own: {int((start_bg < 0).sum())} of {len(fg_id)} foregrounds have no own background "
                 f"and are left out")
        fg_id, start_bg = fg_id[start_bg >= 0], start_bg[start_bg >= 0]
    masks = s.foregrounds.read_masks(fg_id)
    empty = fg_id[~masks.reshape(len(fg_id), -1).any(1)]
    if len(empty):
        raise AdvbgError(f"{s.path}: {len(empty)} foregrounds have an empty mask (e.g. fg {int(empty[0])}); "
                         f"refine changes background pixels only and needs each foreground's mask")
    return fg_id, start_bg


def _write_outputs(s: Store, run: RefineRun, results_file, curve, grid, echo) -> None:
    stem = Path(s.path).with_name(f"{Path(s.path).stem}.{run.results_name}")
    if results_file:
        write_json(results_file, _summary(run))
        echo(f"summary: {results_file}")
    if str(curve) != "-":
        png = Path(curve) if curve else Path(f"{stem}.curve.png")
        check_output(png, (".png",), inputs=[s.path])
        _curve(run, png)
        echo(f"curve: {png}")
    if str(grid) != "-":
        png = Path(grid) if grid else Path(f"{stem}.grid.png")
        check_output(png, (".png",), inputs=[s.path])
        _grid(s, run, png)
        echo(f"before/after: {png}")


def _summary(run: RefineRun) -> dict:
    real = run.real
    budgets = []
    for r in run.refined:
        row = dict(budget=r.budget.name, repr=repr(r.budget), fooling=rate(r.fooled_after).to_dict(),
                   median_ssim=float(np.median(r.ssim)))
        if isinstance(r.budget, MinEpsBudget):
            row["radius"] = dict(zip(("median", "low", "high"), median_interval(r.eps)))
        budgets.append(row)
    rows = [dict(fg_id=int(f), start_bg=int(b), **{r.budget.name: dict(
        margin_before=float(r.margin_before[k]), margin_after=float(r.margin_after[k]),
        fooled_before=bool(r.fooled_before[k]), fooled_after=bool(r.fooled_after[k]), steps=int(r.steps[k]),
        ssim=float(r.ssim[k]), eps=float(r.eps[k])) for r in run.refined})
        for k, (f, b) in enumerate(zip(run.fg_id, run.start_bg))]
    return dict(real_worst=real.to_dict(), budgets=budgets, results_name=run.results_name, run=run.record,
                headline=run.lines(), foregrounds=rows)


def _curve(run: RefineRun, png: Path) -> None:
    linf = [r for r in run.refined if isinstance(r.budget, LinfBudget)]
    rates = [rate(r.fooled_after) for r in linf]
    others = {r.budget.name: rate(r.fooled_after) for r in run.refined if not isinstance(r.budget, (LinfBudget,
                                                                                                   MinEpsBudget))}
    real = run.real
    c = run.record["classifier"]
    refine_curve_png(png, [r.budget.eps for r in linf], [(x.rate, x.low, x.high) for x in rates],
                     (real.rate, real.low, real.high), real.n,
                     f"{c['name']} ({c['architecture']}.{c['weight_tag']}), criterion {run.record['criterion']}",
                     {k: (v.rate, v.low, v.high) for k, v in others.items()})


def _grid(s: Store, run: RefineRun, png: Path, n: int = 8) -> None:
    """Before/after rows for the budget shown: the largest L-infinity EPS, else the first budget; foregrounds it
    flipped first, then the lowest margins after."""
    linf = [r for r in run.refined if isinstance(r.budget, LinfBudget)]
    r = max(linf, key=lambda x: x.budget.eps) if linf else run.refined[0]
    flipped = r.fooled_after & ~r.fooled_before
    order = np.lexsort((r.margin_after, ~flipped))[:n]
    names = list(s.class_names)
    label = lambda c: names[c] if 0 <= c < len(names) else "none"
    fg, mask = s.foregrounds.read(run.fg_id[order]), s.foregrounds.read_masks(run.fg_id[order])
    start = s.backgrounds.read(run.start_bg[order])
    rows = []
    for j, k in enumerate(order):
        m = mask[j][..., None].astype(bool)
        rows.append(dict(
            start=start[j], refined=r.background[k], composite=np.where(m, fg[j], r.background[k]),
            start_title=f"fg {int(run.fg_id[k])}: bg {int(run.start_bg[k])}, margin {r.margin_before[k]:+.2f}",
            refined_title=f"{r.budget.name}, SSIM {r.ssim[k]:.3f}",
            composite_title=f"pred {label(int(r.pred_after[k]))}, margin {r.margin_after[k]:+.2f}"
                            + (" FOOLED" if r.fooled_after[k] else ""),
            fooled=bool(r.fooled_after[k])))
    c = run.record["classifier"]
    refine_grid_png(png, rows, f"Refined worst backgrounds ({r.budget.name}): {c['name']}, criterion "
                               f"{run.record['criterion']}")
