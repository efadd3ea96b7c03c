"""advbg.stats: exact binomial intervals against a definition-by-bisection reference and closed forms, the
paired BG-Gap bootstrap against its coverage on seeded simulations, and the one formatter."""
from __future__ import annotations

import numpy as np
import pytest

from advbg.errors import AdvbgError
from advbg.stats import format_gap, format_rate, paired_gap, rate
from reference import clopper_pearson

CASES = [(6, 11), (5, 11), (0, 11), (11, 11), (0, 1), (1, 1), (1, 2), (3, 40), (37, 40), (1234, 4050), (0, 4050)]


@pytest.mark.parametrize("k, n", CASES)
def test_rate_interval_equals_the_exact_definition(k, n):
    r = rate(k, n)
    low, high = clopper_pearson(k, n)
    assert (r.k, r.n, r.method) == (k, n, "clopper-pearson")
    assert r.rate == pytest.approx(100 * k / n)
    assert r.low == pytest.approx(100 * low, abs=1e-6) and r.high == pytest.approx(100 * high, abs=1e-6)
    assert r.low <= r.rate <= r.high


def test_rate_at_the_edges_has_the_closed_form():
    # k = 0: [0, 1 - (alpha/2)^(1/n)]; k = n: [(alpha/2)^(1/n), 1] (hand-checked: 0/11 -> [0, 28.49])
    n = 11
    assert rate(0, n).low == 0 and rate(0, n).high == pytest.approx(100 * (1 - 0.025 ** (1 / n)))
    assert rate(n, n).high == 100 and rate(n, n).low == pytest.approx(100 * 0.025 ** (1 / n))
    assert rate(0, n).high == pytest.approx(28.49, abs=0.01)


def test_complement_is_the_rate_of_the_other_outcome():
    for k, n in CASES:
        c, direct = rate(k, n).complement(), rate(n - k, n)
        assert (c.k, c.n) == (direct.k, direct.n)
        assert (c.rate, c.low, c.high) == pytest.approx((direct.rate, direct.low, direct.high), abs=1e-9)


@pytest.mark.parametrize("k, n", [(0, 0), (3, 2), (-1, 4), (1.5, 4), (True, 3)])
def test_rate_refuses_what_is_not_a_count(k, n):
    with pytest.raises(AdvbgError):
        rate(k, n)


def test_format_rate_is_the_documented_shape():
    assert format_rate(rate(6, 11)) == "54.5% [23.4, 83.3] (6/11)"
    assert format_rate(None) == "-"


def test_paired_gap_is_the_difference_of_the_means_and_is_seeded():
    rng = np.random.default_rng(3)
    a, b = rng.random(50) < 0.8, rng.random(50) < 0.6
    g = paired_gap(a, b)
    assert g.diff == pytest.approx(100 * (a.mean() - b.mean()))
    assert g.low <= g.diff <= g.high and g.n == 50
    assert paired_gap(a, b) == g                      # same seed, same interval
    assert "[" in format_gap(g) and "(n=50)" in format_gap(g)


def test_paired_gap_pairs_items_rather_than_samples():
    # a and b agree on every item except a few: the paired interval is narrow; shuffling b (breaking the pairs)
    # keeps the difference of the means but must widen the interval.
    rng = np.random.default_rng(5)
    a = rng.random(200) < 0.5
    b = a.copy()
    b[:10] = ~b[:10]
    paired = paired_gap(a, b)
    unpaired = paired_gap(a, rng.permutation(b))
    assert paired.diff == pytest.approx(unpaired.diff)
    assert (paired.high - paired.low) < 0.5 * (unpaired.high - unpaired.low)


def test_paired_gap_of_identical_outcomes_is_a_point():
    a = np.array([1, 0, 1, 1, 0])
    assert (paired_gap(a, a).low, paired_gap(a, a).high) == (0.0, 0.0)


def test_paired_gap_refuses_unpaired_or_empty_inputs():
    with pytest.raises(AdvbgError, match="same items"):
        paired_gap(np.ones(3), np.ones(4))
    with pytest.raises(AdvbgError, match="n = 0"):
        paired_gap(np.ones(0), np.ones(0))


def test_paired_gap_covers_the_true_difference_at_about_the_nominal_rate():
    """Seeded coverage simulation: correlated 0/1 pairs (n = 150) with a known difference of the accuracies.
    The percentile bootstrap is approximate, so the tolerance is stated: coverage within [0.90, 0.99] over 300
    simulations (the binomial sd of the observed coverage alone is 1.3 points)."""
    rng = np.random.default_rng(2024)
    n, sims = 150, 300
    # joint law of (same correct, rand correct): P(1,1)=0.55, P(1,0)=0.25, P(0,1)=0.05, P(0,0)=0.15
    probs = np.array([0.55, 0.25, 0.05, 0.15])
    true_diff = 100 * ((0.55 + 0.25) - (0.55 + 0.05))
    hits = 0
    for _ in range(sims):
        cell = rng.choice(4, size=n, p=probs)
        a, b = np.isin(cell, (0, 1)), np.isin(cell, (0, 2))
        g = paired_gap(a, b, seed=int(rng.integers(1 << 31)), resamples=999)
        hits += g.low <= true_diff <= g.high
    assert 0.90 <= hits / sims <= 0.99, hits / sims


def test_paired_gap_agrees_with_a_plain_bootstrap_of_the_pairs():
    """Reference: resample foreground indices with numpy and take the 2.5/97.5 percentiles of mean(a) - mean(b)."""
    rng = np.random.default_rng(11)
    a, b = rng.random(300) < 0.8, rng.random(300) < 0.7
    idx = rng.integers(0, 300, (20000, 300))
    diffs = 100 * (a[idx].mean(1) - b[idx].mean(1))
    low, high = np.percentile(diffs, [2.5, 97.5])
    g = paired_gap(a, b)
    assert g.low == pytest.approx(low, abs=0.7) and g.high == pytest.approx(high, abs=0.7)
