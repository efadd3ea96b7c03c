"""`advbg search`: load the store and the classifier, search, write results, JSON and the grid, print the headline."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from advbg.analysis.plots import worst_grid
from advbg.commands.common import DEMO_STORE, model_inputs, store_inputs, working_store
from advbg.data.sidecar import sidecar_folder
from advbg.data.store import Store
from advbg.files import check_output, write_json
from advbg.models.classifier import Classifier, results_tag
from advbg.models.loading import ModelSpec, as_classifier, resolve_device
from advbg.search import distributed
from advbg.search.config import SearchConfig
from advbg.search.criteria import Criterion
from advbg.search.results import SearchResult
from advbg.search.runner import default_results_name, search
from advbg.search.strategies import PruneSpec, prune_line, prune_summary, pruned_search


def headline(result: SearchResult, criterion: Criterion) -> str:
    """The plain summary line users compare against the paper."""
    r = result.run
    c = r.classifier
    crit = criterion.name
    n = len(result)
    return (f"fooling rate {result.fooling_rate:.1f}% ({int(result.fooled.sum())}/{n} vulnerable; challenge "
            f"accuracy {result.challenge_accuracy:.1f}%) | "
            f"criterion {crit} | model {c['name']} ({results_tag(c)}, label map "
            f"{c['label_map']}) | {len(result)} foregrounds, {r.forwards} composites evaluated in {r.seconds:.1f} s "
            f"({r.composites_per_s:.0f} composites/s)" + _invalid_note(result))


def _invalid_note(result: SearchResult) -> str:
    n = int(result.n_invalid.sum())
    return (f" | WARNING: {n} invalid composites (NaN/inf logits, e.g. fp16 overflow) counted as not fooled "
            f"(rerun with --amp off to check)") if n else ""


def run_search(store: str | Path = DEMO_STORE, model: ModelSpec | Classifier | str = ModelSpec(),
               config: SearchConfig = SearchConfig(), *, prune: PruneSpec | None = None,
               results_name: str | None = None, results_file: Path | None = None, grid: Path | None = None,
               resume: bool = False, write: bool = True, progress: bool = True, journal_dir: Path | None = None,
               echo: Callable[[str], None] = print) -> SearchResult:
    """`advbg search`: search, write results into the store, the JSON summary and the grid PNG, print the headline.

    ``prune``: try each foreground on only K candidate backgrounds chosen from the embeddings `advbg index`
    stored (advbg.search.strategies, docs/index.md). ``grid``: None = beside the store, Path('-') = none.
    Under ``torchrun`` every rank searches its share of the foregrounds; rank 0 writes the outputs
    (docs/scaling.md)."""
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
        if d.main and grid is None:   # the default grid's name needs the model: checked now, before the search
            grid = _default_grid(s, clf, config, prune, results_name if write else "search")
            check_output(grid, (".png",), inputs=inputs + [results_file])
        kw = dict(results_name=results_name, write=write, resume=resume, progress=progress, journal_dir=journal_dir)
        result = pruned_search(s, clf, config, prune, **kw) if prune else search(s, clf, config, **kw)
        if d.main:
            _report(s, result, Criterion(config.criterion), results_file, grid, echo)
    if d.main and result.results_name:
        echo(f"results: {sidecar_folder(store) / 'results' / (result.results_name + '.h5')}")
    return result


def _default_grid(s: Store, clf: Classifier, config: SearchConfig, prune: PruneSpec | None,
                  results_name: str | None) -> Path:
    """``<store stem>.<results name>.worst.png`` beside the store, the name the search will give its results."""
    if results_name is None:
        n_pool = len(config.backgrounds) if config.backgrounds is not None else len(s.backgrounds)
        results_name = default_results_name(clf, replace(config, prune=prune.describe(n_pool)) if prune else config)
    return Path(s.path).with_name(f"{Path(s.path).stem}.{results_name}.worst.png")


def _report(s: Store, result: SearchResult, criterion: Criterion, results_file: Path | None, grid: Path | None,
            echo) -> None:
    """Headline, JSON summary and worst-composite grid of a search."""
    echo(headline(result, criterion))
    summary = result.summary()
    if result.run.pruning:
        echo(prune_line(result, len(s.backgrounds)))
        summary.update(prune_summary(result, len(s.backgrounds)))
    if results_file:
        write_json(results_file, summary)
        echo(f"summary: {results_file}")
    if str(grid) != "-":
        png = grid or Path(s.path).with_name(f"{Path(s.path).stem}.{result.results_name or 'search'}.worst.png")
        check_output(png, (".png",), inputs=[s.path])
        worst_grid(s, result, png)
        echo(f"worst composites: {png}")
