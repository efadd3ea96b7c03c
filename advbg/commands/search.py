"""`advbg search`: load the store and the classifier, search, write results, JSON and the grid, print the headline."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

from advbg.analysis.compare import pruned_recall
from advbg.analysis.plots import worst_grid
from advbg.commands.common import DEMO_STORE, model_inputs, store_inputs, working_store
from advbg.data.sidecar import sidecar_folder
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.files import check_output, write_json
from advbg.models.classifier import Classifier, results_tag
from advbg.models.loading import ModelSpec, as_classifier, resolve_device
from advbg.search import distributed
from advbg.search.config import SearchConfig
from advbg.search.criteria import Criterion
from advbg.search.results import SearchResult, check_replaceable, complete_searches
from advbg.search.runner import plan_run, search
from advbg.search.strategies import PruneSpec, prune_label, prune_line, prune_summary, pruned_search
from advbg.stats import Rate, rate


def headline(result: SearchResult, criterion: Criterion) -> str:
    """The plain summary line users compare against the paper: the rates with k/n and their 95% interval."""
    r = result.run
    c = r.classifier
    crit = criterion.name
    n = len(result)
    fooling = rate(int(result.fooled.sum()), n)
    acc = fooling.complement()
    pruned = f" | {prune_label(r.pruning)}" if r.pruning else ""
    return (f"fooling rate {_pct(fooling)} ({fooling.k}/{n} vulnerable; challenge accuracy {_pct(acc)}; "
            f"95% Clopper-Pearson) | criterion {crit} | model {c['name']} ({results_tag(c)}, "
            f"label map {c['label_map']}){pruned} | {len(result)} foregrounds, {r.forwards} composites evaluated in "
            f"{r.seconds:.1f} s ({r.composites_per_s:.0f} composites/s)" + _invalid_note(result))


def _pct(r: Rate) -> str:
    """``54.5% [23.4, 83.3]``: a rate with its interval, k/n said beside it."""
    return f"{r.rate:.1f}% [{r.low:.1f}, {r.high:.1f}]"


def _recall(s: Store, result: SearchResult):
    """The pruned run's recall against an exhaustive run of the same setting stored on ``s`` (None: there is none,
    or the stored runs cannot be read: the recall is a comparison, never a reason to fail the search)."""
    try:
        return pruned_recall(result, [r for r in complete_searches(s) if r.results_name != result.results_name])
    except AdvbgError:
        return None


def _invalid_note(result: SearchResult) -> str:
    n = int(result.n_invalid.sum())
    return (f" | WARNING: {n} invalid composites (NaN/inf logits, e.g. fp16 overflow) counted as not fooled "
            f"(rerun with --amp off to check)") if n else ""


def run_search(store: str | Path = DEMO_STORE, model: ModelSpec | Classifier | str = ModelSpec(),
               config: SearchConfig = SearchConfig(), *, prune: PruneSpec | None = None,
               results_name: str | None = None, results_file: Path | None = None, grid: Path | None = None,
               resume: bool = False, restart: bool = False, recompute: bool = False, overwrite: bool = False,
               write: bool = True, progress: bool = True, journal_dir: Path | None = None,
               echo: Callable[[str], None] = print) -> SearchResult:
    """`advbg search`: search, write results into the store, the JSON summary and the grid PNG, print the headline.

    Reruns never lose work: the same run's complete results are reused (no forward pass) unless ``recompute``
    (the old file stays until the new one is complete); an interrupted run with the same settings is resumed
    (``resume`` is that default, kept for compatibility) unless ``restart``. An existing ``results_file`` or grid
    is replaced only when this same run (store, model, criterion, mode, settings) wrote it, or with ``overwrite``
    (or ``recompute``, which replaces the run's outputs with the new ones).
    ``prune``: try each foreground on only K candidate backgrounds chosen from the embeddings `advbg index`
    stored (advbg.search.strategies, docs/index.md). ``grid``: None = beside the store, Path('-') = none.
    Under ``torchrun`` every rank searches its share of the foregrounds; rank 0 writes the outputs
    (docs/scaling.md)."""
    if resume and restart:
        raise AdvbgError("--resume and --restart contradict each other: give one (resuming is the default)")
    inputs = store_inputs(store) + model_inputs(model) + ([Path(journal_dir)] if journal_dir else [])
    check_output(results_file, inputs=inputs)
    check_output(grid, (".png",), inputs=inputs + [results_file])
    spec_device = model.device if isinstance(model, ModelSpec) else None
    d = distributed.setup(distributed.local_device(resolve_device(config.device or spec_device)))
    if write:  # one rank makes the demo's working copy; the others find it fresh
        if not d.main:
            d.barrier()
        store = working_store(store, echo if d.main else None)
        if d.main:
            d.barrier()
    with Store(store, mode="r+" if write and not d.active else "r") as s:
        s.require_nonempty()
        clf = as_classifier(model)
        mark = None
        if d.main:   # every check that needs the store and the model, before the search
            searched = _searched_config(s, config, prune)
            name, run_id, _, _ = plan_run(s, clf, searched, results_name, journal_dir, write)
            mark = run_id.fingerprint
            if grid is None:   # the default grid's name needs the model
                grid = _default_grid(s, searched, name if write else "search")
                check_output(grid, (".png",), inputs=inputs + [results_file])
            if write and not (prune and prune.rule == "neighbours"):
                check_replaceable(s, name, mark, recompute)     # the results file first: the work's own record
            for path, flag in ((results_file, "--results-file"), (grid, "--grid")):
                _check_replace(path, mark, overwrite or recompute, flag)
        kw = dict(results_name=results_name, write=write, resume=not restart, recompute=recompute,
                  progress=progress, journal_dir=journal_dir)
        result = pruned_search(s, clf, config, prune, **kw) if prune else search(s, clf, config, **kw)
        if d.main:
            _report(s, result, Criterion(config.criterion), results_file, grid, mark, echo)
    if d.main and result.results_name:
        echo(f"results: {sidecar_folder(store) / 'results' / (result.results_name + '.h5')}")
    return result


def _searched_config(s: Store, config: SearchConfig, prune: PruneSpec | None) -> SearchConfig:
    """``config`` as the search runs it (a pruned search names its pruning)."""
    if prune is None:
        return config
    n_pool = len(config.backgrounds) if config.backgrounds is not None else len(s.backgrounds)
    return replace(config, prune=prune.describe(n_pool))


def _default_grid(s: Store, config: SearchConfig, results_name: str) -> Path:
    """``<store stem>.<results name>.worst.png`` beside the store, the name the search will give its results."""
    return Path(s.path).with_name(f"{Path(s.path).stem}.{results_name}.worst.png")


RUN_MARK = "advbg-run"      # the key of the run's fingerprint in the JSON summary and in the grid PNG's text


def _check_replace(path: Path | None, mark: str, overwrite: bool, flag: str) -> None:
    """An existing output is replaced only when this same run wrote it (its recorded fingerprint) or with
    ``overwrite``; refused in one line before the search otherwise."""
    if path is None or str(path) == "-" or overwrite or not Path(path).is_file():
        return
    if _mark_of(Path(path)) == mark:
        return
    raise AdvbgError(f"{flag} {path} exists and was not written by this same search (same store, model, criterion, "
                     f"mode and settings); --overwrite (or --recompute) replaces it, or choose another path")


def _mark_of(path: Path) -> str | None:
    """The run fingerprint an earlier advbg search recorded in ``path`` (a JSON summary or a grid PNG), if any."""
    try:
        if path.suffix.lower() == ".png":
            from PIL import Image  # deferred: only needed when an output exists already

            with Image.open(path) as im:
                return im.text.get(RUN_MARK)
        return json.loads(path.read_text()).get(RUN_MARK)
    except (OSError, ValueError, AttributeError, SyntaxError):
        return None


def _report(s: Store, result: SearchResult, criterion: Criterion, results_file: Path | None, grid: Path | None,
            mark: str | None, echo) -> None:
    """Headline, JSON summary and worst-composite grid of a search."""
    echo(headline(result, criterion))
    summary = result.summary()
    if result.run.pruning:
        echo(prune_line(result, len(s.backgrounds)))
        summary.update(prune_summary(result, len(s.backgrounds)))
        rec = _recall(s, result)
        if rec is not None:
            echo(rec.line())
            summary["recall"] = dict(reference=rec.reference, n=rec.n, median_margin_gap=rec.median_margin_gap,
                                     vulnerable=rec.vulnerable.to_dict() if rec.vulnerable else None,
                                     worst_found=rec.worst_found.to_dict())
    summary[RUN_MARK] = mark
    if results_file:
        write_json(results_file, summary)
        echo(f"summary: {results_file}")
    if str(grid) != "-":
        png = grid or Path(s.path).with_name(f"{Path(s.path).stem}.{result.results_name or 'search'}.worst.png")
        check_output(png, (".png",), inputs=[s.path])
        worst_grid(s, result, png, metadata={RUN_MARK: mark} if mark else None)
        echo(f"worst composites: {png}")
