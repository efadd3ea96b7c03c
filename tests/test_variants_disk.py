"""`advbg variants` on a full or read-only disk: one line naming the output, nothing half-written."""
from __future__ import annotations

import errno
import shutil
from collections import namedtuple

import pytest
from conftest import assert_one_line_error, make_random_store, run_cli


@pytest.mark.parametrize("fmt", ["v.h5", "vfolder"])
def test_variants_stop_cleanly_when_the_disk_is_full(tmp_path, monkeypatch, capsys, fmt):
    store = make_random_store(tmp_path / "s.h5", n_fg=6, n_bg=4)
    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")
    # the output folder reports 1 KiB free (the store's own folder is the same here: only the writer asks)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(real(p).total, real(p).total, 1024))
    out = tmp_path / fmt
    code, _, err = run_cli(["variants", "--store", str(store), "--out", str(out), "--variants", "only_fg", "-q"],
                           capsys)
    assert_one_line_error(code, err, "no space left")
    assert not out.exists() and not list(tmp_path.glob(f".{fmt}.partial*"))


def test_variants_h5_on_a_read_only_folder_is_one_line(tmp_path, monkeypatch, capsys):
    import h5py

    store = make_random_store(tmp_path / "s.h5", n_fg=4, n_bg=3)

    real = h5py.File

    def refuse(name, mode="r", *a, **k):   # the store opens for reading as usual; creating the output fails
        if mode == "w":
            raise OSError(errno.EROFS, "Read-only file system", str(name))
        return real(name, mode, *a, **k)
    monkeypatch.setattr(h5py, "File", refuse)
    code, _, err = run_cli(["variants", "--store", str(store), "--out", str(tmp_path / "v.h5"), "--variants",
                            "only_fg", "-q"], capsys)
    assert_one_line_error(code, err, "read-only")
    assert not list(tmp_path.glob("v.h5*"))
