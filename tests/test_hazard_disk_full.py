"""Hazard: a full disk (ENOSPC) or a read-only one (EROFS) under every store writer. Each gives one line naming
the file and "no space left on device" / "read-only file system", leaves nothing half-written and no lock, and
the store keeps working once there is room again.

The conditions are injected (the write that would fail raises OSError with that errno), so what is checked is
advbg's handling of the error, not how a given file system reports it.
"""
from __future__ import annotations

import errno
import os
import pathlib
from pathlib import Path

import advbg_entry  # noqa: F401  (registers test/tiny-entry)
import h5py
import numpy as np
import pytest
from conftest import assert_one_line_error as one_line_error
from conftest import make_random_store
from conftest import run_cli as run

from advbg.data.store import Store
from advbg.data.verify import verify_store
from advbg.data.writer import write_store
from advbg.errors import StoreError
from advbg.search.journal import journal_folder
from advbg.search.results import load_search

NAME = "tinynet.seed0.any.exhaustive"
WORDS = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system"}


def failing(code: int):
    """A stand-in for a write that fails with ``code``."""

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return make_random_store(tmp_path / "s.h5", n_fg=5, n_bg=4, seed=31)


def search_args(store, *extra):
    return ["search", "--store", str(store), "--model", "test/tiny-entry", "--grid", "-", "-q", "--fg-block", "2",
            *extra]


def files_under(folder: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_clean(store: pathlib.Path) -> None:
    """No lock, no temporary file of any writer, and the store verifies."""
    folder = store.parent
    assert not (folder / "s.h5.lock").exists()
    assert not [f for f in files_under(folder) if f.endswith((".partial", ".tmp")) or "/." in f or f.startswith(".")]
    assert verify_store(store).ok


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_results_file_that_cannot_be_written_is_one_line_and_the_search_resumes_later(store, monkeypatch, capsys,
                                                                                      code):
    monkeypatch.setattr(h5py.Group, "create_dataset", failing(code))   # the first dataset of the results file
    rc, _, err = run(search_args(store), capsys)
    one_line_error(rc, err, rf"cannot write .*s\.h5\.d/results/{NAME}\.h5: {WORDS[code]}")
    monkeypatch.undo()
    assert not (store.parent / "s.h5.d").exists()                      # nothing half-written, not even a folder
    assert_clean(store)
    assert (journal_folder(store, NAME) / "run.json").exists()         # every unit kept
    rc, _, err = run(search_args(store, "--resume"), capsys)
    assert rc == 0, err
    with Store(store) as s:
        assert load_search(s, NAME).run.forwards == 0                  # all from the journal: no work lost


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_embeddings_that_cannot_be_written_are_one_line_and_leave_nothing(store, monkeypatch, capsys, code):
    monkeypatch.setattr(h5py.Group, "create_dataset", failing(code))
    rc, _, err = run(["index", "--store", str(store), "--model", "test/tiny-entry", "-q"], capsys)
    one_line_error(rc, err, rf"cannot write .*s\.h5\.d/embeddings/.*\.h5: {WORDS[code]}")
    monkeypatch.undo()
    assert not (store.parent / "s.h5.d").exists() and not list(store.parent.glob("*.faiss*"))
    assert_clean(store)
    rc, _, err = run(["index", "--store", str(store), "--model", "test/tiny-entry", "-q"], capsys)
    assert rc == 0, err


def test_faiss_index_file_on_a_full_disk_is_one_line_and_leaves_no_partial(store, monkeypatch, capsys):
    import faiss

    def full(index, path):
        with open(path, "wb") as f:                 # as faiss does: some bytes, then the failed write
            f.write(b"\0" * 10)
        raise RuntimeError(f"Error in faiss::FileIOWriter: fwrite({path}) failed: No space left on device")

    monkeypatch.setattr(faiss, "write_index", full)
    rc, _, err = run(["index", "--store", str(store), "--model", "test/tiny-entry", "-q"], capsys)
    one_line_error(rc, err, r"cannot write .*s\.[a-z0-9.]*\.bg\.faiss: no space left on device")
    assert not list(store.parent.glob("*.faiss*")) and not list(store.parent.glob(".*.partial"))
    assert_clean(store)


@pytest.mark.parametrize("nth", [1, 2])     # the journal's meta.npz, then the first unit's record
def test_journal_on_a_full_disk_is_one_line_and_keeps_the_store(store, monkeypatch, capsys, nth):
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) >= nth:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rc, _, err = run(search_args(store), capsys)
    one_line_error(rc, err, rf"cannot write .*\.journal/{'meta.npz' if nth == 1 else 'rank-00000.bin'}: no space left")
    monkeypatch.undo()
    assert journal_folder(store, NAME).exists() == (nth == 2)        # a journal without meta is removed
    assert not (store.parent / "s.h5.d").exists()
    assert_clean(store)
    rc, _, err = run(search_args(store, "--resume"), capsys)
    assert rc == 0, err


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_lock_that_cannot_be_written_is_one_line_and_never_left_behind(store, monkeypatch, capsys, code):
    real = pathlib.Path.write_text

    def write_text(self, *args, **kwargs):
        if ".lock" in self.name:
            open(self, "w").close()          # the file is created; its content cannot be written
            raise OSError(code, os.strerror(code))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    with pytest.raises(StoreError, match=rf"cannot write .*s\.h5\.lock: {WORDS[code]}"):
        Store(store, "r+")
    rc, _, err = run(search_args(store), capsys)
    one_line_error(rc, err, rf"cannot write .*s\.h5\.lock: {WORDS[code]}")
    rc, _, err = run(search_args(store, "--no-write"), capsys)     # reading needs no lock
    assert rc == 0, err
    monkeypatch.undo()
    assert_clean(store)
    with Store(store, "r+"):                                          # not refused afterwards ("pid ?")
        pass


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
@pytest.mark.parametrize("where", ["create", "append"])
def test_new_store_on_a_full_or_read_only_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, code, where):
    rng = np.random.default_rng(5)
    if where == "create":
        real_init = h5py.File.__init__

        def init(self, name, mode="r", *args, **kwargs):
            if mode == "w":
                raise OSError(code, os.strerror(code))
            return real_init(self, name, mode, *args, **kwargs)

        monkeypatch.setattr(h5py.File, "__init__", init)
    else:
        calls, real_resize = [], h5py.Dataset.resize

        def resize(self, *args, **kwargs):
            calls.append(1)
            if len(calls) > 7:
                raise OSError(code, os.strerror(code))
            return real_resize(self, *args, **kwargs)

        monkeypatch.setattr(h5py.Dataset, "resize", resize)
    with pytest.raises(StoreError, match=rf"cannot write .*s\.h5\.partial: {WORDS[code]}"):
        write_store(tmp_path / "s.h5", class_names=["a", "b"], fg_images=rng.integers(0, 256, (3, 8, 8, 3), np.uint8),
                    fg_masks=np.ones((3, 8, 8)), fg_labels=[0, 1, 0], bg_images=np.zeros((2, 8, 8, 3), np.uint8),
                    bg_labels=[0, 1])
    assert files_under(tmp_path) == []                                # no store, no .partial, no lock


