"""Rates with n and a 95% interval, paired differences of accuracies, and the one way a rate is printed.

Rates (fooling rate, challenge accuracy, accuracy per variant, ASR) get the exact binomial interval of
Clopper and Pearson, from ``scipy.stats.binomtest``. Why this one and not Wilson: advbg's numbers are often read on
small n (the demo store has 11 foregrounds), where Clopper-Pearson is the interval that never covers less than
95% for any true rate; Wilson is shorter but dips below 95% for some rates at small n. Both are defined at
k = 0 and k = n; Clopper-Pearson's bound there is the one-sided 97.5% bound (e.g. 0/11 -> [0, 28.5]).

BG-Gap, a difference of two accuracies over the same images (mixed_same vs mixed_rand of the same foregrounds),
gets a paired percentile bootstrap (``scipy.stats.bootstrap`` over the items' differences a - b, which is what
resampling the pairs does) with a fixed seed, so the same inputs give the same interval.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from advbg.errors import AdvbgError

CONFIDENCE = 0.95
RATE_METHOD = "clopper-pearson"
GAP_METHOD = "paired-bootstrap-percentile"
GAP_RESAMPLES = 9999
GAP_SEED = 0
# Said once in each table header or figure legend that prints rates with format_rate / format_gap.
RATE_LEGEND = "rates: % [95% Clopper-Pearson interval] (k/n)"
GAP_LEGEND = "BG-Gap: points [95% paired bootstrap interval] (n pairs)"


@dataclass(frozen=True)
class Rate:
    """k successes out of n, as a percentage with its 95% interval (low, high, in %)."""

    k: int
    n: int
    rate: float
    low: float
    high: float
    method: str = RATE_METHOD

    def to_dict(self) -> dict:
        return asdict(self)

    def complement(self) -> "Rate":
        """The rate of the other outcome (n - k of n): challenge accuracy from a fooling rate."""
        return Rate(self.n - self.k, self.n, 100.0 - self.rate, 100.0 - self.high, 100.0 - self.low, self.method)


def rate(k: int, n: int) -> Rate:
    """k of n as a Rate with its exact (Clopper-Pearson) 95% interval; n = 0 is refused."""
    k, n = _count(k, "k"), _count(n, "n")
    if n == 0:
        raise AdvbgError("a rate needs at least one item (n = 0)")
    if k > n:
        raise AdvbgError(f"a rate needs k <= n (got {k}/{n})")
    from scipy.stats import binomtest  # deferred: scipy is heavy, loaded only when a rate is computed

    ci = binomtest(k, n).proportion_ci(CONFIDENCE, method="exact")
    return Rate(k, n, 100.0 * k / n, 100.0 * float(ci.low), 100.0 * float(ci.high))


def rate_or_none(k: int, n: int) -> Rate | None:
    """``rate(k, n)``, or None where n = 0 (an empty class or variant)."""
    return rate(k, n) if n else None


def _count(v, what: str) -> int:
    if isinstance(v, bool) or int(v) != v or v < 0:
        raise AdvbgError(f"{what} must be a non-negative integer count (got {v!r})")
    return int(v)


@dataclass(frozen=True)
class Gap:
    """A paired difference of two accuracies in points (a - b over the same n items) with its 95% interval."""

    diff: float
    low: float
    high: float
    n: int
    method: str = GAP_METHOD
    seed: int = GAP_SEED
    resamples: int = GAP_RESAMPLES

    def to_dict(self) -> dict:
        return asdict(self)


def paired_gap(a: np.ndarray, b: np.ndarray, *, seed: int = GAP_SEED, resamples: int = GAP_RESAMPLES) -> Gap:
    """mean(a) - mean(b) in points for 0/1 outcomes of the same n items (a[i], b[i] of item i), with a seeded
    paired percentile bootstrap 95% interval."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise AdvbgError(f"a paired difference needs the same items on both sides ({a.size} vs {b.size})")
    if a.size == 0:
        raise AdvbgError("a paired difference needs at least one item (n = 0)")
    diff = 100.0 * float(a.mean() - b.mean())
    d = a - b
    if np.all(d == d[0]):          # every resample gives the same difference: the interval is that point
        return Gap(diff, diff, diff, int(a.size), seed=seed, resamples=resamples)
    from scipy.stats import bootstrap  # deferred: scipy is heavy, loaded only when a gap is computed

    # Resampling items with both outcomes (a paired bootstrap) is resampling their differences d = a - b: one
    # small-integer sample, in batches, keeps 4,050 pairs x 9,999 resamples at well under a second and 200 MB.
    res = bootstrap((d.astype(np.int8),), lambda x, axis: x.mean(axis), vectorized=True, batch=500,
                    n_resamples=resamples, confidence_level=CONFIDENCE, method="percentile",
                    rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return Gap(diff, 100.0 * float(ci.low), 100.0 * float(ci.high), int(a.size), seed=seed, resamples=resamples)


def format_rate(r: Rate | None, digits: int = 1) -> str:
    """``54.5% [23.4, 83.3] (6/11)``; '-' for no rate."""
    if r is None:
        return "-"
    return f"{r.rate:.{digits}f}% [{r.low:.{digits}f}, {r.high:.{digits}f}] ({r.k}/{r.n})"


def format_gap(g: Gap | None, digits: int = 1) -> str:
    """``9.1 [-9.1, 27.3] (n=11)`` in points; '-' for no gap."""
    if g is None:
        return "-"
    return f"{g.diff:.{digits}f} [{g.low:.{digits}f}, {g.high:.{digits}f}] (n={g.n})"


def format_interval(value: float, low: float, high: float, n: int | None = None, digits: int = 1,
                    unit: str = "") -> str:
    """Any estimate with its interval, e.g. a bootstrap mean: ``0.62 [0.55, 0.70] (n=40)``."""
    vals = [value, low, high]
    if any(v is None or not math.isfinite(v) for v in vals):
        return "-"
    text = f"{value:.{digits}f}{unit} [{low:.{digits}f}, {high:.{digits}f}]"
    return text + (f" (n={n})" if n is not None else "")


def rate_from_dict(d: dict) -> Rate:
    """A Rate from its ``to_dict`` form (as stored in JSON), unchecked."""
    return Rate(int(d["k"]), int(d["n"]), float(d["rate"]), float(d["low"]), float(d["high"]),
                str(d.get("method", RATE_METHOD)))
