"""Getting data in: `advbg fetch in9`, `advbg ingest in9`, `advbg extract`, `advbg variants`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from advbg.cli import options as o
from advbg.cli.app import DATA_IN, app
from advbg.commands.data import run_extract, run_fetch, run_ingest, run_variants
from advbg.data.extract import ExtractConfig
from advbg.data.variants import VariantOptions

fetch_app = typer.Typer(help="Download a released dataset.", no_args_is_help=True)
ingest_app = typer.Typer(help="Turn a released dataset into an advbg store.", no_args_is_help=True)
app.add_typer(fetch_app, name="fetch", rich_help_panel=DATA_IN)
app.add_typer(ingest_app, name="ingest", rich_help_panel=DATA_IN)

OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]


@fetch_app.command("in9")
def fetch_in9(
    dest: Annotated[Path, typer.Option("--dest", "-d", help="Folder to download and unpack into.")],
    archive: Annotated[Optional[Path], typer.Option(
        "--archive", help="Use this already-downloaded archive (verified, then unpacked) instead of downloading.")
    ] = None,
    sha256: Annotated[Optional[str], typer.Option(
        "--sha256", help="Expected SHA-256 of the archive (default: the pinned release checksum).")] = None,
    timeout: Annotated[float, typer.Option(help="Network timeout per connect/read, seconds.")] = 15.0,
    quiet: o.QuietOpt = False,
) -> None:
    """Download the released ImageNet-9 test data (4,050 images x 8 variants + masks), verify and unpack it."""
    run_fetch(dest, archive=archive, sha256=sha256, timeout=timeout, progress=not quiet, echo=typer.echo)


@ingest_app.command("in9")
def ingest_in9(
    path: Annotated[Path, typer.Argument(help="The unpacked release (bg_challenge/ or the folder holding it).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Store to write (HDF5).")],
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Leave out items with problems (counted in the store attrs) instead of failing.")] = False,
    evalsets: Annotated[bool, typer.Option(
        "--evalsets/--no-evalsets", help="Also store the other released variants as /evalsets/<variant>.")] = True,
    overwrite: OverwriteOpt = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Ingest the released IN-9 layout: foregrounds (original + fg_mask), backgrounds (only_bg_t), other
    variants as evaluation sets."""
    run_ingest(path, out, skip_bad=skip_bad, evalsets=evalsets, overwrite=overwrite, progress=not quiet,
               echo=typer.echo)


@app.command(rich_help_panel=DATA_IN)
def extract(
    images: Annotated[Path, typer.Argument(help="Folder of photos (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Store to write (HDF5).")],
    boxes: Annotated[Optional[Path], typer.Option(
        "--boxes", help="Folder of ImageNet/PASCAL VOC XML files, or a CSV file,xmin,ymin,xmax,ymax,label. "
                        "Give --boxes, --masks or both.")] = None,
    masks: Annotated[Optional[Path], typer.Option(
        "--masks", help="Folder of per-photo masks used instead of GrabCut (.png/.bmp/.tif or .npy; 0/1, 0/255, "
                        "or instance ids: the instance with most pixels inside the box, else the largest; 255 "
                        "is VOC's void outline), matched by relative path and stem (cat/p1.png <-> cat/p1.jpg). "
                        "Same size as the photo, else the photo is dropped (mask_size); unreadable, empty and "
                        "full masks and masks matching no photo are counted too. Without --boxes the box is the "
                        "mask's tight bound and the label the photo's class folder; with --boxes, photos "
                        "without a mask fall back to GrabCut.")] = None,
    classes: Annotated[Optional[str], typer.Option(
        "--classes", help="Class names of the store, comma-separated, or 'in9' (IN-9; ImageNet synsets mapped). "
                          "Default: the sorted box labels (with --masks alone: the sorted class folders).")] = None,
    filter: Annotated[str, typer.Option(
        "--filter", help="reference (Xiao et al.: one box, box <= 90% of the image for backgrounds, >= 50% of the "
                         "box survives the crop) or sehwag (foreground 5%..70% of the image).")] = "reference",
    resize: Annotated[int, typer.Option(help="Shorter side resized to this first (0: no resize).")] = 256,
    crop: Annotated[int, typer.Option(help="Centre crop size (the store's image size).")] = 224,
    iterations: Annotated[int, typer.Option(help="GrabCut iterations.")] = 5,
    seed: Annotated[int, typer.Option(help="GrabCut RNG seed.")] = 0,
    workers: o.WorkersOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run (its temporary store file).")] = False,
    overwrite: OverwriteOpt = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Build a store from photos + bounding boxes and/or masks (GrabCut or given masks, Only-BG-T backgrounds)."""
    cfg = ExtractConfig(resize=resize, crop=crop, iterations=iterations, filter=filter, seed=seed)
    run_extract(images, out, boxes=boxes, masks=masks, classes=classes, config=cfg, workers=workers, resume=resume,
                overwrite=overwrite, progress=not quiet, echo=typer.echo)


@app.command(rich_help_panel=DATA_IN)
def variants(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (released layout) or .h5 file.")],
    store: o.StoreOpt = o.DEFAULT_STORE,
    format: Annotated[Optional[str], typer.Option(
        "--format", help="folder or h5 (default: h5 when --out ends in .h5, else folder).")] = None,
    names: Annotated[Optional[str], typer.Option(
        "--variants", help="Comma-separated variant names (default: all; see docs/data.md).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random choices (mixed_*, noise, textures, colours).")] = 0,
    blur_kernel: Annotated[int, typer.Option(help="bg_blur: odd Gaussian kernel size, pixels.")] = 21,
    recolor: Annotated[str, typer.Option(help="bg_recolor: hue or gray.")] = "hue",
    hue_shift: Annotated[int, typer.Option(help="bg_recolor: hue rotation, degrees.")] = 90,
    reduced_margin: Annotated[int, typer.Option(help="bg_reduced: pixels kept around the object box.")] = 16,
    reduced_fill: Annotated[str, typer.Option(help="bg_reduced: black, gray or white outside.")] = "black",
    texture: Annotated[str, typer.Option(
        help="bg_texture: auto, store (unlabelled backgrounds) or procedural.")] = "auto",
    overwrite: OverwriteOpt = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Write IN-9 variant sets, background probes and background factors of a store, with fg_id/bg_id provenance."""
    opts = VariantOptions(blur_kernel=blur_kernel, recolor=recolor, hue_shift=hue_shift,
                          reduced_margin=reduced_margin, reduced_fill=reduced_fill, texture=texture)
    run_variants(store, out, fmt=format, variants=names, seed=seed, options=opts, overwrite=overwrite,
                 progress=not quiet, echo=typer.echo, warn=lambda line: typer.echo(line, err=True))
