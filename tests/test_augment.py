"""advbg.train.augment: exact composites, backgrounds drawn per policy, seeded sequences, DataLoader workers."""
from __future__ import annotations

import numpy as np
import pytest
import reference
import torch
from torch.utils.data import DataLoader

from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.train.augment import (
    CompositeDataset,
    PairSampler,
    Policy,
    fooling_power,
    probe_rows,
)


@pytest.fixture
def store(tmp_path):
    from conftest import make_random_store

    return make_random_store(tmp_path / "store.h5", n_fg=9, n_bg=13, size=16, seed=2)


def _u8(x: torch.Tensor) -> np.ndarray:
    return np.rint(x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def test_composites_keep_the_stored_foreground_under_the_mask_and_the_drawn_background_elsewhere(store):
    ds = CompositeDataset(store)
    with Store(store) as s:
        fg, masks, bgs = s.foregrounds.read(slice(None)), s.foregrounds.read_masks(slice(None)), \
            s.backgrounds.read(slice(None))
        labels = s.foregrounds.labels
    for i in range(len(ds)):
        for j in range(len(bgs)):
            x, y = ds[(i, j)]
            assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == labels[i]
            img, m = _u8(x), masks[i].astype(bool)
            assert np.array_equal(img[m], fg[i][m])
            assert np.array_equal(img[~m], bgs[j][~m])
        x, _ = ds[(i, -1)]
        assert np.array_equal(_u8(x), fg[i])            # -1: the photo as stored
        assert np.array_equal(_u8(ds[i][0]), fg[i])     # a plain index means the same


def test_backgrounds_can_come_from_another_store(store, tmp_path):
    from conftest import make_random_store

    other = make_random_store(tmp_path / "other.h5", n_fg=2, n_bg=4, size=16, seed=9)
    ds = CompositeDataset(store, backgrounds=other)
    with Store(store) as s, Store(other) as o:
        m = s.foregrounds.read_masks([3])[0].astype(bool)
        want = o.backgrounds.read([2])[0]
    assert np.array_equal(_u8(ds[(3, 2)][0])[~m], want[~m])
    assert len(ds.bg_labels) == 4


def _epoch(sampler: PairSampler, epoch: int = 0) -> list[tuple[int, int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_each_epoch_visits_every_foreground_once():
    s = PairSampler(np.arange(20) % 4, np.arange(7), Policy("mixed-rand"))
    for e in range(3):
        assert sorted(r for r, _ in _epoch(s, e)) == list(range(20))


def test_original_policy_never_composites_and_mixed_rand_draws_uniformly():
    labels = np.arange(400) % 4
    assert all(b == -1 for _, b in _epoch(PairSampler(labels, np.arange(5), Policy("original"))))
    assert all(b == -1 for _, b in _epoch(PairSampler(labels, [], Policy("original"))))   # no pool needed
    pool = np.array([3, 5, 8, 13, 21])
    draws = [b for e in range(10) for _, b in _epoch(PairSampler(labels, pool, Policy("mixed-rand"), seed=1), e)]
    counts = np.array([draws.count(b) for b in pool])
    assert set(draws) == set(pool.tolist())
    assert abs(counts / counts.sum() - 0.2).max() < 0.03          # 4,000 draws: 3 sigma is about 0.019


def test_ratio_sets_the_share_of_composited_samples():
    draws = [b for e in range(5) for _, b in _epoch(PairSampler(np.zeros(400, int), np.arange(6),
                                                                Policy("mixed-rand", ratio=0.3)), e)]
    assert abs(np.mean(np.array(draws) >= 0) - 0.3) < 0.04


def test_adversarial_draws_follow_the_weights_per_foreground_class():
    labels = np.arange(300) % 3
    s = PairSampler(labels, np.arange(10, 16), Policy("adversarial", floor=0.0), n_classes=3)
    w = np.zeros((3, 6))
    w[0, 1], w[1, 4], w[2, [0, 5]] = 1.0, 2.0, (1.0, 3.0)
    s.set_weights(w)
    pairs = _epoch(s)
    got = {c: [b for r, b in pairs if labels[r] == c] for c in range(3)}
    assert set(got[0]) == {11} and set(got[1]) == {14} and set(got[2]) == {10, 15}
    assert 0.6 < np.mean(np.array(got[2]) == 15) < 0.9           # 3:1 weights
    s2 = PairSampler(labels, np.arange(6), Policy("adversarial", floor=0.5), n_classes=3)
    s2.set_weights(np.eye(6)[0])                                  # one background per class row
    np.testing.assert_allclose(s2.probabilities()[0], [0.5 + 0.5 / 6] + [0.5 / 6] * 5)


def test_a_seeded_sampler_repeats_its_sequence_and_other_seeds_or_epochs_differ():
    labels = np.arange(50) % 5
    a = _epoch(PairSampler(labels, np.arange(9), Policy("mixed-rand", ratio=0.7), seed=3))
    b = _epoch(PairSampler(labels, np.arange(9), Policy("mixed-rand", ratio=0.7), seed=3))
    assert a == b
    assert a != _epoch(PairSampler(labels, np.arange(9), Policy("mixed-rand", ratio=0.7), seed=4))
    assert a != _epoch(PairSampler(labels, np.arange(9), Policy("mixed-rand", ratio=0.7), seed=3), epoch=1)


def test_dataloader_with_two_workers_gives_the_same_batches_as_one_process(store):
    ds = CompositeDataset(store)
    ds[(0, 0)]                                     # the parent opens its handles first: workers must reopen
    sampler = PairSampler(ds.labels, np.arange(len(ds.bg_labels)), Policy("mixed-rand", ratio=0.8), seed=5)

    def run(workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers))

    single, multi = run(0), run(2)
    assert len(single) == len(multi) == 3
    for (xa, ya), (xb, yb) in zip(single, multi):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    ds.close()


def test_fooling_power_is_the_mean_off_class_probability_of_each_composite(store, tiny_classifier):
    with Store(store) as s:
        fg = torch.from_numpy(s.foregrounds.read(slice(0, 5)))
        mask = torch.from_numpy(s.foregrounds.read_masks(slice(0, 5)))
        bg = torch.from_numpy(s.backgrounds.read(slice(None)))
    labels = torch.tensor([0, 2, 2, 1, 0])
    got = fooling_power(tiny_classifier, fg, mask, labels, bg, n_classes=4, batch_size=5)
    naive = np.zeros((5, len(bg)))
    for i in range(5):
        for j in range(len(bg)):
            x = reference.composite(fg[i].numpy(), mask[i].numpy(), bg[j].numpy())
            with torch.no_grad():
                naive[i, j] = 1 - tiny_classifier(x).softmax(1)[0, labels[i]].item()
    np.testing.assert_allclose(got[0], naive[[0, 4]].mean(0), atol=1e-5)
    np.testing.assert_allclose(got[2], naive[[1, 2]].mean(0), atol=1e-5)
    np.testing.assert_allclose(got[3], naive.mean(0), atol=1e-5)      # no probe of class 3: the mean of all


def test_probe_rows_takes_up_to_n_per_class():
    labels = np.array([0, 0, 0, 1, 2, 2])
    rows = probe_rows(labels, 2, np.random.default_rng(0))
    assert np.bincount(labels[rows]).tolist() == [2, 1, 2]


@pytest.mark.parametrize("kw, match", [(dict(name="random"), "unknown policy"), (dict(ratio=1.5), "ratio"),
                                       (dict(floor=-0.1), "floor")])
def test_bad_policies_are_refused(kw, match):
    with pytest.raises(AdvbgError, match=match):
        Policy(**kw).validate()


def test_bad_weights_are_refused():
    s = PairSampler(np.zeros(4, int), np.arange(3), Policy("adversarial"), n_classes=1)
    with pytest.raises(AdvbgError, match="non-negative"):
        s.set_weights(np.array([1.0, -1.0, 0.0]))
