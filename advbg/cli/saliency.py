"""`advbg saliency`: Grad-CAM maps and the foreground share of their mass, per variant, class and image."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from advbg.analysis.saliency import MAX_RESAMPLES
from advbg.cli import options as o
from advbg.cli.app import ANALYSE, app
from advbg.commands.saliency import run_saliency


@app.command(rich_help_panel=ANALYSE)
def saliency(
    store: o.StoreOpt = o.DEFAULT_STORE,
    model: o.ModelOpt = "advbg/lite0",
    variants: Annotated[str, typer.Option(
        "--variants", "-V", help="Variants made from the store's foregrounds, comma-separated (original, "
                                 "mixed_rand, bg_white, ...), or a group: paper, in9, probes, factors.")
    ] = "original,mixed_rand",
    target: Annotated[str, typer.Option(
        "--target", help="Class whose score is explained: true (the image's label) or pred (the model's top-1 "
                         "after the label map).")] = "true",
    label_map: o.LabelMapOpt = "auto",
    arch: o.ArchOpt = None,
    weights: o.WeightsOpt = None,
    norm: o.NormOpt = None,
    device: o.DeviceOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, max=o.BATCH_MAX,
                                            help="Images per Grad-CAM pass.")] = 16,
    seed: Annotated[int, o.seed_option("Seed of the generated variants' random choices and of the bootstrap.")] = 0,
    resamples: Annotated[int, typer.Option(
        "--resamples", min=100, max=MAX_RESAMPLES, help="Bootstrap resamples for the 95% intervals.")] = 2000,
    limit: Annotated[Optional[int], typer.Option(
        "--limit", min=1, max=10**9, help="Use only the first N foregrounds of the store.")] = None,
    results_file: Annotated[Optional[Path], typer.Option(
        "--results-file", help="Write results here: JSON (summaries and every image) or CSV (a row per "
                               "variant and image).")] = None,
    results_format: Annotated[Optional[str], typer.Option(
        "--results-format", help="json or csv (default: from the --results-file suffix, else json).")] = None,
    grid: Annotated[Optional[Path], typer.Option(
        "--grid", help="PNG grid of Grad-CAM overlays, a row per image and a column per variant (default: "
                       "beside --results-file; '-' for none).")] = None,
    grid_rows: Annotated[int, typer.Option("--grid-rows", min=1, max=1000, help="Images (rows) in the PNG grid.")] = 8,
    maps: Annotated[Optional[Path], typer.Option(
        "--maps", help="Write every map to this .npz (float16 (n, H, W) per variant, and <variant>_fg_index).")
    ] = None,
    quiet: o.QuietOpt = False,
) -> None:
    """Grad-CAM per image: share of the map on the object (foreground mask) vs the background."""
    run_saliency(store, o.model_spec(model, arch, weights, label_map, norm, device), variants=variants,
                 target=target, batch_size=batch_size, seed=seed, resamples=resamples, limit=limit,
                 results_file=results_file, results_format=results_format, grid=grid, grid_rows=grid_rows,
                 maps=maps, progress=not quiet, echo=typer.echo)
