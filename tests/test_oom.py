"""Out of memory (simulated on CPU) halves the batch and retries; the results do not change. The memory budget
decides whether the background pool is resident or streamed, never the results."""
import numpy as np
import pytest
import torch
from conftest import make_random_store, make_tiny_classifier

import advbg.search.pool as pool_mod
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.models.classifier import Classifier
from advbg.search.config import SearchConfig
from advbg.search.engine import auto_batch_size
from advbg.search.results import FIELDS
from advbg.search.runner import search


class OomAbove(torch.nn.Module):
    """Wraps a model; raises CUDA's out-of-memory error for batches larger than ``limit``, like a full GPU."""

    def __init__(self, model, limit):
        super().__init__()
        self.model, self.limit, self.sizes = model, limit, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} composites")
        return self.model(x)


def oom_classifier(limit):
    clf = make_tiny_classifier()
    return Classifier(OomAbove(clf.model, limit), clf.config, clf.label_map), clf


def same(a, b):
    """Equal outcomes. Margins to float rounding only: a CPU forward of a composite can differ in the last bit
    with the other composites of its batch, and these runs batch differently on purpose."""
    for k in FIELDS:
        if k == "worst_margin":
            assert np.allclose(a.worst_margin, b.worst_margin, rtol=1e-6, atol=1e-5, equal_nan=True)
        else:
            assert np.array_equal(getattr(a, k), getattr(b, k)), k


@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
def test_oom_at_a_large_batch_retries_smaller_with_identical_results(tmp_path, mode):
    path = make_random_store(tmp_path / "s.h5", n_fg=9, n_bg=13, seed=21)
    oom, plain = oom_classifier(limit=12)
    messages = []
    with Store(path, "r+") as s:
        got = search(s, oom, SearchConfig(mode=mode, batch_size=64, fg_block=4), progress=False,
                     echo=messages.append)
        want = search(s, plain, SearchConfig(mode=mode, batch_size=8, fg_block=4), write=False, progress=False)
    same(got, want)
    assert got.run.batch_size == 8                           # 64 -> 32 -> 16 -> 8, and it stays there
    assert oom.model.sizes[:4] == [4 * 13, 32, 16, 8]       # the first unit's 52 pairs, then halving
    assert max(oom.model.sizes[4:]) <= 8
    assert sum("out of memory" in m for m in messages) == 3


def test_oom_even_at_one_composite_is_a_clear_error(tmp_path):
    path = make_random_store(tmp_path / "s.h5", n_fg=3, n_bg=4)
    oom, _ = oom_classifier(limit=0)
    with Store(path, "r+") as s, pytest.raises(AdvbgError, match="out of memory even at one composite"):
        search(s, oom, SearchConfig(batch_size=4), progress=False, echo=lambda m: None)


def test_pool_that_fails_to_fit_falls_back_to_streaming(tmp_path, monkeypatch):
    path = make_random_store(tmp_path / "s.h5", n_fg=6, n_bg=9, seed=22)
    clf = make_tiny_classifier()
    with Store(path, "r+") as s:
        want = search(s, clf, SearchConfig(batch_size=7), write=False, progress=False)

        def no_room(self):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

        monkeypatch.setattr(pool_mod.BackgroundPool, "_load_all", no_room)
        seen = []
        real = pool_mod.BackgroundPool.blocks

        def spy(self):
            seen.append(self.resident)
            yield from real(self)

        monkeypatch.setattr(pool_mod.BackgroundPool, "blocks", spy)
        got = search(s, clf, SearchConfig(batch_size=7, memory_gb=1e-4), write=False, progress=False)
    assert seen and not any(seen)
    same(got, want)


@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
def test_streamed_pool_in_small_blocks_equals_resident_pool(tmp_path, mode):
    path = make_random_store(tmp_path / "s.h5", n_fg=8, n_bg=15, seed=23)
    clf = make_tiny_classifier()
    item = 32 * 32 * 3
    with Store(path, "r+") as s:
        resident = search(s, clf, SearchConfig(mode=mode, batch_size=6, fg_block=3), write=False, progress=False)
        # a budget of 8 backgrounds: too small for the 15 of the pool, streamed one background per block
        streamed = search(s, clf, SearchConfig(mode=mode, batch_size=6, fg_block=3, memory_gb=8 * item / 2**30),
                          write=False, progress=False)
    same(streamed, resident)


def test_auto_batch_size_fills_the_available_memory_within_bounds():
    mb = 2**20
    assert auto_batch_size(per_sample_bytes=10 * mb, available_bytes=10_000 * mb) == 592   # 60% of 1000, /16
    assert auto_batch_size(10 * mb, 100 * mb) == 16                                        # never below 16
    assert auto_batch_size(1, 10**12) == 1024                                              # capped
    assert auto_batch_size(10 * mb, 10_000 * mb) % 16 == 0
