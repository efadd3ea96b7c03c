"""The one progress bar advbg shows on long work (tqdm), so every command's bars look and behave alike.

A leaf module: every layer may import it."""
from __future__ import annotations

from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, total: float | None = None, desc: str = "",
             unit: str = "it", enabled: bool = True, unit_scale: bool = False) -> "tqdm[T]":
    """A tqdm bar on stderr (``enabled=False``: a silent one with the same interface: ``update``, ``close``)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale, disable=not enabled,
                dynamic_ncols=True, leave=True)
