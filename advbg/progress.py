"""The one progress bar advbg shows on long work (tqdm), so every command's bars look and behave alike.

A leaf module: every layer may import it."""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, total: float | None = None, desc: str = "",
             unit: str = "it", enabled: bool = True, unit_scale: bool = False, leave: bool = True) -> "tqdm[T]":
    """A tqdm bar on stderr (``enabled=False``: a silent one with the same interface: ``update``, ``close``);
    ``leave=False`` clears it when done."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale, disable=not enabled,
                dynamic_ncols=True, leave=leave)


def progress_write(line: str) -> None:
    """Print ``line`` on stderr above any progress bar, without breaking the bar."""
    tqdm.write(line, file=sys.stderr)