def test_any_other_output_on_a_full_disk_is_one_line_naming_it(store, monkeypatch, capsys):
    real = Path.write_bytes

    def write_bytes(self, data):       # the JSON summary's temporary file meets a full disk
        if self.name.startswith(".summary.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    out = store.parent / "summary.json"
    rc, _, err = run(search_args(store, "--results-file", str(out)), capsys)
    one_line_error(rc, err, rf"cannot write {out}: no space left on device")   # names the output (#24 item 9)
    assert not out.exists() and not list(store.parent.glob(".summary.json*"))


def test_new_store_stops_cleanly_while_the_disk_still_has_room_for_hdf5(tmp_path, monkeypatch):
    import shutil

    from advbg.data import writer as writer_module

    real = shutil.disk_usage
    monkeypatch.setattr(writer_module.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=writer_module.DISK_HEADROOM + 100))  # < one item
    rng = np.random.default_rng(6)
    with pytest.raises(StoreError, match=r"cannot write .*s\.h5\.partial: no space left on device"):
        write_store(tmp_path / "s.h5", class_names=["a"], fg_images=rng.integers(0, 256, (5, 8, 8, 3), np.uint8),
                    fg_masks=np.ones((5, 8, 8)), fg_labels=[0] * 5, bg_images=np.zeros((1, 8, 8, 3), np.uint8),
                    bg_labels=[0])
    assert files_under(tmp_path) == []
