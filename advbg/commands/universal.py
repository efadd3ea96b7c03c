"""`advbg universal`: reuse (or complete) the stored outcome matrix, analyse per class, print, write files."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

from advbg.analysis.outcomes import obtain_outcome
from advbg.analysis.plots import asr_histogram_png, top_backgrounds_png
from advbg.analysis.refined_universal import RefinedClass, refined_lines, score_refined
from advbg.analysis.universal import (
    UniversalResult,
    analyse,
    format_class,
    format_table,
    headline,
)
from advbg.commands.common import DEMO_STORE, model_inputs, store_inputs, working_store
from advbg.data.labels import class_index, class_slug
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.files import atomic_write_text, check_output, write_json
from advbg.models.classifier import Classifier
from advbg.models.loading import ModelSpec, as_classifier
from advbg.search.criteria import CRITERIA
from advbg.search.results import load_refine

MAX_TOP, MAX_GREEDY = 100, 10_000   # a table column per top background; greedy picks are cheap


def run_universal(store: str | Path = DEMO_STORE, model: ModelSpec | Classifier | str = ModelSpec(), *,
                  klass: str = "all", criterion: str = "bg-class", top: int = 5, greedy: int = 5,
                  batch_size: int | None = None, compute: bool = True, results_file: Path | None = None, top_png: Path | None = None,
                  hist_png: Path | None = None, progress: bool = True,
                  echo: Callable[[str], None] = print, source: str = "search", refine_results: str | None = None,
                  budget: str | None = None) -> UniversalResult | list[RefinedClass]:
    """`advbg universal`: reuse (or complete) the stored outcome matrix, analyse, print, write files.

    ``model``: a ModelSpec, a name/path, or a ready ``Classifier``. ``top_png`` /
    ``hist_png``: None = beside the store, Path("-") = none. ``source="refine"``: ``run_universal_refined``."""
    if source == "refine":
        return run_universal_refined(store, model, klass=klass, criterion=criterion, results=refine_results,
                                     budget=budget, batch_size=batch_size, results_file=results_file, echo=echo)
    if source != "search" or refine_results or budget:
        raise AdvbgError("--from must be search or refine; --refine-results and --budget need --from refine")

    if criterion not in CRITERIA:
        raise AdvbgError(f"unknown criterion {criterion!r}; use one of: {', '.join(CRITERIA)}")
    if not (0 <= top <= MAX_TOP and 0 <= greedy <= MAX_GREEDY):
        raise AdvbgError(f"--top must be 0 to {MAX_TOP} and --greedy 0 to {MAX_GREEDY} (got {top}, {greedy})")
    inputs = store_inputs(store) + model_inputs(model)
    check_output(results_file, (".json", ".csv"), inputs=inputs)
    check_output(top_png, (".png",), inputs=inputs + [results_file])
    check_output(hist_png, (".png",), inputs=inputs + [results_file, top_png])
    # The bundled demo store is never written (filling missing pairs adds a results group); its working copy
    # is also where `advbg search` left the outcome matrix to reuse.

    store = working_store(store, echo)
    stem = Path(store).with_name(f"{Path(store).stem}.universal.{class_slug(klass)}.{criterion}")
    top_png = Path(top_png) if top_png else Path(f"{stem}.top.png")        # defaults checked before any work too
    hist_png = Path(hist_png) if hist_png else Path(f"{stem}.hist.png")
    check_output(top_png, (".png",), inputs=inputs + [results_file])
    check_output(hist_png, (".png",), inputs=inputs + [results_file, top_png])
    with Store(store) as s:
        s.require_nonempty()
        names = s.class_names
        classes = list(range(len(names))) if klass.strip().lower() == "all" else [class_index(klass, names)]
    clf = as_classifier(model)
    got = obtain_outcome(store, clf, classes, criterion, compute=compute, batch_size=batch_size,
                         progress=progress, echo=echo)
    per_class = analyse(got.outcome, got.fg_class, got.bg_class, names, criterion, classes, top, greedy)
    result = UniversalResult(criterion, tuple(per_class), clf.config.tag, clf.config.label_map, str(store),
                             got.sources, got.forwards, got.computed, int((got.bg_class < 0).sum()), top, greedy,
                             got.notes)
    echo(headline(result))
    echo(format_table(result))
    if len(classes) == 1:
        echo(format_class(per_class[0], got.bg_source_ids))
    _write_outputs(result, store, klass, results_file, top_png, hist_png, echo)
    return result



def _write_outputs(result: UniversalResult, store: Path, klass: str, results_file, top_png, hist_png, echo) -> None:

    if results_file:
        if Path(results_file).suffix.lower() == ".csv":
            atomic_write_text(results_file, result.csv())
        else:
            write_json(results_file, result.summary())
        echo(f"results: {results_file}")
    stem = Path(store).with_name(f"{Path(store).stem}.universal.{class_slug(klass)}.{result.criterion}")
    with Store(store) as s:
        for given, suffix, draw, what in ((top_png, "top.png", top_backgrounds_png, "top backgrounds"),
                                          (hist_png, "hist.png", asr_histogram_png, "ASR histogram")):
            if str(given) == "-":
                continue
            path = Path(given) if given else Path(f"{stem}.{suffix}")
            check_output(path, (".png",), inputs=[store])
            draw(s, result, path)
            echo(f"{what}: {path}")


def run_universal_refined(store: str | Path = DEMO_STORE, model: ModelSpec | Classifier | str = ModelSpec(), *,
                          klass: str = "all", criterion: str = "bg-class", results: str | None = None,
                          budget: str | None = None, batch_size: int | None = None, results_file: Path | None = None,
                          echo: Callable[[str], None] = print) -> list[RefinedClass]:
    """`advbg universal --from refine`: the ASR of each refined background of refine results ``results`` (default
    the latest; ``budget`` default the largest linf EPS) over its class's targets, beside its real start's ASR.
    Needs forwards (2 x backgrounds x targets): no stored outcome matrix covers refined composites."""
    if criterion not in CRITERIA:
        raise AdvbgError(f"unknown criterion {criterion!r}; use one of: {', '.join(CRITERIA)}")
    inputs = store_inputs(store) + model_inputs(model)
    check_output(results_file, (".json",), inputs=inputs)
    store = working_store(store, echo)
    clf = as_classifier(model)
    with Store(store) as s:
        s.require_nonempty()
        names = s.class_names
        classes = list(range(len(names))) if klass.strip().lower() == "all" else [class_index(klass, names)]
        stored = load_refine(s, results)
        b = stored.budget_index(budget)
        per_class = score_refined(s, clf, stored, b, classes, criterion, batch_size or 64)
    made_by = stored.run.get("classifier", {}).get("name", "?")
    if made_by != clf.config.name:
        echo(f"note: the backgrounds were refined against {made_by}, scored here on {clf.config.name} (transfer)")
    for line in refined_lines(per_class, stored.budgets[b]["name"], criterion, stored.name):
        echo(line)
    if results_file:
        write_json(results_file, dict(refine_results=stored.name, budget=stored.budgets[b], criterion=criterion,
                                      model=clf.config.tag, classes=[dict(
                                          cls=c.name, fg_id=c.fg_id.tolist(), start_bg=c.start_bg.tolist(),
                                          n_targets=c.n_targets.tolist(), real_fooled=c.real_fooled.tolist(),
                                          refined_fooled=c.refined_fooled.tolist(), real=c.real and asdict(c.real),
                                          refined=c.refined and asdict(c.refined)) for c in per_class]))
        echo(f"results: {results_file}")
    return per_class
