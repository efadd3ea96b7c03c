"""Engine properties beyond parity with the naive loop: early exit keeps batches full, pruned candidate lists in
any order follow the naive loop, and --verify-close makes low-precision decisions those of fp32."""
import numpy as np
import pytest
import torch
from conftest import make_random_store, make_tiny_classifier
from reference import naive_search
from test_search import assert_equals_reference, make_parity_store, parity_classifier

from advbg.data.store import Store
from advbg.models.classifier import Classifier
from advbg.search.config import SearchConfig
from advbg.search.results import FIELDS
from advbg.search.runner import search


class Sizes(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.model(x)


def test_early_exit_batches_stay_full_until_a_unit_runs_out_of_pairs(tmp_path):
    path = make_random_store(tmp_path / "s.h5", n_fg=20, n_bg=24, seed=45)
    clf = make_tiny_classifier()
    spy = Sizes(clf.model)
    wrapped = Classifier(spy, clf.config, clf.label_map)
    with Store(path, "r+") as s:
        res = search(s, wrapped, SearchConfig(mode="early-exit", criterion="bg-class", batch_size=16, fg_block=5),
                     write=False, progress=False)
    units = 4
    partial = sum(n < 16 for n in spy.sizes)
    assert partial <= units, spy.sizes                  # only a unit's last batch may be short
    assert res.run.forwards == sum(spy.sizes)
    assert res.n_evaluated.sum() <= res.run.forwards
    assert res.fooled.any() and not res.fooled.all()    # foregrounds stop at different times


@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("criterion,label_map", [("any", "identity"), ("bg-class", "in9")])
def test_pruned_candidate_lists_in_any_order_equal_the_naive_loop(tmp_path, mode, streamed, criterion, label_map):
    path = make_parity_store(tmp_path / "s.h5")
    clf = parity_classifier(label_map)
    rng = np.random.default_rng(7)
    cands = [rng.permutation(14)[: rng.integers(1, 15)] for _ in range(8)]  # lengths 1..14, shuffled
    mem = 3 * 32 * 32 * 3 / 2**30 if streamed else None                    # 14 backgrounds, blocks of < 1
    cfg = SearchConfig(criterion=criterion, mode=mode, batch_size=4, fg_block=4, prune="test", memory_gb=mem,
                       candidates=lambda ids: [cands[int(i)] for i in ids])
    with Store(path, "r+") as s:
        res = search(s, clf, cfg, write=False, progress=False)
        ref = naive_search(s, clf, criterion, mode == "early-exit", orders=cands)
    assert_equals_reference(res, ref)


@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
def test_verify_close_gives_fp32_decisions_from_a_bf16_run(tmp_path, mode):
    path = make_random_store(tmp_path / "s.h5", n_fg=8, n_bg=12, seed=43)
    clf = make_tiny_classifier()
    with Store(path, "r+") as s:
        fp32 = search(s, clf, SearchConfig(mode=mode, amp="off", batch_size=8), write=False, progress=False)
        # a tolerance above every |margin|: every decision is re-checked in fp32
        big = float(np.nanmax(np.abs(fp32.worst_margin))) * 10 + 100
        ver = search(s, clf, SearchConfig(mode=mode, amp="bf16", batch_size=8, verify_close=big), write=False,
                     progress=False)
    assert ver.run.verified >= ver.n_evaluated.sum()
    for k in FIELDS:
        if k == "worst_margin":
            assert np.allclose(ver.worst_margin, fp32.worst_margin, rtol=1e-5, atol=1e-4)
        else:
            assert np.array_equal(getattr(ver, k), getattr(fp32, k)), k


def test_water_fill_equals_round_robin_dealing():
    from advbg.search.engine import _water_fill

    rng = np.random.default_rng(0)
    for _ in range(300):
        avail = rng.integers(1, 30, rng.integers(1, 12))
        size = int(rng.integers(1, 120))
        take = np.zeros_like(avail)
        while take.sum() < size and (take < avail).any():   # deal one slot per foreground per round
            for a in range(len(avail)):
                if take[a] < avail[a] and take.sum() < size:
                    take[a] += 1
        assert np.array_equal(_water_fill(avail, size), take)
