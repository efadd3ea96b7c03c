"""Pruned search: candidate rules checked against plain loops, and K = pool size equals the exhaustive search."""
import numpy as np
import pytest
from conftest import make_random_store, make_tiny_classifier
from reference import naive_search
from test_search import assert_equals_reference

from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.search.config import SearchConfig
from advbg.search.index import build_index, load_embeddings
from advbg.search.results import load_search
from advbg.search.runner import search
from advbg.search.strategies import (
    pruned_search,
    PruneSpec,
    predicted_margin,
    prune_spec,
    prune_summary,
    lowest_k,
)

FIELDS = ("fg_id", "true_class", "worst_bg", "worst_margin", "worst_pred", "first_fooling_bg", "n_fooling",
          "n_evaluated", "n_invalid")


@pytest.fixture
def indexed(tmp_path):
    """(store path, classifier): a 9-fg x 13-bg random store with the tiny classifier's embeddings."""
    path = make_random_store(tmp_path / "s.h5", n_fg=9, n_bg=13, seed=4)
    clf = make_tiny_classifier()
    with Store(path, "r+") as s:
        build_index(s, clf, progress=False)
    return path, clf


def naive_predicted_margin(fs, true, area, bs, bl, criterion):
    out = np.full((len(fs), len(bs)), np.inf)
    for i in range(len(fs)):
        t, a = true[i], area[i]
        for j in range(len(bs)):
            comps = [c for c in range(bs.shape[1]) if c != t] if criterion == "any" else (
                [bl[j]] if bl[j] >= 0 and bl[j] != t else [])
            for c in comps:
                out[i, j] = min(out[i, j], a * (fs[i, t] - fs[i, c]) + (1 - a) * (bs[j, t] - bs[j, c]))
    return out


@pytest.mark.parametrize("criterion", ["any", "bg-class"])
def test_predicted_margin_equals_a_plain_loop(criterion):
    rng = np.random.default_rng(0)
    fs, bs = rng.standard_normal((6, 10)).astype(np.float32), rng.standard_normal((8, 10)).astype(np.float32)
    true, area = rng.integers(0, 9, 6), rng.random(6).astype(np.float32)
    bl = rng.integers(-1, 9, 8)
    got = predicted_margin(fs, true, area, bs, bl, criterion)
    np.testing.assert_allclose(got, naive_predicted_margin(fs, true, area, bs, bl, criterion), rtol=1e-5, atol=1e-5)


