"""torchrun: two gloo processes share the foregrounds (no padding, no duplicates) and rank 0's merged results
equal a single-process run exactly."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_random_store, make_tiny_classifier

from advbg.data.store import Store
from advbg.search.config import SearchConfig
from advbg.search.distributed import Ranks
from advbg.search.journal import journal_folder
from advbg.search.results import FIELDS, load_outcome, load_search
from advbg.search.runner import search

ENTRY = Path(__file__).with_name("advbg_entry.py")


@pytest.mark.parametrize("n_units", [1, 2, 7, 10])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_unit_exactly_once_and_balance(n_units, world):
    units = [(s, s + 1) for s in range(n_units)]
    parts = [Ranks(rank, world).shard(units) for rank in range(world)]
    flat = [u for p in parts for u in p]
    assert sorted(flat) == units                       # each unit once: no padding, no duplicates
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_torchrun_two_gloo_ranks_equal_one_process(tmp_path):
    # 7 foregrounds in units of 2: 4 units, 7 foregrounds not divisible by the world size of 2
    path = make_random_store(tmp_path / "s.h5", n_fg=7, n_bg=9, seed=31)
    args = ["search", "--store", str(path), "--model", "test/tiny-entry", "--criterion", "bg-class",
            "--results-name", "dist", "--fg-block", "2", "--batch-size", "5", "--grid", "-", "-q",
            "--results-file", str(tmp_path / "r.json")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(ENTRY), *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("fooling rate") == 1         # outputs come from rank 0 only

    with Store(path, "r+") as s:
        got = load_search(s, "dist")
        got_outcome, _, _ = load_outcome(s, "dist")
        run = json.loads(s.results["dist"].attrs["run"])
        want = search(s, make_tiny_classifier(), SearchConfig(criterion="bg-class", fg_block=2, batch_size=5),
                      results_name="single", progress=False)
        want_outcome, _, _ = load_outcome(s, "single")
    assert run["world_size"] == 2
    for k in FIELDS:
        assert np.array_equal(getattr(got, k), getattr(want, k), equal_nan=True), k
    assert np.array_equal(got_outcome, want_outcome)
    assert 0 < want.n_fooling.sum() < 7 * 9            # the comparison is not vacuous
    assert not journal_folder(path, "dist").exists()
    assert json.loads((tmp_path / "r.json").read_text())["n_foregrounds"] == 7
