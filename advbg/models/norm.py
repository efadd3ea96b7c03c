"""Normalisation statistics: where a classifier's mean/std come from and how ``--norm`` is read."""
from __future__ import annotations

import numpy as np

from advbg.errors import ModelError

NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # Statistics the reference release uses for its 9-class IN-9-trained models.
    "in9": ((0.4717, 0.4499, 0.3837), (0.2600, 0.2516, 0.2575)),
}


# Where a classifier's mean/std came from (ClassifierConfig.norm_source, shown in every run record).
NORM_SOURCES = {
    "pretrained": "the model's own pretrained configuration (timm / the embedded model)",
    "checkpoint-metadata": "mean/std recorded in the checkpoint's advbg metadata",
    "checkpoint-normalizer": "the checkpoint's own normalizer buffers (robustness library)",
    "checkpoint-default": "a checkpoint without statistics: IN-9's for 9 outputs, else ImageNet's",
    "option": "--norm given by name or numbers",
    "reference": "--norm reference: what the reference evaluation applies (a checkpoint's normalizer buffers, else "
                 "ImageNet's for 1000 outputs, else IN-9's)",
}
NORM_CHOICES = "the model's own (default), reference, imagenet, in9, 'MEAN,STD' or six numbers"


def resolve_norm(norm, info: dict, cfg: dict, num_outputs: int) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, source): see load_classifier's ``norm``; source is a key of NORM_SOURCES."""
    if norm is None:
        if "mean" in info:
            return check_stats(info["mean"], info["std"], info.get("norm_source", "pretrained"))
        if info["source"] == "checkpoint":
            return (*(NORMS["in9"] if num_outputs == 9 else NORMS["imagenet"]), "checkpoint-default")
        return check_stats(cfg.get("mean", NORMS["imagenet"][0]), cfg.get("std", NORMS["imagenet"][1]), "pretrained")
    if isinstance(norm, str):
        if norm == "reference":
            # The reference loader copies a checkpoint's normalizer buffers whatever its class count; without
            # them it wraps 1000-class models in ImageNet's normaliser and IN-9 models in IN-9's.
            if info.get("norm_source") == "checkpoint-normalizer":
                return check_stats(info["mean"], info["std"], "reference")
            return (*NORMS["imagenet" if num_outputs == 1000 else "in9"], "reference")
        if norm in NORMS:
            return (*NORMS[norm], "option")
        try:
            vals = [float(v) for v in norm.split(",")]
        except ValueError:
            vals = []
        if len(vals) == 2:
            return check_stats((vals[0],) * 3, (vals[1],) * 3, "option")
        if len(vals) == 6:
            return check_stats(vals[:3], vals[3:], "option")
        raise ModelError(f"norm {norm!r}: use {NORM_CHOICES}")
    try:
        mean, std = norm
    except (TypeError, ValueError):
        raise ModelError(f"norm {norm!r}: give (mean, std)") from None
    return check_stats(mean, std, "option")


def check_stats(mean, std, source: str) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """Three finite means and three finite positive standard deviations, or a ModelError naming the problem."""
    try:
        m, s = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise ModelError(f"normalisation mean {mean!r} / std {std!r} ({source}) are not numbers") from None
    if len(m) != 3 or len(s) != 3:
        raise ModelError(f"normalisation needs 3 means and 3 standard deviations (RGB), got {len(m)} and {len(s)} "
                         f"({NORM_SOURCES.get(source, source)})")
    if not all(np.isfinite(m)) or not all(np.isfinite(v) and v > 0 for v in s):
        raise ModelError(f"normalisation mean {m} / std {s} ({NORM_SOURCES.get(source, source)}): means must be "
                         f"finite and standard deviations finite and positive")
    return m, s, source
