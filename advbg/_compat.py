"""Narrow compatibility guard for importing timm where torchvision's compiled ops cannot load.

torchvision builds for CUDA fail to load their compiled library next to a CPU-only torch; torchvision then
registers fake kernels for ops that were never defined and `import torchvision` (hence `import timm`) raises
"operator torchvision::nms does not exist". Defining the two op schemas first lets the import succeed; only
torchvision's compiled ops (nms, roi_align) stay unavailable, and advbg uses none of them. Where torchvision
imports normally this does nothing.
"""
from __future__ import annotations

import sys

import torch

_GUARDED = False


def import_timm():
    """Import and return timm, applying the torchvision guard only when the plain import fails that way."""
    global _GUARDED
    try:
        import timm  # noqa: F401  (deferred: heavy, and must follow the guard)
    except RuntimeError as e:
        if "torchvision::" not in str(e) or _GUARDED:
            raise
        for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm")]:
            del sys.modules[name]

        lib = torch.library.Library("torchvision", "DEF")  # noqa: F841 (kept alive via module global below)
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        globals()["_TORCHVISION_LIB"] = lib
        _GUARDED = True
        import timm  # noqa: F401  (deferred: heavy, and must follow the guard)
    return sys.modules["timm"]
