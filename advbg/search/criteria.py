"""What "fooled" means, in one place: for tensors of predictions in the engine and for stored outcome matrices in
the analyses. The criterion's repr is stored with every result, so a results file says what fooled meant.

Predictions are mapped class indices (int64), -1 for "none" (a top-1 outside every class of the label map).
A stored outcome matrix (F, B) uint8 holds the mapped prediction per pair, OUTCOME_NONE for "none",
OUTCOME_INVALID for a composite whose logits were NaN/inf (no prediction: never fooled, as in the search itself) and
OUTCOME_MISSING for a pair never evaluated.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from advbg.errors import AdvbgError
from advbg.search.results.schema import OUTCOME_INVALID, OUTCOME_MISSING, OUTCOME_NONE

_MEANING = {
    "any": "mapped prediction != the foreground's class (the reference challenge)",
    "bg-class": "mapped prediction == the background's class, which differs from the foreground's (the paper)",
}
CRITERIA = tuple(_MEANING)


@dataclass(frozen=True)
class Criterion:
    """``any``: fooled when the mapped prediction is not the true class (an unmapped top-1 is wrong).
    ``bg-class``: fooled when the prediction is the background's class (backgrounds without a class, or of the
    foreground's own class, never fool)."""

    name: str = "any"

    def __post_init__(self):
        if self.name not in _MEANING:
            raise AdvbgError(f"unknown criterion {self.name!r}; use one of: {', '.join(_MEANING)}")

    def fooled(self, pred, true, bg_label):
        """Bool array (torch or numpy, broadcast) from mapped predictions, true labels and background labels
        (all integers, -1 = none)."""
        if self.name == "any":
            return pred != true
        return (pred == bg_label) & (bg_label >= 0) & (bg_label != true)

    def fooled_outcome(self, outcome: np.ndarray, true: np.ndarray, bg_label: np.ndarray) -> np.ndarray:
        """(F, B) bool from a stored outcome matrix (F, B), true classes (F,) and background labels (B,).
        Invalid pairs (NaN/inf logits) never fool. Raises AdvbgError when any pair was never evaluated: a
        decision about it would be made up."""
        missing = int(np.count_nonzero(outcome == OUTCOME_MISSING))
        if missing:
            raise AdvbgError(f"{missing} pairs of the outcome matrix were never evaluated (255); this needs an "
                             f"exhaustive search of those pairs (`advbg search` without --early-exit/--prune)")
        pred = decode_outcome(outcome)                                             # (F, B)
        fooled = self.fooled(pred, np.asarray(true, np.int64)[:, None], np.asarray(bg_label, np.int64)[None, :])
        return fooled & (outcome != OUTCOME_INVALID)

    def __repr__(self) -> str:
        return f"Criterion({self.name!r}: fooled = {_MEANING[self.name]})"

    def __str__(self) -> str:
        return self.name


def decode_outcome(outcome: np.ndarray) -> np.ndarray:
    """Stored outcome codes -> mapped predictions int64 (-1 = "none"; invalid pairs stay 253, never-evaluated
    ones 255: neither is a class)."""
    return np.where(outcome == OUTCOME_NONE, -1, outcome.astype(np.int64))


def check_invalid_marked(outcome: np.ndarray, n_invalid: np.ndarray, name: str) -> None:
    """Raise AdvbgError when a stored outcome matrix holds fewer invalid codes (253) than its search counted
    invalid composites: written before invalid pairs were marked, it records their argmax as a prediction."""
    marked, counted = int(np.count_nonzero(outcome == OUTCOME_INVALID)), int(np.sum(n_invalid))
    if marked != counted:
        raise AdvbgError(f"results {name!r} counted {counted} invalid (NaN/inf) composites but its outcome matrix "
                         f"marks {marked}: it predates invalid pairs being marked, and would count them as "
                         f"predictions; rerun the search (e.g. with a new --results-name)")


def target_mask(fg_class: np.ndarray, bg_class: np.ndarray) -> np.ndarray:
    """(F, B) bool: foreground f is a target of background b for the ASR (both have a class, and they differ)."""
    t, c = np.asarray(fg_class)[:, None], np.asarray(bg_class)[None, :]
    return (t >= 0) & (c >= 0) & (t != c)


def fooled_targets(outcome: np.ndarray, fg_class: np.ndarray, bg_class: np.ndarray,
                   criterion: str = "bg-class") -> np.ndarray:
    """(F, B) bool: pair (f, b) fools under ``criterion`` and f is a target of b (False elsewhere). Only target
    pairs need to have been evaluated; a missing one raises AdvbgError (the ASR would be wrong, not just missing)."""
    target = target_mask(fg_class, bg_class)                                      # (F, B)
    missing = int(np.count_nonzero((outcome == OUTCOME_MISSING) & target))
    if missing:
        raise AdvbgError(f"{missing} target pairs of the outcome matrix were never evaluated (255); complete "
                         f"it with an exhaustive search (`advbg universal` does this itself)")
    only_targets = np.where(target, outcome, OUTCOME_NONE)                        # non-targets never count
    return Criterion(criterion).fooled_outcome(only_targets, fg_class, bg_class) & target


def asr(outcome: np.ndarray, fg_class: np.ndarray, bg_class: np.ndarray, criterion: str = "bg-class") -> np.ndarray:
    """(B,) float: attack success rate in % of each background over its targets (other-class foregrounds);
    NaN for a background without a class or without targets."""
    return asr_of(fooled_targets(outcome, fg_class, bg_class, criterion), target_mask(fg_class, bg_class))


def asr_of(fooled: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The one ASR formula: (B,) % of each column's targets (``target`` (F, B) bool) that are ``fooled`` (F, B);
    NaN for a column without targets."""
    n = target.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 100.0 * ((fooled & target).sum(0) / n)
    return np.where(n > 0, out, np.nan)
