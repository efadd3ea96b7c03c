"""One call per CLI command, usable from notebooks: open inputs, run the library, write outputs, report."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .report import check_output
from .search import SearchConfig, SearchResult


def headline(result: SearchResult) -> str:
    """The plain summary line users compare against the paper."""
    r = result.run
    c = r.classifier
    crit = "any" if "'any'" in r.criterion else "bg-class"
    return (f"fooling rate {result.fooling_rate:.1f}% (challenge accuracy {result.challenge_accuracy:.1f}%) | "
            f"criterion {crit} | model {c['name']} ({c['architecture']}.{c['weight_tag']}, label map "
            f"{c['label_map']}) | {len(result)} foregrounds, {r.forwards} composites evaluated in {r.seconds:.1f} s "
            f"({r.composites_per_s:.0f} composites/s)" + _invalid_note(result))


def _invalid_note(result: SearchResult) -> str:
    n = int(result.n_invalid.sum())
    return (f" | WARNING: {n} invalid composites (NaN/inf logits, e.g. fp16 overflow) counted as not fooled "
            f"(rerun with --amp off to check)") if n else ""


def run_search(*, store: Path, model: str = "advbg/lite0", criterion: str = "any", mode: str = "exhaustive",
               batch_size: int | None = None, fg_block: int = 32, amp: str = "auto", label_map: str = "auto",
               arch: str | None = None, weights=None, norm: str | None = None, device: str | None = None,
               results_name: str | None = None, results_file: Path | None = None, grid: Path | None = None,
               resume: bool = False, write: bool = True, progress: bool = True, compile: bool = False,
               cuda_graphs: bool = False, memory_gb: float | None = None, verify_close: float = 0.0,
               journal_dir: Path | None = None, prune: int | None = None, prune_ratio: float | None = None,
               prune_rule: str = "mix", echo: Callable[[str], None] = print) -> SearchResult:
    """`advbg search`: load, search, write results into the store, JSON and grid PNG, print the headline.

    ``prune``/``prune_ratio``: try each foreground on only K (or a share of the pool) candidate backgrounds
    chosen by ``prune_rule`` from the embeddings `advbg index` stored (see advbg.prune, docs/index.md).

    Under ``torchrun`` every rank searches its share of the foregrounds with the store open read-only; rank 0
    then writes the results into the store and the outputs (see docs/scaling.md)."""
    from . import distributed
    from .cli.options import classifier_from, working_store
    from .models import resolve_device
    from .search import search
    from .store import Store

    cfg = SearchConfig(criterion=criterion, mode=mode, batch_size=batch_size, fg_block=fg_block, amp=amp,
                       compile=compile, cuda_graphs=cuda_graphs, memory_gb=memory_gb, verify_close=verify_close)
    cfg.validate()
    from .prune import prune_spec, pruned_search

    spec = prune_spec(prune, prune_ratio, prune_rule)
    check_output(results_file)
    check_output(grid, (".png",))
    d = distributed.setup(distributed.local_device(resolve_device(device)))
    if write:  # one rank makes the demo's working copy; the others find it fresh
        if not d.main:
            distributed.barrier(d)
        store = working_store(store, echo if d.main else None)
        if d.main:
            distributed.barrier(d)
    with Store(store, mode="r+" if write and not d.active else "r") as s:
        s.require_nonempty()
        clf = classifier_from(model, arch, weights, label_map, norm, device)
        if spec:
            result = pruned_search(s, clf, cfg, spec, results_name=results_name, write=write, resume=resume,
                                   progress=progress, journal_dir=journal_dir)
        else:
            result = search(s, clf, cfg, results_name=results_name, write=write, resume=resume, progress=progress,
                            journal_dir=journal_dir)
        if d.main:
            _report(s, result, results_file, grid, echo)
    distributed.barrier(d)  # no rank holds the store open any more
    if not d.main:
        return result
    if result.journal:  # torchrun: the ranks' units, merged now that no rank holds the store open
        from .journal import Journal
        from .results import merge_journal

        with Store(store, mode="r+") as s:
            merge_journal(s, Journal(result.journal), result.results_name)
    if result.results_name:
        echo(f"results: {store}:/results/{result.results_name}")
    return result


def _report(s, result: SearchResult, results_file: Path | None, grid: Path | None, echo) -> None:
    """Headline, JSON summary and worst-composite grid of a search."""
    from .report import worst_grid, write_json

    echo(headline(result))
    summary = result.summary()
    if result.run.pruning:
        from .prune import prune_line, prune_summary

        echo(prune_line(result, len(s.backgrounds)))
        summary.update(prune_summary(result, len(s.backgrounds)))
    if results_file:
        write_json(results_file, summary)
        echo(f"summary: {results_file}")
    if str(grid) != "-":
        png = grid or Path(s.path).with_name(f"{Path(s.path).stem}.{result.results_name or 'search'}.worst.png")
        worst_grid(s, result, png)
        echo(f"worst composites: {png}")

