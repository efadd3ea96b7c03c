"""`advbg eval`, `advbg models`, `advbg plot`: accuracy tables per variant, what models are at hand, scatter plots."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from advbg.cli import options as o
from advbg.cli.app import ANALYSE, app
from advbg.commands.evaluate import run_eval, run_plot
from advbg.commands.models import run_models

ModelsOpt = Annotated[Optional[list[str]], typer.Option(
    "--model", "-m", help=o.ModelOpt.__metadata__[0].help + " Several models (one table row each): repeat the "
                           "option or separate names with commas (advbg/lite0,advbg/lite1,advbg/lite2).")]


@app.command("eval", rich_help_panel=ANALYSE)
def eval_(
    store: o.StoreOpt = o.DEFAULT_STORE,
    model: ModelsOpt = None,
    models_file: Annotated[Optional[Path], typer.Option(
        "--models-file", help="File with one model per line ('#' comments); adds to --model.")] = None,
    variants: Annotated[str, typer.Option(
        "--variants", "-V", help="all, paper (original,only_bg_t,mixed_same,mixed_rand), in9, probes, factors, sweep (in9 + "
                                 "fg_white, bg_white, bg_texture), or "
                                 "variant names, comma-separated. Variants of a group that the store cannot make "
                                 "are skipped with the reason; a named one that cannot be made is an error.")] = "all",
    label_map: o.LabelMapOpt = "auto",
    top_k: Annotated[str, typer.Option(
        "--top-k", help="Comma-separated k for top-k after the label map (top-1 always included).")] = "1,5",
    baseline: Annotated[Optional[str], typer.Option(
        "--baseline", help="Model for relative accuracy (accuracy / baseline's, per variant); same label space.")] = None,
    arch: o.ArchOpt = None,
    weights: o.WeightsOpt = None,
    norm: o.NormOpt = None,
    device: o.DeviceOpt = None,
    batch_size: o.BatchOpt = 64,
    seed: Annotated[int, o.seed_option("Seed of the generated variants' random choices.")] = 0,
    source: Annotated[str, typer.Option(
        help="auto: stored pixels from /evalsets/<variant> (e.g. the released IN-9 sets from `advbg ingest`) "
             "when present, else generated from the foregrounds; evalset: stored only; generate: always "
             "generate.")] = "auto",
    evalsets: Annotated[Optional[Path], typer.Option(
        "--evalsets", help="An .h5 of evaluation sets (`advbg variants --out sets.h5`), preferred over the "
                           "store's own.")] = None,
    amp: o.AmpOpt = "off",
    results_file: Annotated[Optional[Path], typer.Option(
        "--results-file", help="Write results here: JSON (everything) or CSV (a row per model).")] = None,
    results_format: Annotated[Optional[str], typer.Option(
        "--results-format", help="json or csv (default: from the --results-file suffix, else json).")] = None,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="Bar chart PNG of accuracy per variant (default: beside --results-file; '-' for none).")] = None,
    imagenet_plot: Annotated[Optional[Path], typer.Option(
        "--imagenet-plot", help="PNG of each variant's top-1 (and BG-Gap) against the models' known ImageNet "
                                "top-1 (timm's results table; registered models only). Default: "
                                "<results stem>.imagenet.png when two or more such models are evaluated; "
                                "'-' for none.")] = None,
    quiet: o.QuietOpt = False,
) -> None:
    """Accuracy on every variant (IN-9 table, BG-Gap, per class, top-k, relative to a baseline)."""
    run_eval(store, model or [], models_file=models_file, baseline=baseline, variants=variants, top_k=top_k,
             options=o.model_spec("advbg/lite0", arch, weights, label_map, norm, device), batch_size=batch_size, seed=seed, source=source, evalsets=evalsets, amp=amp,
             results_file=results_file, results_format=results_format, plot=plot, imagenet_png=imagenet_plot,
             progress=not quiet,
             echo=typer.echo)


@app.command("models", rich_help_panel=ANALYSE)
def models(
    dir: Annotated[Optional[Path], typer.Option(
        "--dir", help="Folder of checkpoints (default: $ADVBG_CHECKPOINTS, else ~/.cache/advbg/checkpoints).")] = None,
    filter: Annotated[Optional[str], typer.Option(
        "--filter", help="Also list timm pretrained weights matching this pattern (e.g. 'resnet50*').")] = None,
) -> None:
    """List the models that can be evaluated offline now, and those that need a download."""
    run_models(folder=dir, pattern=filter, echo=typer.echo)


@app.command("plot", rich_help_panel=ANALYSE)
def plot(
    results: Annotated[list[Path], typer.Argument(help="JSON results files of `advbg eval --results-file`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("accuracy_scatter.png"),
    variants: Annotated[str, typer.Option(
        "--variants", "-V", help="paper (only_bg_t, mixed_same, mixed_rand), all, or names, comma-separated.")] = "paper",
) -> None:
    """Scatter of accuracy on original vs each variant (and BG-Gap), one point per model."""
    run_plot(results, out, variants, echo=typer.echo)
