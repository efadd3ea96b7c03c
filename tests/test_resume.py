"""A search killed at any point (SIGKILL, SIGINT, a torn journal, a crash while merging) and resumed gives exactly
the results of an uninterrupted run, outcome matrix included."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_random_store, make_tiny_classifier

from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.search.config import SearchConfig
from advbg.search.journal import MAGIC, Journal, journal_folder
from advbg.search.results import FIELDS, load_outcome, load_search
from advbg.search.runner import search

ENTRY = Path(__file__).with_name("advbg_entry.py")
NAME = "r"


def cli(store, *extra, sleep=0.0):
    """The real `python -m advbg search` in a subprocess (test model, no grid, quiet)."""
    env = dict(os.environ, ADVBG_TEST_SLEEP=str(sleep), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    args = [sys.executable, str(ENTRY), "search", "--store", str(store), "--model", "test/tiny-entry",
            "--results-name", NAME, "--fg-block", "2", "--batch-size", "8", "--grid", "-", "-q", *extra]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stored(path):
    with Store(path) as s:
        r = load_search(s, NAME)
        outcome, _, _ = load_outcome(s, NAME)
    return {k: getattr(r, k) for k in FIELDS}, outcome


def assert_same(a, b):
    (va, oa), (vb, ob) = a, b
    for k in FIELDS:
        assert np.array_equal(va[k], vb[k], equal_nan=True), k
    assert np.array_equal(oa, ob)


def units_in(store) -> int:
    j = Journal(journal_folder(store, NAME))
    return sum(1 for _ in j.records(("start",))) if j.exists() else 0


def test_killed_at_random_points_then_resumed_matches_uninterrupted(tmp_path):
    """Three interruptions of the real CLI: SIGKILL, SIGINT (clean stop after the unit), SIGKILL; then resume."""
    seed = int(os.environ.get("ADVBG_RESUME_SEED", "20261201"))   # set it to explore other kill points
    rng = np.random.default_rng(seed)
    ref = make_random_store(tmp_path / "ref.h5", n_fg=16, n_bg=12, seed=11)
    _run(ref, batch_size=8)
    want = stored(ref)

    store = make_random_store(tmp_path / "s.h5", n_fg=16, n_bg=12, seed=11)   # 8 units of 2 foregrounds
    seen = []
    for attempt, sig in enumerate((signal.SIGKILL, signal.SIGINT, signal.SIGKILL)):
        p = cli(store, *(["--resume"] if attempt else []), sleep=0.03)
        have = units_in(store)
        # the first kill early enough to leave units for the SIGINT run to stop short of
        lo, hi = (have + 1, 6) if sig == signal.SIGINT else (have, 4 if attempt == 0 else 7)
        target = int(rng.integers(lo, max(lo + 1, hi)))
        deadline = time.time() + 60
        while p.poll() is None and units_in(store) < target and time.time() < deadline:
            time.sleep(0.005)
        if sig == signal.SIGKILL:
            time.sleep(float(rng.uniform(0, 0.1)))    # anywhere in the next unit, its journal write included
        if p.poll() is None:
            p.send_signal(sig)
            code = p.wait(30)
            if sig == signal.SIGINT:
                err = p.stderr.read()
                assert code == 130, err
                assert "stopping after the current unit" in err and "run the same command again" in err
                assert "Traceback" not in err
                assert units_in(store) < 8
                with Store(store) as s:
                    assert NAME not in s.results           # nothing half-written in the store
        seen.append(units_in(store))
    assert seen[0] < 8, f"the first run was not killed part-way (seed {seed})"
    p = cli(store, "--resume")
    assert p.wait(60) == 0, p.stderr.read()
    assert_same(stored(store), want)
    assert not journal_folder(store, NAME).exists()      # merged and removed
    assert seen == sorted(seen), f"committed units were lost (seed {seed})"


def _run(path, batch_size=5, **kw):
    with Store(path, "r+") as s:
        return search(s, make_tiny_classifier(), SearchConfig(fg_block=2, batch_size=batch_size),
                      results_name=NAME, progress=False, **kw)


def test_torn_journal_tail_is_dropped_and_its_unit_redone(tmp_path):
    path = make_random_store(tmp_path / "s.h5", n_fg=9, n_bg=7, seed=13)
    _run(path)
    want = stored(path)

    calls = []

    def stop_after_three(_):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(path, on_unit=stop_after_three, recompute=True)
    rank0 = journal_folder(path, NAME) / "rank-00000.bin"
    data = rank0.read_bytes()
    last = data.rfind(MAGIC)
    rng = np.random.default_rng(0)
    for cut in sorted(rng.integers(last + 1, len(data), 3).tolist(), reverse=True):
        rank0.write_bytes(data[:cut])                    # a crash in the middle of the third record
        assert units_in(path) == 2
    flipped = bytearray(data)
    flipped[last + 40] ^= 0xFF                           # or a corrupt one: its checksum no longer matches
    rank0.write_bytes(bytes(flipped))
    assert units_in(path) == 2
    res = _run(path, recompute=True)     # resumes the interrupted recompute (resuming is the default)
    assert res.run.resumed_units == 2
    assert_same(stored(path), want)


def test_crash_while_merging_keeps_the_old_results_and_is_repaired_by_resume(tmp_path, monkeypatch):
    path = make_random_store(tmp_path / "s.h5", n_fg=7, n_bg=6, seed=14)
    _run(path)
    want = stored(path)

    import advbg.search.results as results

    def crash(self, run):
        raise KeyboardInterrupt                          # after every row is written, before `complete`

    monkeypatch.setattr(results.sink._FileWriter, "finish", crash)
    with pytest.raises(KeyboardInterrupt):
        _run(path, recompute=True)
    monkeypatch.undo()
    assert_same(stored(path), want)                      # the earlier results file stays whole, never half-replaced
    res = _run(path, recompute=True)
    assert res.run.forwards == 0                         # everything came from the journal
    assert_same(stored(path), want)


def test_resume_with_other_settings_is_refused(tmp_path):
    path = make_random_store(tmp_path / "s.h5", n_fg=5, n_bg=4, seed=15)
    with pytest.raises(KeyboardInterrupt):
        _run(path, on_unit=lambda _: (_ for _ in ()).throw(KeyboardInterrupt))
    with Store(path, "r+") as s, pytest.raises(AdvbgError, match="other settings.*--restart discards it"):
        search(s, make_tiny_classifier(), SearchConfig(criterion="bg-class", fg_block=2), results_name=NAME,
               progress=False)