def test_lowest_k_is_lowest_first_with_ties_to_the_earlier_position():
    v = np.array([[3.0, 1.0, 2.0, 1.0, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert [r.tolist() for r in lowest_k(v, 3)] == [[4, 1, 3], [0, 1, 2]]
    assert [r.tolist() for r in lowest_k(v, 9)] == [[4, 1, 3, 2, 0], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("rule,criterion", [("mix", "any"), ("score", "any"), ("random", "any"),
                                            ("neighbours", "any"), ("mix", "bg-class"), ("neighbours", "bg-class")])
def test_pruned_search_with_k_equal_to_the_pool_is_the_exhaustive_search(indexed, rule, criterion):
    path, clf = indexed
    cfg = SearchConfig(criterion=criterion, batch_size=7, fg_block=4, record_outcomes=False)
    with Store(path) as s:
        full = search(s, clf, cfg, write=False, progress=False)
        pruned = pruned_search(s, clf, cfg, PruneSpec(rule, k=13), write=False, progress=False)
        ref = naive_search(s, clf, criterion, early_exit=False)
    assert_equals_reference(pruned, ref)
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(pruned, f), getattr(full, f), err_msg=f)
    assert pruned.run.forwards == full.run.forwards == 9 * 13
    assert pruned.run.pruning == f"{rule}-k13"


@pytest.mark.parametrize("rule", ["mix", "score", "random", "neighbours"])
def test_pruned_search_evaluates_k_backgrounds_per_foreground(indexed, rule):
    path, clf = indexed
    cfg = SearchConfig(batch_size=16, record_outcomes=False)
    with Store(path) as s:
        full = search(s, clf, cfg, write=False, progress=False)
        pruned = pruned_search(s, clf, cfg, PruneSpec(rule, ratio=0.3), write=False, progress=False)
    assert (pruned.n_evaluated == 3).all() and pruned.run.forwards == 9 * 3        # floor(0.3 * 13)
    assert (pruned.worst_margin >= full.worst_margin).all()                         # a subset never finds worse
    assert not (pruned.fooled & ~full.fooled).any()
    assert prune_summary(pruned, 13)["composites_skipped"] == 9 * 13 - 9 * 3


def test_mix_candidates_are_the_rules_top_k(indexed):
    path, clf = indexed
    with Store(path, "r+") as s:
        emb = load_embeddings(s, clf)
        pruned = pruned_search(s, clf, SearchConfig(record_outcomes=True), PruneSpec("mix", k=3), progress=False)
        from advbg.search.results import load_outcome

        outcome, fg_id, _ = load_outcome(s, pruned.results_name)
        pred = predicted_margin(emb.fg_scores, s.foregrounds.labels, emb.fg_area, emb.bg_scores,
                                s.backgrounds.labels)
    evaluated = [set(np.flatnonzero(row != 255)) for row in outcome]
    assert evaluated == [set(r.tolist()) for r in lowest_k(pred, 3)]


def test_two_stage_result_is_written_and_loads_back(indexed):
    path, clf = indexed
    with Store(path, "r+") as s:
        res = pruned_search(s, clf, SearchConfig(), PruneSpec("neighbours", k=4), progress=False)
        back = load_search(s, res.results_name)
    assert res.results_name == "tinynet.seed0.any.pruned-neighbours-k4"
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(back, f), getattr(res, f), err_msg=f)
    assert back.run.forwards == 9 * 4 and back.run.pruning == "neighbours-k4"


@pytest.mark.parametrize("rule", ["mix", "neighbours"])
def test_early_exit_with_every_candidate_finds_the_same_fooled_foregrounds(indexed, rule):
    path, clf = indexed
    cfg = SearchConfig(mode="early-exit", batch_size=5, record_outcomes=False)
    with Store(path) as s:
        full = search(s, clf, cfg, write=False, progress=False)
        pruned = pruned_search(s, clf, cfg, PruneSpec(rule, k=13), write=False, progress=False)
        ref = naive_search(s, clf, "any", early_exit=True)
    np.testing.assert_array_equal(pruned.fooled, full.fooled)
    np.testing.assert_array_equal(pruned.fooled, [r["first_fooling_bg"] >= 0 for r in ref])
    assert (pruned.n_evaluated <= 13).all()


def test_prune_without_embeddings_says_to_run_index(random_store, tiny_classifier):
    with Store(random_store) as s:
        with pytest.raises(AdvbgError, match="no embeddings for model.*Run `advbg index"):
            pruned_search(s, tiny_classifier, SearchConfig(), PruneSpec(k=2), write=False, progress=False)


def test_prune_options_are_validated():
    assert prune_spec(None, None) is None
    assert PruneSpec(ratio=0.1).resolve_k(4050) == 405 and PruneSpec(k=10**6).resolve_k(30) == 30
    assert PruneSpec(ratio=0.01).resolve_k(20) == 1 and PruneSpec(ratio=0.29).resolve_k(100) == 29
    for kw, msg in [(dict(k=3, ratio=0.5), "exactly one"), (dict(k=0), "at least 1"),
                    (dict(ratio=0.0), r"in \(0, 1\]"), (dict(ratio=1.5), r"in \(0, 1\]"),
                    (dict(k=3, rule="magic"), "unknown prune rule 'magic'")]:
        with pytest.raises(AdvbgError, match=msg):
            prune_spec(kw.get("k"), kw.get("ratio"), kw.get("rule", "mix"))


def test_two_stage_rule_neither_reuses_nor_replaces_its_results_without_recompute(indexed):
    """Its stages are not stored, so it cannot resume or reuse: a second run refuses to replace the first's file."""
    path, clf = indexed
    with Store(path, "r+") as s:
        first = pruned_search(s, clf, SearchConfig(), PruneSpec("neighbours", k=2), progress=False)
        with pytest.raises(AdvbgError, match="neighbours rule cannot reuse or resume.*--recompute"):
            pruned_search(s, clf, SearchConfig(), PruneSpec("neighbours", k=2), progress=False)
        again = pruned_search(s, clf, SearchConfig(), PruneSpec("neighbours", k=2), recompute=True, progress=False)
    assert np.array_equal(first.worst_bg, again.worst_bg)
