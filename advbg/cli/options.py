"""CLI options defined once and reused by every command (typer Annotated aliases)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

_REPO_DEMO = Path(__file__).resolve().parents[2] / "data" / "demo.h5"
# The demo store lives in the repository's data/ (editable installs find it from anywhere).
DEFAULT_STORE = _REPO_DEMO if _REPO_DEMO.exists() else Path("data") / "demo.h5"

StoreOpt = Annotated[Path, typer.Option("--store", "-s", help="advbg store (HDF5). Default: the embedded demo store.")]
ModelOpt = Annotated[str, typer.Option(
    "--model", "-m",
    help="Classifier: 'advbg/lite0' (embedded, offline), a timm name with weight tag (resnet50.tv_in1k), "
         "or a checkpoint file (.safetensors / .pt state dict).")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="timm architecture of a checkpoint that does not record it.")]
WeightsOpt = Annotated[Optional[Path], typer.Option("--weights", help="Local weights file for a timm name (no hub).")]
LabelMapOpt = Annotated[str, typer.Option(
    "--label-map", help="auto (in9 for 1000-class models, else identity), in9 (ImageNet-1k -> IN-9: top-1 "
                        "then look-up, unmapped = wrong) or identity (the model's own classes).")]
NormOpt = Annotated[Optional[str], typer.Option(
    "--norm", help="Input normalisation: the model's own (default), imagenet, in9 or 'MEAN,STD'.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: CUDA if available).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Composites per forward pass.")]
CriterionOpt = Annotated[str, typer.Option(
    "--criterion", "-c", help="any: fooled = prediction != true class (reference challenge); "
                              "bg-class: prediction == the background's class (the paper's).")]
ResultsFileOpt = Annotated[Optional[Path], typer.Option("--results-file", help="Write a JSON summary here.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def classifier_from(model: str, arch, weights, label_map: str, norm, device):
    """Build the classifier the options describe (one place, so every command loads models the same way)."""
    from ..models import load_classifier

    return load_classifier(model, arch=arch, weights=str(weights) if weights else None, label_map=label_map,
                           norm=norm, device=device)


def working_store(store: Path, echo=None) -> Path:
    """The bundled demo store is never modified: commands that write work on ``runs/demo.h5``, a copy made on
    first use (and refreshed when the bundled store changes). Any other store is used as given."""
    import shutil

    import h5py

    store = Path(store)
    if not (DEFAULT_STORE.exists() and store.exists() and store.resolve() == DEFAULT_STORE.resolve()):
        return store
    copy = Path("runs") / "demo.h5"
    fresh = False
    if copy.exists():
        try:
            with h5py.File(copy, "r") as a, h5py.File(store, "r") as b:
                fresh = a.attrs.get("created") == b.attrs.get("created")
        except OSError:
            fresh = False
    if not fresh:
        copy.parent.mkdir(exist_ok=True)
        tmp = copy.with_suffix(".h5.partial")
        shutil.copyfile(store, tmp)
        tmp.replace(copy)
        if echo:
            echo(f"working copy of the demo store: {copy} (data/demo.h5 stays unchanged)")
    return copy
