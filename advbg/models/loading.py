"""Classifiers: one way to make a model, with its preprocessing and label map attached.

``load_classifier(name)`` accepts
  - a registered advbg name (``advbg/lite0``: the embedded default, needs no download),
  - a timm name with optional weight tag (``resnet50.tv_in1k``); weights come from the local HF cache or
    ``weights=PATH`` (never a silent download when ``HF_HUB_OFFLINE=1``),
  - a checkpoint file (``.safetensors``, or a ``.pt/.pth`` state dict loaded with ``weights_only=True``).
The returned ``Classifier`` takes float RGB in [0, 1] (N, 3, H, W), resizes to its input size when needed,
normalises inside, and returns raw logits. Its ``label_map`` turns logits into the store's classes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from advbg._compat import import_timm
from advbg.errors import ModelError
from advbg.models.checkpoints import load_checkpoint_model
from advbg.models.classifier import Classifier, ClassifierConfig
from advbg.models.label_map import make_label_map
from advbg.models.norm import resolve_norm
from advbg.models.weights import registered_builder, timm_model

DEFAULT_MODEL = "advbg/lite0"


def _is_checkpoint(name: str) -> bool:
    return name.endswith((".safetensors", ".pt", ".pth", ".bin", ".ckpt")) or os.sep in name and Path(name).exists()

@dataclass(frozen=True)
class ModelSpec:
    """Which classifier a command should use and how to load it: one object instead of six loose arguments.

    ``name``: a registered advbg name, a timm name with weight tag, or a checkpoint path (see the module
    docstring); the other fields are ``load_classifier``'s keyword arguments."""

    name: str = DEFAULT_MODEL
    arch: str | None = None
    weights: str | None = None
    label_map: str = "auto"
    norm: str | tuple | None = None
    device: str | None = None

    def load(self) -> "Classifier":
        return load_classifier(self.name, arch=self.arch, weights=str(self.weights) if self.weights else None,
                               label_map=self.label_map, norm=self.norm, device=self.device)

    def named(self, name: str) -> "ModelSpec":
        """The same loading options for another model (a sweep over several models)."""
        return replace(self, name=name)


def as_classifier(model: "ModelSpec | Classifier | str") -> "Classifier":
    """A ready classifier from a spec, a name, or a classifier (returned as it is)."""
    if isinstance(model, Classifier):
        return model
    return (model if isinstance(model, ModelSpec) else ModelSpec(str(model))).load()


def load_classifier(name: str = DEFAULT_MODEL, *, label_map: str = "auto", device: str | torch.device | None = None,
                    norm: str | tuple | None = None, arch: str | None = None, weights: str | None = None,
                    pretrained: bool = True, class_names: Sequence[str] | None = None) -> Classifier:
    """Build a classifier by name, timm name[.tag] or checkpoint path; see the module docstring.

    label_map: 'auto' (in9 for 1000 outputs, else identity), 'in9' or 'identity'.
    norm: None (the model's own: recorded statistics, a checkpoint's normalizer buffers, or the pretrained
    config), 'reference' (what the reference evaluation applies: the checkpoint's normalizer buffers, else
    ImageNet's for 1000 outputs, else IN-9's), 'imagenet', 'in9', 'MEAN,STD', six numbers or (mean, std).
    """
    if not name:
        raise ModelError("no model given")
    builder = registered_builder(name)
    if builder is not None:
        model, info = builder()
    elif _is_checkpoint(name):
        model, info = load_checkpoint_model(name, arch)
    else:
        model, info = timm_model(name, pretrained, weights)
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    num_outputs = int(getattr(model, "num_classes", 0) or cfg.get("num_classes", 0))
    mean, std, norm_source = resolve_norm(norm, info, cfg, num_outputs)
    lm = make_label_map(info.get("label_map", label_map) if label_map == "auto" else label_map,
                        num_outputs, class_names or info.get("class_names"))
    config = ClassifierConfig(
        name=name, architecture=info["architecture"], weight_tag=info["weight_tag"], source=info["source"],
        weights_file=info.get("weights_file"), weights_sha256=info.get("weights_sha256"),
        input_size=tuple(info.get("input_size", cfg.get("input_size", (3, 224, 224)))),
        mean=mean, std=std, interpolation=str(cfg.get("interpolation", "bilinear")), num_outputs=num_outputs,
        label_map=lm.name, class_names=lm.class_names, timm_version=import_timm().__version__, norm_source=norm_source)
    clf = Classifier(model, config, lm)
    clf = clf.to(memory_format=torch.channels_last)
    return clf.to(resolve_device(device))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None/'auto' -> CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except RuntimeError as e:
        raise ModelError(f"bad device {device!r}: {e}") from None
    if d.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"device {device!r} cannot run a model here; use cpu or cuda[:N]")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but CUDA is not available on this machine")
    return d
