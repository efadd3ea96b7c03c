"""`advbg universal` reports every ASR and each class's total fooled as k/n with its 95% interval (#21 item 1):
the counts equal a plain loop over the outcome matrix and the bounds the plain Clopper-Pearson definition."""
import json

import numpy as np
import pytest
import reference
from test_universal import BG, FG, NAMES, OUT

from advbg.analysis.universal import UniversalResult, analyse
from advbg.search.criteria import OUTCOME_MISSING, OUTCOME_NONE


def _naive(outcome, fg, bg, b, criterion):
    """(k, n) of background b: its targets (other-class foregrounds) and how many it fools, one pair at a time."""
    k = n = 0
    for f in range(len(fg)):
        if fg[f] < 0 or bg[b] < 0 or fg[f] == bg[b]:
            continue
        n += 1
        o = int(outcome[f, b])
        pred = -1 if o == OUTCOME_NONE else o
        k += (pred == bg[b]) if criterion == "bg-class" else (pred != fg[f])
    return k, n


def _random_matrix(seed):
    rng = np.random.default_rng(seed)
    fg, bg = rng.integers(-1, 4, 13), rng.integers(-1, 4, 9)
    out = rng.integers(0, 4, (13, 9)).astype(np.uint8)
    out[rng.random((13, 9)) < 0.1] = OUTCOME_NONE
    out[fg < 0] = OUTCOME_MISSING
    return out, fg, bg


@pytest.mark.parametrize("criterion", ["bg-class", "any"])
@pytest.mark.parametrize("case", ["hand", 1, 2, 3])
def test_asr_and_union_rates_equal_a_plain_count_and_clopper_pearson(criterion, case):
    out, fg, bg = (OUT, FG, BG) if case == "hand" else _random_matrix(case)
    names = NAMES if case == "hand" else ("a", "b", "c", "d")
    for c in analyse(out, fg, bg, names, criterion, top=3):
        for b in c.bg_id:
            k, n = _naive(out, fg, bg, int(b), criterion)
            r = c.asr_rate(int(b))
            if n == 0:
                assert r is None
                continue
            lo, hi = reference.clopper_pearson(k, n)
            assert (r.k, r.n) == (k, n)
            assert r.low == pytest.approx(100 * lo, abs=1e-6) and r.high == pytest.approx(100 * hi, abs=1e-6)
        targets = [f for f in range(len(fg)) if fg[f] >= 0 and fg[f] != c.class_id]
        if c.n_backgrounds and targets:
            fooled = sum(any(_naive(out[[f]], fg[[f]], bg, int(b), criterion)[0] for b in c.bg_id) for f in targets)
            assert (c.union_rate.k, c.union_rate.n) == (fooled, len(targets))
            assert c.union_rate.rate == pytest.approx(c.union)


def test_universal_text_json_and_csv_carry_the_intervals():
    classes = analyse(OUT, FG, BG, NAMES, "bg-class", top=2, greedy=1)
    res = UniversalResult("bg-class", tuple(classes), "m", "identity", "s.h5", (), 0, top=2, greedy=1)
    d = json.loads(json.dumps(res.summary()))
    c0 = d["classes"][0]
    assert c0["union_rate"]["k"] == classes[0].union_rate.k and c0["top_rates"][0]["n"] == classes[0].n_targets
    assert "Clopper-Pearson" in d["rate_legend"]
    header, first = res.csv().splitlines()[:2]
    cells = dict(zip(header.split(","), first.split(",")))
    lo, _ = reference.clopper_pearson(classes[0].union_rate.k, classes[0].union_rate.n)
    assert float(cells["total_fooled_low"]) == pytest.approx(100 * lo, abs=1e-3)
    assert int(cells["top1_asr_k"]) == classes[0].top_rates[0].k
    from advbg.analysis.universal import format_class, format_table

    assert f"({classes[0].union_rate.k}/{classes[0].union_rate.n})" in format_table(res)
    r = classes[0].top_rates[0]
    assert f"({r.k}/{r.n})" in format_class(classes[0])
