"""One vocabulary for the precision forward passes run in (``--amp``), used by search, eval and finetune."""
from __future__ import annotations

import contextlib

import torch

from advbg.errors import AdvbgError

AMPS = ("auto", "off", "bf16", "fp16")   # auto = bf16 on CUDA, off (fp32) elsewhere


def check_amp(amp: str) -> str:
    """``amp`` itself, or an AdvbgError naming the choices."""
    if amp not in AMPS:
        raise AdvbgError(f"amp must be one of {', '.join(AMPS)} (got {amp!r})")
    return amp


def resolve_amp(device: torch.device, amp: str) -> str:
    """'auto' -> 'bf16' on CUDA, 'off' elsewhere (CPU bf16 convolutions are slower and less exact); else as given."""
    check_amp(amp)
    if amp == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "off"
    return amp


def autocast(device: torch.device, amp: str):
    """The autocast context for a resolved ``amp`` ('off': a null context)."""
    amp = resolve_amp(device, amp)
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
