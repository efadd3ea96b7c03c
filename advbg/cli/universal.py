"""`advbg universal`: backgrounds that push a model toward their own class, whatever foreground sits on them."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from advbg.cli import options as o
from advbg.cli.app import ANALYSE, app
from advbg.commands.universal import MAX_GREEDY, MAX_TOP, run_universal


@app.command(rich_help_panel=ANALYSE)
def universal(
    store: o.StoreOpt = o.DEFAULT_STORE,
    model: o.ModelOpt = "advbg/lite0",
    klass: Annotated[str, typer.Option(
        "--class", help="A class name (or index, or IN-9 folder name), or 'all' for the per-class table.")] = "all",
    top: Annotated[int, typer.Option(
        "--top", min=0, max=MAX_TOP, help="How many top-ASR backgrounds to list per class.")] = 5,
    greedy: Annotated[int, typer.Option(
        "--greedy", min=0, max=MAX_GREEDY, help="Greedy set cover: pick up to K backgrounds that together fool the most foregrounds "
                         "(0: off).")] = 5,
    criterion: o.CriterionOpt = "bg-class",
    label_map: o.LabelMapOpt = "auto",
    arch: o.ArchOpt = None,
    weights: o.WeightsOpt = None,
    norm: o.NormOpt = None,
    device: o.DeviceOpt = None,
    batch_size: o.AutoBatchOpt = None,
    no_search: Annotated[bool, typer.Option(
        "--no-search", help="Use only stored outcomes; fail (saying what is missing) instead of searching.")] = False,
    results_file: Annotated[Optional[Path], typer.Option(
        "--results-file", help="Write the results here: .json (everything) or .csv (the per-class table).")] = None,
    top_png: Annotated[Optional[Path], typer.Option(
        help="PNG of the top backgrounds with their ASR (default: <store stem>.universal.<class>.<criterion>"
             ".top.png beside the store; '-' for none).")] = None,
    hist_png: Annotated[Optional[Path], typer.Option(
        help="PNG histogram of ASR over each class's backgrounds (default: ...hist.png beside the store; "
             "'-' for none).")] = None,
    quiet: o.QuietOpt = False,
    source: Annotated[str, typer.Option(
        "--from", help="search (real backgrounds, from the outcome matrix) or refine (the refined backgrounds of "
                       "`advbg refine` results, each scored over its start background's class's targets beside "
                       "its real start; needs forwards, 2 x backgrounds x targets).")] = "search",
    refine_results: Annotated[Optional[str], typer.Option(
        help="With --from refine: the refine results name (default: the latest).")] = None,
    budget: Annotated[Optional[str], typer.Option(
        help="With --from refine: the budget scored (default: the largest linf EPS, else the first).")] = None,
) -> None:
    """Per-background attack success rate toward its own class, per-class union, top-k and greedy cover."""
    run_universal(store, o.model_spec(model, arch, weights, label_map, norm, device), klass=klass,
                  criterion=criterion, top=top, greedy=greedy, batch_size=batch_size, compute=not no_search, results_file=results_file, top_png=top_png,
                  hist_png=hist_png, progress=not quiet, echo=typer.echo, source=source,
                  refine_results=refine_results, budget=budget)
