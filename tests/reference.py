"""Slow obvious references for the search, written from the README's definitions with plain numpy.

They share nothing with advbg but the model's forward (calling the Classifier): no LabelMap, no Criterion, no
compositor, no advbg label table. The IN-9 table is typed in again here from /work/shared/reference/in9.md
(section 1), so a wrong entry in advbg.data.labels is caught rather than copied.

Definitions (README "Terms" and "Label maps"):
- composite: x = mask * fg + (1 - mask) * bg in [0, 1]; with a 0/1 mask, the fg pixel where the mask is set, else
  the bg pixel.
- in9: the mapped prediction is the IN-9 class of the top-1 over all 1000 logits, -1 ("none") if that index is
  unmapped. A class's score is the max logit over its indices; the unmapped indices form one extra "none" group.
  identity: the model's own classes (no "none" group).
- margin: the true class's score minus the best score of any other group ("none" included).
- criterion any: fooled iff pred != true. bg-class: fooled iff pred == bg label, bg label >= 0 and bg label != true.
- search: per foreground, backgrounds in trial order; worst = lowest margin (ties to the earliest position);
  first fooling background in trial order; n_fooling counts; early exit stops at the first fooling one.
"""
from __future__ import annotations

import numpy as np
import torch

NONE = -1


def _span(a: int, b: int) -> list[int]:
    return list(range(a, b + 1))


# ImageNet-1k indices per IN-9 class, in IN-9 order (0 dog ... 8 fish), from in9.md section 1.
IN9_INDICES: tuple[list[int], ...] = (
    _span(151, 170) + _span(173, 268),                                                          # 0 dog
    _span(7, 24) + _span(87, 100) + _span(127, 146),                                            # 1 bird
    [407, 408, 428, 436, 444, 468, 511, 547, 555, 561, 565, 569, 573, 586, 603, 609, 612, 627, 656, 661, 665,
     670, 671, 675, 690, 705, 717, 734, 751, 757, 791, 802, 803, 817, 820, 829, 847, 864, 866, 867, 870, 880],  # 2
    _span(33, 68),                                                                              # 3 reptile
    _span(269, 280) + _span(286, 299) + _span(356, 362) + [387, 388],                           # 4 carnivore
    _span(300, 326),                                                                            # 5 insect
    [401, 402, 420, 432, 486, 494, 513, 541, 546, 558, 566, 577, 579, 593, 594, 641, 642, 683, 684, 687, 699,
     776, 822, 875, 881, 889],                                                                  # 6 instrument
    _span(365, 384),                                                                            # 7 primate
    _span(0, 6) + _span(389, 397),                                                              # 8 fish
)
IN9_COUNTS = (116, 52, 42, 36, 35, 27, 26, 20, 16)   # in9.md's "count" column


def in9_table() -> np.ndarray:
    """int64[1000]: IN-9 class of each ImageNet-1k index, -1 where unmapped (built by a plain loop)."""
    table = [NONE] * 1000
    for cls, indices in enumerate(IN9_INDICES):
        for i in indices:
            assert table[i] == NONE, f"index {i} listed twice"
            table[i] = cls
    return np.array(table, dtype=np.int64)


def table_for(label_map: str, num_outputs: int) -> np.ndarray:
    """Output index -> class (or -1) for a label map named ``in9`` or ``identity``."""
    if label_map == "in9":
        assert num_outputs == 1000
        return in9_table()
    assert label_map == "identity", label_map
    return np.arange(num_outputs, dtype=np.int64)


def group_scores(logits: np.ndarray, table: np.ndarray) -> dict[int, np.float32]:
    """Score per group of one logit row: max logit over the indices of each class; key -1 = the "none" group."""
    scores: dict[int, np.float32] = {}
    for i, v in enumerate(np.asarray(logits, np.float32)):
        g = int(table[i])
        if g not in scores or v > scores[g]:
            scores[g] = v
    return scores


