"""Hazard: several processes on one store. One writer at a time (lock file, clear message naming the holder);
readers share the store with that writer, which never writes the store file (its results go to new files renamed
into place); a store replaced by a new write is swapped in atomically, so a reader that already had it open keeps
a consistent snapshot."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from contextlib import contextmanager

import numpy as np
import pytest
from conftest import assert_one_line_error as one_line_error
from conftest import make_random_store
from conftest import run_cli as run

from advbg.data.store import Store
from advbg.data.verify import verify_store
from advbg.data.writer import StoreWriter, write_store
from advbg.errors import StoreError

HOLDER = textwrap.dedent("""
    import sys
    from advbg.data.store import Store
    with Store(sys.argv[1], sys.argv[2]) as s:
        print("ready", flush=True)
        sys.stdin.read()          # hold the store open until the test closes our stdin
""")


@contextmanager
def held(path, mode):
    """Another process holding ``path`` open in ``mode`` ('r' or 'r+') until the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line == "ready", proc.stderr.read()
        yield proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=20)


@pytest.fixture
def store(tmp_path):
    return make_random_store(tmp_path / "s.h5")


def test_second_writer_is_refused_and_readers_share_while_a_writer_holds_the_store(store, tmp_path, capsys):
    with held(store, "r+") as pid:
        with pytest.raises(StoreError, match=rf"being written by another process \(pid {pid}\)"):
            Store(store, "r+")
        with pytest.raises(StoreError, match=rf"being written by another process \(pid {pid}\)"):
            StoreWriter(store, class_names=["a"], image_size=(8, 8), overwrite=True)
        code, _, err = run(["search", "--store", str(store), "--model", "nonexistent/model", "--grid", "-", "-q"],
                           capsys)
        one_line_error(code, err, rf"being written by another process \(pid {pid}\)")
        with Store(store) as s:                       # the writer never writes the store file: reading is safe
            assert len(s.foregrounds) == 7
        code, out, err = run(["verify", str(store), "-q"], capsys)
        assert code == 0, err
    assert not (tmp_path / "s.h5.lock").exists()  # the holder released it; the refused ones never took it
    assert verify_store(store).ok


def test_a_writer_may_start_while_another_process_reads(store, tmp_path):
    with held(store, "r"):
        with Store(store, "r+") as w, Store(store) as r:
            assert len(w.foregrounds) == len(r.foregrounds) == 7
            assert (tmp_path / "s.h5.lock").read_text() == str(os.getpid())
    assert not (tmp_path / "s.h5.lock").exists()


def test_an_empty_lock_left_by_an_older_advbg_blocks_nobody(store, tmp_path):
    (tmp_path / "s.h5.lock").write_text("")       # what a kill between create and write used to leave
    with Store(store, "r+"):
        assert (tmp_path / "s.h5.lock").read_text() == str(os.getpid())
    assert not (tmp_path / "s.h5.lock").exists()


def test_stale_lock_of_a_dead_process_blocks_nobody(store, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "s.h5.lock").write_text(str(dead.pid))
    with Store(store) as s:
        assert len(s.backgrounds) == 11
    with Store(store, "r+"):
        assert (tmp_path / "s.h5.lock").read_text() != str(dead.pid)
    assert not (tmp_path / "s.h5.lock").exists()


def test_reader_of_a_store_being_replaced_keeps_a_consistent_snapshot(store):
    reader = Store(store)
    old = reader.foregrounds.read(slice(None)).copy()
    rng = np.random.default_rng(9)
    write_store(store, class_names=["x"], fg_images=rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8),
                fg_masks=np.ones((3, 16, 16)), fg_labels=[0, 0, 0], bg_images=np.zeros((1, 16, 16, 3), np.uint8),
                bg_labels=[0], overwrite=True)
    try:
        assert np.array_equal(reader.foregrounds.read(slice(None)), old)  # still the old, complete file
        assert len(reader.backgrounds) == 11 and len(reader.class_names) == 9
    finally:
        reader.close()
    with Store(store) as s:  # new readers see the new store, complete
        assert len(s.foregrounds) == 3 and s.class_names == ("x",)
