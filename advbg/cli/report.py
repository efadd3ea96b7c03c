"""`advbg report`: a self-contained HTML page of everything a store's results say."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from advbg.analysis.report import GalleryCap
from advbg.cli import options as o
from advbg.cli.app import REPORT, app
from advbg.commands.report import run_report

_CAP = GalleryCap()


@app.command(rich_help_panel=REPORT)
def report(
    store: o.StoreOpt = o.DEFAULT_STORE,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="The HTML file to write (default: <store stem>.report.html beside the store; the "
                            "demo store's results are in runs/demo.h5).")] = None,
    eval_files: Annotated[Optional[list[Path]], typer.Option(
        "--eval", metavar="FILE.json", help="JSON written by `advbg eval --results-file` (repeatable): adds every "
                       "view (each top-k, the 'none' rate, per class), BG-Gap, charts and the comparison table.")] = None,
    saliency_files: Annotated[Optional[list[Path]], typer.Option(
        "--saliency", metavar="FILE.json", help="JSON written by `advbg saliency --results-file` (repeatable): adds "
                       "the foreground share per variant and class, and overlays beside the worst composites when its "
                       "maps (--maps, or the .npz of the same name) are there.")] = None,
    gallery_worst: Annotated[int, typer.Option(
        min=0, max=100_000, help="Gallery rows with images: this many lowest margins ...")] = _CAP.worst,
    gallery_fooled: Annotated[int, typer.Option(
        min=0, max=100_000, help="... plus fooled foregrounds up to this many more (every foreground still gets a text row).")] = _CAP.fooled,
    thumb: Annotated[int, typer.Option(
        min=16, max=1024, help="Longest side of an embedded thumbnail, pixels.")] = _CAP.thumb,
    page_rows: Annotated[int, typer.Option(
        min=1, max=100_000, help="Gallery rows shown per page (the rest are not laid out).")] = (
        _CAP.page_rows),
    no_verify: Annotated[bool, typer.Option(
        "--no-verify", help="Do not check every item's checksum (the page then says 'not verified').")] = False,
    skip_incomplete: Annotated[bool, typer.Option(
        "--skip-incomplete", help="List incomplete (interrupted) results groups as skipped instead of "
                                  "refusing.")] = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Write one self-contained HTML page (no network, opens from disk) of every complete results group:
    search runs with a sortable gallery, universal backgrounds per class, the comparison table, evaluations
    (--eval), saliency (--saliency), provenance; every rate with n and its 95% interval."""
    run_report(store, out, eval_files=eval_files or (), saliency_files=saliency_files or (),
               cap=GalleryCap(gallery_worst, gallery_fooled, thumb, page_rows),
               verify=not no_verify, skip_incomplete=skip_incomplete, progress=not quiet, echo=typer.echo)
