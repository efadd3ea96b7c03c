"""Refined backgrounds scored like real ones (`advbg universal --from refine`): the ASR of each refined background
of a class over that class's targets (the foregrounds of the other classes), beside the ASR of the real background
it started from, on the same targets.

A refined background belongs to the class of its start background. It was optimised for one foreground; that
foreground is left out of its targets, so the ASR measures how far the change carries to foregrounds it never saw.
No outcome matrix holds these composites, so every pair is a forward: 2 x backgrounds x targets (real start and
refined), said in the output.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.search.compositor import composite_pairs
from advbg.search.criteria import CRITERIA, Criterion
from advbg.search.results import StoredRefine
from advbg.stats import Rate, format_rate, rate_or_none


@dataclass(frozen=True)
class RefinedClass:
    """One class: its refined backgrounds (rows of the refine results), their and their starts' fooled targets."""

    cls: int
    name: str
    fg_id: np.ndarray          # (K,) the foreground each background was refined for
    start_bg: np.ndarray       # (K,) the real background it started from
    n_targets: np.ndarray      # (K,) targets scored (the class's targets minus the refined-for foreground)
    real_fooled: np.ndarray    # (K,) targets the real start background fools
    refined_fooled: np.ndarray  # (K,) targets the refined background fools

    @property
    def real(self) -> Rate | None:
        return rate_or_none(int(self.real_fooled.sum()), int(self.n_targets.sum()))

    @property
    def refined(self) -> Rate | None:
        return rate_or_none(int(self.refined_fooled.sum()), int(self.n_targets.sum()))


def score_refined(s: Store, clf, stored: StoredRefine, budget: int, classes: list[int], criterion: str,
                  batch_size: int = 64) -> list[RefinedClass]:
    """Per class in ``classes`` with at least one refined background: targets fooled by each refined background
    of budget ``budget`` and by its real start, under ``criterion`` (bg-class: toward the background's class)."""
    if criterion not in CRITERIA:
        raise AdvbgError(f"unknown criterion {criterion!r}; use one of: {', '.join(CRITERIA)}")
    crit = Criterion(criterion)
    fg_label = np.asarray(s.foregrounds.labels, np.int64)
    bg_class = np.asarray(s.backgrounds.labels, np.int64)[stored.start_bg]
    refined = stored.cols["background"][budget]
    out = []
    for c in classes:
        rows = np.flatnonzero(bg_class == c)
        if not len(rows):
            continue
        n, real, ref = [], [], []
        for k in rows:
            targets = np.flatnonzero((fg_label >= 0) & (fg_label != c) & (np.arange(len(fg_label))
                                                                          != stored.fg_id[k]))
            start = s.backgrounds.read([int(stored.start_bg[k])])[0]
            n.append(len(targets))
            real.append(_fooled(s, clf, crit, targets, start, c, batch_size))
            ref.append(_fooled(s, clf, crit, targets, refined[k], c, batch_size))
        out.append(RefinedClass(c, s.class_names[c], stored.fg_id[rows], stored.start_bg[rows], np.array(n),
                                np.array(real), np.array(ref)))
    return out


def _fooled(s: Store, clf, crit: Criterion, targets: np.ndarray, bg: np.ndarray, cls: int, batch_size: int) -> int:
    """How many of ``targets`` (fg ids) the background ``bg`` (H, W, 3 uint8) of class ``cls`` fools."""
    total = 0
    dtype = next((x.dtype for x in clf.buffers() if x.is_floating_point()), torch.float32)
    b = torch.as_tensor(bg[None], device=clf.device)                       # (1, H, W, 3) uint8
    for i in range(0, len(targets), max(1, batch_size)):
        ids = targets[i:i + batch_size]
        fg = torch.as_tensor(s.foregrounds.read(ids), device=clf.device)
        m = torch.as_tensor(s.foregrounds.read_masks(ids), device=clf.device)
        k = torch.arange(len(ids), device=clf.device)
        with torch.no_grad():
            pred = clf.label_map.predict(clf(composite_pairs(fg, m, b, k, torch.zeros_like(k), dtype)))
        true = torch.as_tensor(s.foregrounds.labels[ids], device=clf.device)
        total += int(crit.fooled(pred, true, torch.full_like(true, cls)).sum())
    return total


def refined_lines(per_class: list[RefinedClass], budget_name: str, criterion: str, refine_name: str) -> list[str]:
    """The headline and one line per class: ASR of the refined backgrounds vs their real starts, with n and
    95% intervals (pooled over the class's backgrounds and targets), and the forwards spent."""
    pairs = int(sum(int(c.n_targets.sum()) for c in per_class))
    out = [f"refined backgrounds of {refine_name!r} ({budget_name}) scored like real ones, criterion {criterion}: "
           f"{2 * pairs} forwards (each pair twice: real start and refined; no stored outcomes cover them)"]
    for c in per_class:
        out.append(f"{c.name}: {len(c.fg_id)} refined background(s), ASR refined {format_rate(c.refined)} vs "
                   f"their real starts {format_rate(c.real)}")
    if not per_class:
        out.append("no refined background has a start background of the class(es) asked for")
    return out
