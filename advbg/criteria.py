"""What "fooled" means. The criterion's repr is stored with every result, so a results file says it."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import AdvbgError

_MEANING = {
    "any": "mapped prediction != the foreground's class (the reference challenge)",
    "bg-class": "mapped prediction == the background's class, which differs from the foreground's (the paper)",
}


@dataclass(frozen=True)
class Criterion:
    """``any``: fooled when the mapped prediction is not the true class (an unmapped top-1 is wrong).
    ``bg-class``: fooled when the prediction is the background's class (backgrounds without a class, or of the
    foreground's own class, never fool)."""

    name: str = "any"

    def __post_init__(self):
        if self.name not in _MEANING:
            raise AdvbgError(f"unknown criterion {self.name!r}; use one of: {', '.join(_MEANING)}")

    def fooled(self, pred: torch.Tensor, true: torch.Tensor, bg_label: torch.Tensor) -> torch.Tensor:
        """Boolean (P,) from mapped predictions, true labels and background labels (all int64, -1 = none)."""
        if self.name == "any":
            return pred != true
        return (pred == bg_label) & (bg_label >= 0) & (bg_label != true)

    def __repr__(self) -> str:
        return f"Criterion({self.name!r}: fooled = {_MEANING[self.name]})"

    def __str__(self) -> str:
        return self.name


CRITERIA = tuple(_MEANING)