def mapped_prediction(logits: np.ndarray, table: np.ndarray) -> int:
    """Class of the top-1 logit (first index on ties), -1 if that index is unmapped."""
    return int(table[int(np.argmax(np.asarray(logits)))])


def margin(logits: np.ndarray, true: int, table: np.ndarray) -> np.float32:
    """True-class score minus the best score of every other group ("none" included), float32 arithmetic."""
    s = group_scores(logits, table)
    best_other = max(v for g, v in s.items() if g != true)
    return np.float32(s[true] - best_other)


def fooled(criterion: str, pred: int, true: int, bg_label: int) -> bool:
    if criterion == "any":
        return pred != true
    assert criterion == "bg-class", criterion
    return pred == bg_label and bg_label >= 0 and bg_label != true


def composite(fg: np.ndarray, mask: np.ndarray, bg: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1]: the fg pixel where the mask is set, else the bg pixel."""
    x = np.where(mask.astype(bool)[..., None], fg, bg).astype(np.float32) / np.float32(255)
    return torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()


def naive_search(store, clf, criterion: str, early_exit: bool, orders=None) -> list[dict]:
    """One foreground, one background, one forward at a time.

    ``orders``: per foreground, the bg_ids to try in order (default: every background, in store order).
    Each row also holds ``preds``: {bg_id: mapped prediction} of every evaluated pair."""
    fg_all = store.foregrounds.read(slice(None))
    masks = store.foregrounds.read_masks(slice(None))
    fg_labels = np.asarray(store.foregrounds.labels, np.int64)
    bg_all = store.backgrounds.read(slice(None))
    bg_labels = np.asarray(store.backgrounds.labels, np.int64)
    table = table_for(clf.config.label_map, clf.config.num_outputs)
    out = []
    for i in range(len(fg_all)):
        order = range(len(bg_all)) if orders is None else [int(j) for j in orders[i]]
        y = int(fg_labels[i])
        worst_m, worst_bg, worst_pred = np.inf, -1, -1
        first, n_fool, preds = -1, 0, {}
        for j in order:
            with torch.no_grad():
                logits = clf(composite(fg_all[i], masks[i], bg_all[j]))[0].float().numpy()
            pred, m = mapped_prediction(logits, table), margin(logits, y, table)
            preds[j] = pred
            if m < worst_m:
                worst_m, worst_bg, worst_pred = m, j, pred
            if fooled(criterion, pred, y, int(bg_labels[j])):
                n_fool += 1
                if first < 0:
                    first = j
                    if early_exit:
                        break
        out.append({"worst_margin": float(worst_m), "worst_bg": worst_bg, "worst_pred": worst_pred,
                    "first_fooling_bg": first, "n_fooling": n_fool, "n_evaluated": len(preds), "preds": preds})
    return out


# --------------------------------------------------------------------------------------------- intervals
def binom_tail_ge(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed term by term."""
    from math import exp, lgamma, log
    if p <= 0.0 or p >= 1.0:
        return float(p >= 1.0 or k == 0)
    return sum(exp(lgamma(n + 1) - lgamma(i + 1) - lgamma(n - i + 1) + i * log(p) + (n - i) * log(1 - p))
               for i in range(k, n + 1))


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """The exact interval by its definition, found by bisection on the binomial tails (no beta function):
    low = the p with P(X >= k | p) = alpha/2 (0 if k = 0), high = the p with P(X <= k | p) = alpha/2 (1 if k = n)."""
    def solve(f, target: float) -> float:     # f increasing in p on [0, 1]: the p with f(p) = target
        lo, hi = 0.0, 1.0
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
        return (lo + hi) / 2
    low = 0.0 if k == 0 else solve(lambda p: binom_tail_ge(k, n, p), alpha / 2)
    high = 1.0 if k == n else solve(lambda p: binom_tail_ge(k + 1, n, p), 1 - alpha / 2)   # P(X <= k) = alpha/2
    return low, high
