"""The batched search equals a naive one-composite-at-a-time loop, for both criteria and both modes."""
import numpy as np
import pytest
import torch
from conftest import make_random_store, make_tiny_classifier

from advbg.data.store import Store
from advbg.search.config import SearchConfig
from advbg.search.criteria import Criterion
from advbg.search.criteria import OUTCOME_MISSING, OUTCOME_NONE
from advbg.search.results import load_outcome, load_search
from advbg.search.runner import search


def naive_search(store: Store, clf, criterion: str, early_exit: bool, orders=None):
    """The obvious reference: one foreground, one background, one forward at a time.

    ``orders``: per foreground, the bg_ids to try in order (default: every background, in store order)."""
    crit = Criterion(criterion)
    out = []
    for i in range(len(store.foregrounds)):
        order = range(len(store.backgrounds)) if orders is None else [int(j) for j in orders[i]]
        fg = store.foregrounds.read([i])[0].astype(np.float32) / 255
        m = store.foregrounds.read_masks([i])[0][..., None].astype(np.float32)
        y = int(store.foregrounds.labels[i])
        worst = (np.inf, -1, -1)
        first, n_fool, n_eval = -1, 0, 0
        for j in order:
            bg = store.backgrounds.read([j])[0].astype(np.float32) / 255
            x = torch.from_numpy(m * fg + (1 - m) * bg).permute(2, 0, 1)[None].contiguous()
            with torch.no_grad():
                logits = clf(x)
            pred = int(clf.label_map.predict(logits)[0])
            margin = float(clf.label_map.margin(logits, torch.tensor([y]))[0])
            fooled = bool(crit.fooled(torch.tensor([pred]), torch.tensor([y]),
                                      torch.tensor([int(store.backgrounds.labels[j])]))[0])
            n_eval += 1
            if margin < worst[0]:
                worst = (margin, j, pred)
            if fooled:
                n_fool += 1
                if first < 0:
                    first = j
                    if early_exit:
                        break
        out.append(dict(worst_margin=worst[0], worst_bg=worst[1], worst_pred=worst[2], first_fooling_bg=first,
                        n_fooling=n_fool, n_evaluated=n_eval))
    return out


@pytest.mark.parametrize("criterion", ["any", "bg-class"])
@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
@pytest.mark.parametrize("label_map", ["identity", "in9"])
def test_search_equals_naive_loop(tmp_path, criterion, mode, label_map):
    path = make_random_store(tmp_path / "s.h5", n_fg=7, n_bg=11, seed=3)
    clf = make_tiny_classifier(9, "identity") if label_map == "identity" else make_tiny_classifier(1000, "in9", seed=1)
    with Store(path, "r+") as s:
        # batch 5 and fg_block 3: batches straddle foregrounds and the last unit is partial
        res = search(s, clf, SearchConfig(criterion=criterion, mode=mode, batch_size=5, fg_block=3), progress=False)
        ref = naive_search(s, clf, criterion, early_exit=(mode == "early-exit"))
    assert len(res) == 7
    for k, r in enumerate(ref):
        assert res.worst_bg[k] == r["worst_bg"]
        assert res.worst_pred[k] == r["worst_pred"]
        assert res.worst_margin[k] == pytest.approx(r["worst_margin"], abs=1e-4)
        assert res.first_fooling_bg[k] == r["first_fooling_bg"]
        assert res.n_fooling[k] == r["n_fooling"]
        assert res.n_evaluated[k] == r["n_evaluated"]
        assert res.fooled[k] == (r["first_fooling_bg"] >= 0)
    assert res.fooling_rate == pytest.approx(100 * np.mean([r["first_fooling_bg"] >= 0 for r in ref]))


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
