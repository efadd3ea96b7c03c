"""CLI options defined once and reused by every command (typer Annotated aliases)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from advbg.commands.common import DEMO_STORE
from advbg.errors import SEED_MAX, usable_cores
from advbg.models.loading import ModelSpec

DEFAULT_STORE = DEMO_STORE   # shipped inside the package: a wheel install runs `advbg search` with no options

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
    "--norm", help="Input normalisation: the model's own (default; a checkpoint's normalizer buffers when it has "
                   "them), reference (what the reference evaluation applies: a checkpoint's normalizer buffers, else "
                   "ImageNet's for 1000-class models and IN-9's for 9-class ones), imagenet, in9, 'MEAN,STD' or six numbers.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: CUDA if available).")]
# Names follow timm's validate.py where it has one (--model/-m, --batch-size/-b, --workers/-j, --results-file, --amp).
BATCH_MAX = 65536      # a larger batch of even 32x32 images is beyond any device's memory
MOST_WORKERS = 4 * usable_cores()   # more processes than this only thrash
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, max=BATCH_MAX,
                                       help="Images per batch (forward pass or training step).")]
AutoBatchOpt = Annotated[Optional[int], typer.Option(
    "--batch-size", "-b", min=1, max=BATCH_MAX,
    help="Composites per forward pass (default: 64 on CPU; on CUDA sized to the free memory, up to 1024; halved "
         "automatically on out-of-memory).")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", "-j", min=1, max=MOST_WORKERS,
    help="Worker processes (default: the usable cores; at most 4 per usable core).")]
LoaderWorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", "-j", min=0, max=MOST_WORKERS,
    help="Data-loading worker processes (default: none, loading in the training process; at most 4 per usable "
         "core).")]
AmpOpt = Annotated[str, typer.Option(help="Precision of the forward passes: auto (bf16 on CUDA, fp32 on CPU), off "
                                          "(fp32), bf16 or fp16.")]
CriterionOpt = Annotated[str, typer.Option(
    "--criterion", "-c", help="any: fooled = prediction != true class (reference challenge); "
                              "bg-class: prediction == the background's class (the paper's).")]
ResultsFileOpt = Annotated[Optional[Path], typer.Option("--results-file", help="Write a JSON summary here.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def seed_option(help: str, *decls: str) -> typer.models.OptionInfo:
    """A seed option: every generator advbg seeds takes 0 .. SEED_MAX."""
    return typer.Option(*decls, min=0, max=SEED_MAX, help=help)


def model_spec(model: str, arch: str | None, weights: Path | None, label_map: str, norm: str | None,
               device: str | None) -> ModelSpec:
    """The one ModelSpec the model options describe (every command loads models the same way)."""
    return ModelSpec(model, arch=arch, weights=str(weights) if weights else None, label_map=label_map, norm=norm,
                     device=device)
