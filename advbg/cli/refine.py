"""`advbg refine`: push each foreground's worst real background further under a stated budget."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from advbg.cli import options as o
from advbg.cli.app import SEARCH, app
from advbg.commands.refine import DEFAULT_BUDGETS, run_refine
from advbg.search.refine import DEFAULT_STEPS

MAX_STEPS = 10_000      # steps per budget: more is hours per foreground on a CPU


@app.command(rich_help_panel=SEARCH)
def refine(
    store: o.StoreOpt = o.DEFAULT_STORE,
    model: Annotated[str | None, typer.Option(
        "--model", "-m",
        help="Classifier, as for `advbg search` ('advbg/lite0', a timm name with weight tag, or a checkpoint); "
             "default: the classifier of the latest stored search. Without a stored search of this model and "
             "criterion, the search runs first.")] = None,
    budget: Annotated[str, typer.Option(
        "--budget",
        help="Budgets separated by ';': linf:EPS[,EPS...] (L-infinity change of each background pixel within EPS, "
             "in [0,1] pixel units, e.g. 2/255; 0 < EPS <= 1), photometric (brightness, contrast, saturation, hue, "
             "blur, small shift and zoom of the background, each in a documented range), min-eps[:EPS,...] (the "
             "smallest fooling EPS of a grid per foreground, by bisection; default grid 1,2,3,4,6,8,12,16 /255).")
    ] = DEFAULT_BUDGETS,
    criterion: o.CriterionOpt = "any",
    search_name: Annotated[str | None, typer.Option(
        "--search", help="Stored search results to start from (default: the latest complete one of this model and "
                         "criterion, exhaustive first).")] = None,
    start: Annotated[str, typer.Option(
        help="Start background of each foreground: worst (the stored search's worst real background; a search "
             "keeps only the worst per foreground, so no top-k), random (a background of the store drawn from the "
             "seed and the fg_id) or own (the background with the foreground's source_id; foregrounds without "
             "one are left out). random and own are the comparisons of benchmarks/refine_gap.py.")] = "worst",
    steps: Annotated[int, typer.Option(min=1, max=MAX_STEPS,
                                       help="Optimisation steps per budget (per EPS for min-eps).")] = DEFAULT_STEPS,
    seed: Annotated[int, o.seed_option("Seed of the random starts (with the fg_id: a foreground's start does "
                                       "not depend on its batch).")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, max=o.BATCH_MAX,
                                            help="Foregrounds refined together in one batched optimisation; also "
                                                 "the unit a killed refine resumes from.")] = 32,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted refine with the same settings from its committed units (each "
                         "--batch-size block of foregrounds is committed when done); without it a refine starts "
                         "afresh.")] = False,
    label_map: o.LabelMapOpt = "auto",
    arch: o.ArchOpt = None,
    weights: o.WeightsOpt = None,
    norm: o.NormOpt = None,
    device: o.DeviceOpt = None,
    results_name: Annotated[str | None, typer.Option(
        help="Results name: written to <store>.d/results/NAME.h5 (default: <search name>.refine).")] = None,
    results_file: o.ResultsFileOpt = None,
    curve: Annotated[Path | None, typer.Option(
        help="PNG of fooling rate vs EPS with 95% intervals (default: <store stem>.<results name>.curve.png beside "
             "the store; '-' for none).")] = None,
    grid: Annotated[Path | None, typer.Option(
        help="PNG before/after grid: start background | refined | composite with prediction and margin (default: "
             "<store stem>.<results name>.grid.png; '-' for none).")] = None,
    quiet: o.QuietOpt = False,
) -> None:
    """Refine each foreground's worst real background under each budget; fooling rate of real vs refined."""
    spec = o.model_spec(model, arch, weights, label_map, norm, device) if model else None
    run_refine(store, spec, budget, criterion=criterion, search_name=search_name, start=start, steps=steps,
               seed=seed, batch_size=batch_size, resume=resume, results_name=results_name,
               results_file=results_file, curve=curve, grid=grid,
               progress=not quiet, echo=typer.echo, note=lambda text: typer.echo(text, err=True))
