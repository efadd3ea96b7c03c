"""`advbg verify`: check a store's schema, counts, per-item checksums and written groups."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from advbg.cli import options as o
from advbg.cli.app import DATA_IN, app
from advbg.commands.verify import run_verify


@app.command(rich_help_panel=DATA_IN)
def verify(
    store: Annotated[Path, typer.Argument(help="The store (HDF5) to check.")],
    quiet: o.QuietOpt = False,
) -> None:
    """Check a store: schema, counts, every item's checksum, and every results and embeddings file (a damaged
    one is reported, never a crash). One line per problem, then a summary; exit code 1 when anything is wrong."""
    run_verify(store, progress=not quiet, echo=typer.echo)
