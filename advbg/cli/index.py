"""`advbg index`: embed a store's backgrounds and foregrounds with a model and build its FAISS indexes."""
from __future__ import annotations

from typing import Annotated

import typer

from advbg.cli import options as o
from advbg.cli.app import SEARCH, app
from advbg.commands.index import run_index


@app.command(rich_help_panel=SEARCH)
def index(
    store: o.StoreOpt = o.DEFAULT_STORE,
    model: o.ModelOpt = "advbg/lite0",
    label_map: o.LabelMapOpt = "auto",
    arch: o.ArchOpt = None,
    weights: o.WeightsOpt = None,
    norm: o.NormOpt = None,
    device: o.DeviceOpt = None,
    batch_size: o.BatchOpt = 64,
    kind: Annotated[str, typer.Option(
        "--kind", help="FAISS index: auto (exact flat up to 20,000 items, then HNSW on CPU / IVF on GPU), "
                       "flat, ivf or hnsw.")] = "auto",
    quiet: o.QuietOpt = False,
) -> None:
    """Embed every background and foreground with the model (penultimate features and class scores), store the
    embeddings (<store>.d/embeddings/) and FAISS indexes beside the store, for `advbg search --prune`."""
    run_index(store, o.model_spec(model, arch, weights, label_map, norm, device),
              batch_size=batch_size, kind=kind, progress=not quiet, echo=typer.echo)
