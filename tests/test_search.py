"""The batched search equals a naive one-composite-at-a-time loop, for both criteria and both modes."""
import numpy as np
import pytest
from conftest import make_random_store, make_tiny_classifier
from reference import naive_search

from advbg.data.labels import IN9_CLASSES
from advbg.data.store import Store
from advbg.data.writer import write_store
from advbg.search.config import SearchConfig
from advbg.search.criteria import OUTCOME_MISSING, OUTCOME_NONE
from advbg.search.results import load_outcome, load_search
from advbg.search.runner import search


def make_parity_store(path, seed: int = 3, n_fg: int = 8, n_bg: int = 14, size: int = 32):
    """A random store on which both tiny models cover every clause of both criteria (the seed was chosen for
    that; test_the_parity_store_covers_every_clause checks it)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_fg, size, size), np.uint8)
    for i in range(n_fg):
        y0, x0 = rng.integers(0, size // 2, 2)
        y1, x1 = y0 + rng.integers(4, size // 2), x0 + rng.integers(4, size // 2)
        masks[i, y0:y1, x0:x1] = 1
    fg = rng.integers(0, 256, (n_fg, size, size, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (n_bg, size, size, 3), dtype=np.uint8)
    return write_store(path, class_names=IN9_CLASSES, fg_images=fg, fg_masks=masks, fg_labels=rng.integers(0, 9, n_fg),
                       bg_images=bg, bg_labels=rng.integers(-1, 9, n_bg))


def parity_classifier(label_map: str):
    return make_tiny_classifier(9, "identity") if label_map == "identity" else make_tiny_classifier(1000, "in9", seed=1)


def assert_equals_reference(res, ref, outcome=None):
    for k, r in enumerate(ref):
        for f in ("worst_bg", "worst_pred", "first_fooling_bg", "n_fooling", "n_evaluated"):
            assert getattr(res, f)[k] == r[f], (k, f, getattr(res, f)[k], r[f])
        assert res.worst_margin[k] == pytest.approx(r["worst_margin"], abs=1e-4), k
        assert res.fooled[k] == (r["first_fooling_bg"] >= 0)
        if outcome is not None:     # every evaluated pair holds the reference prediction, the rest 255
            want = np.full(outcome.shape[1], OUTCOME_MISSING)
            for j, p in r["preds"].items():
                want[j] = OUTCOME_NONE if p == -1 else p
            np.testing.assert_array_equal(outcome[k], want, err_msg=f"outcome row {k}")
    assert res.fooling_rate == pytest.approx(100 * np.mean([r["first_fooling_bg"] >= 0 for r in ref]))


@pytest.mark.parametrize("criterion", ["any", "bg-class"])
@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
@pytest.mark.parametrize("label_map", ["identity", "in9"])
def test_search_equals_naive_loop(tmp_path, criterion, mode, label_map):
    path = make_parity_store(tmp_path / "s.h5")
    clf = parity_classifier(label_map)
    with Store(path, "r+") as s:
        # batch 5 and fg_block 3: batches straddle foregrounds and the last unit is partial
        res = search(s, clf, SearchConfig(criterion=criterion, mode=mode, batch_size=5, fg_block=3), progress=False)
        outcome, _, _ = load_outcome(s, res.results_name)
        ref = naive_search(s, clf, criterion, early_exit=(mode == "early-exit"))
    assert len(res) == 8
    assert_equals_reference(res, ref, outcome)


@pytest.mark.parametrize("label_map", ["identity", "in9"])
def test_the_parity_store_covers_every_clause(tmp_path, label_map):
    """Guard against a vacuous parity test: on the parity store each tiny model makes, among its pairs, a correct
    prediction on an own-class background, a bg-class fooling, a prediction that fools only under `any`, and (in9)
    a "none" prediction on an unlabelled background; and no search is all-fooled or never fooled."""
    path = make_parity_store(tmp_path / "s.h5")
    clf = parity_classifier(label_map)
    with Store(path) as s:
        ref = naive_search(s, clf, "any", early_exit=False)
        t = np.asarray(s.foregrounds.labels)[:, None]
        b = np.asarray(s.backgrounds.labels)[None, :]
    p = np.array([[r["preds"][j] for j in range(b.shape[1])] for r in ref])
    assert ((p == t) & (b == t)).any()                              # bg-class: own-class background never fools
    assert ((p == b) & (b >= 0) & (b != t)).any()                   # bg-class fools
    assert ((p != t) & (p != b)).any() and (p == t).any()           # any fools where bg-class does not; correct ones
    if label_map == "in9":
        assert ((p == -1) & (b == -1)).any() and (p >= 0).any()     # "none" on an unlabelled background
    assert (b == -1).any()


def test_the_fixture_store_actually_exercises_fooling(tmp_path):
    """Guard against a vacuous parity test: the tiny model must be fooled on some pairs and not on others."""
    path = make_random_store(tmp_path / "s.h5", n_fg=7, n_bg=11, seed=3)
    with Store(path, "r+") as s:
        res = search(s, make_tiny_classifier(), SearchConfig(batch_size=16), progress=False)
    assert 0 < res.n_fooling.sum() < 7 * 11
    assert len(set(res.worst_bg.tolist())) > 1


def test_results_are_stored_and_read_back(tmp_path, tiny_classifier):
    path = make_random_store(tmp_path / "s.h5")
    with Store(path, "r+") as s:
        res = search(s, tiny_classifier, SearchConfig(batch_size=8), progress=False)
        name = res.results_name
    with Store(path) as s:
        g = s.results[name]
        assert g.attrs["complete"]
        back = load_search(s, name)
        outcome, fg_id, pool = load_outcome(s, name)
    for k in ("worst_bg", "worst_pred", "first_fooling_bg", "n_fooling", "n_evaluated"):
        assert np.array_equal(getattr(back, k), getattr(res, k)), k
    assert np.allclose(back.worst_margin, res.worst_margin)
    assert outcome.shape == (7, 11) and (outcome != OUTCOME_MISSING).all()
    # the outcome matrix holds the prediction on every pair: the worst pair's prediction matches
    preds = np.where(outcome == OUTCOME_NONE, -1, outcome.astype(np.int64))
    assert np.array_equal(preds[np.arange(7), res.worst_bg], res.worst_pred)
    # and the fooled counts follow from it for the 'any' criterion
    assert np.array_equal((preds != res.true_class[:, None]).sum(1), res.n_fooling)


def test_early_exit_leaves_unevaluated_pairs_marked(tmp_path, tiny_classifier):
    path = make_random_store(tmp_path / "s.h5", seed=3)
    with Store(path, "r+") as s:
        res = search(s, tiny_classifier, SearchConfig(mode="early-exit", batch_size=4), progress=False)
        outcome, _, _ = load_outcome(s, res.results_name)
    for k in range(len(res)):
        if res.first_fooling_bg[k] >= 0:
            assert (outcome[k, res.first_fooling_bg[k] + 1:] == OUTCOME_MISSING).all()
    assert res.run.forwards >= res.n_evaluated.sum()


def test_subset_of_foregrounds_and_background_pool(tmp_path, tiny_classifier):
    path = make_random_store(tmp_path / "s.h5", seed=4)
    with Store(path, "r+") as s:
        full = search(s, tiny_classifier, SearchConfig(batch_size=8), write=False, progress=False)
        sub = search(s, tiny_classifier, SearchConfig(batch_size=8, foregrounds=(5, 1), backgrounds=(2, 7, 3)),
                     write=False, progress=False)
        ref = naive_search(s, tiny_classifier, "any", False)
    assert sub.fg_id.tolist() == [5, 1]
    assert set(sub.worst_bg.tolist()) <= {2, 7, 3}
    assert full.worst_bg.tolist() == [r["worst_bg"] for r in ref]


def test_nan_logits_are_counted_invalid_not_fooled(tmp_path):
    clf = make_tiny_classifier()
    clf.model.fc.bias.data[:] = float("nan")
    path = make_random_store(tmp_path / "s.h5")
    with Store(path, "r+") as s:
        res = search(s, clf, SearchConfig(batch_size=8), write=False, progress=False)
    assert not res.fooled.any()
    assert (res.n_invalid == 11).all()
    assert np.isnan(res.worst_margin).all()
