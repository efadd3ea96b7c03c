"""Engine properties beyond parity with the naive loop: early exit keeps batches full, pruned candidate lists in
any order follow the naive loop, ties go to the earliest trial position, and --verify-close makes low-precision
decisions those of fp32."""
import dataclasses

import numpy as np
import pytest
import reference
import torch
from conftest import make_random_store, make_tiny_classifier
from reference import naive_search
from test_search import assert_equals_reference, make_parity_store, parity_classifier

from advbg.data.labels import IN9_CLASSES
from advbg.data.store import Store
from advbg.data.writer import write_store
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


class IntNet(torch.nn.Module):
    """Integer-valued logits (coarse block sums of the 0-255 pixels times small integer weights): exact in any
    batch and summation order, so equal margins stay equal wherever they are computed and the tie rules decide."""

    def __init__(self, num_outputs: int = 9, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randint(-2, 3, (num_outputs, 48), generator=g).float())

    def forward(self, x):
        pixels = torch.round(x * 255)                                          # the stored uint8 values, exactly
        blocks = torch.nn.functional.avg_pool2d(pixels, 8) * 64                 # (N, 3, 4, 4) sums of 64 pixels
        return torch.floor(blocks / 4096).flatten(1) @ self.w.T                 # values 0..3, integer logits


def int_classifier() -> Classifier:
    tiny = make_tiny_classifier()
    cfg = dataclasses.replace(tiny.config, architecture="intnet", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return Classifier(IntNet(), cfg, tiny.label_map)


def make_tied_store(path, n_fg: int = 8, n_unique_bg: int = 5, size: int = 32, seed: int = 5):
    """Backgrounds come twice (bg j + n_unique_bg copies bg j, with its own label): every margin has a twin.
    Images are flat 8x8 blocks of random colours, so IntNet's features vary (and its top logits often tie)."""
    rng = np.random.default_rng(seed)

    def blocky(n):
        return rng.integers(0, 256, (n, size // 8, size // 8, 3), dtype=np.uint8).repeat(8, 1).repeat(8, 2)

    masks = np.zeros((n_fg, size, size), np.uint8)
    for i in range(n_fg):
        y0, x0 = rng.integers(0, size // 2, 2)
        masks[i, y0:y0 + size // 2, x0:x0 + size // 2] = 1
    bg = blocky(n_unique_bg)
    return write_store(path, class_names=IN9_CLASSES, fg_images=blocky(n_fg), fg_masks=masks,
                       fg_labels=rng.integers(0, 9, n_fg), bg_images=np.concatenate([bg, bg]),
                       bg_labels=rng.integers(-1, 9, 2 * n_unique_bg))


def test_the_tied_store_has_ties_between_top_logits(tmp_path):
    """Guard against a vacuous tie test: some composites have two equal top logits (the first index must win)."""
    clf = int_classifier()
    with Store(make_tied_store(tmp_path / "s.h5")) as s:
        fg, m, bg = s.foregrounds.read(slice(None)), s.foregrounds.read_masks(slice(None)), s.backgrounds.read(slice(None))
    with torch.no_grad():
        tops = [int((lo == lo.max()).sum()) for i in range(8) for j in range(10)
                for lo in clf(reference.composite(fg[i], m[i], bg[j]))]
    assert 0 < sum(t > 1 for t in tops) < 80


@pytest.mark.parametrize("criterion", ["any", "bg-class"])
@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
@pytest.mark.parametrize("shuffled", [False, True])
def test_ties_go_to_the_earliest_trial_position(tmp_path, criterion, mode, shuffled):
    """Worst background: the lowest margin, ties to the earliest position in the trial order (store order, or a
    candidate list); predictions: equal top logits go to the first index. Checked against the naive loop."""
    path = make_tied_store(tmp_path / "s.h5")
    clf = int_classifier()
    rng = np.random.default_rng(11)
    cands = [rng.permutation(10) for _ in range(8)] if shuffled else None
    cfg = SearchConfig(criterion=criterion, mode=mode, batch_size=3, fg_block=3)
    if shuffled:
        cfg = dataclasses.replace(cfg, prune="test", candidates=lambda ids: [cands[int(i)] for i in ids])
    with Store(path, "r+") as s:
        res = search(s, clf, cfg, write=False, progress=False)
        ref = naive_search(s, clf, criterion, mode == "early-exit", orders=cands)
    assert_equals_reference(res, ref)
    if mode == "exhaustive":   # not vacuous: every worst background has a tied twin; shuffled, some twin with the
        assert any(r["worst_bg"] >= 5 for r in ref) == shuffled     # higher bg_id comes first and wins the tie


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
