"""files: the one atomic-output implementation (temporary name, commit, recovery after a kill) and the staged
unpack of fetch that commits through it."""
from __future__ import annotations

import io
import os
import tarfile

import pytest

from advbg.data.fetch import safe_unpack
from advbg.errors import AdvbgError
from advbg.files import (atomic_output, commit_partial, is_partial, leftover_partials, partial_path,
                         restore_replaced)


def test_partial_path_is_a_hidden_sibling(tmp_path):
    assert partial_path(tmp_path / "r.h5") == tmp_path / ".r.h5.partial"
    assert is_partial(partial_path(tmp_path / "r.h5")) and not is_partial(tmp_path / "r.h5")


def test_an_error_inside_leaves_the_older_output_and_no_temporary(tmp_path):
    out = tmp_path / "o.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(out) as tmp:
            tmp.write_text("new, half")
            raise RuntimeError("boom")
    assert out.read_text() == "old" and os.listdir(tmp_path) == ["o.txt"]


def test_a_folder_output_replaces_the_older_folder_whole(tmp_path):
    out = tmp_path / "d"
    (out / "stale").mkdir(parents=True)
    with atomic_output(out, folder=True) as tmp:
        (tmp / "new.txt").write_text("x")
    assert sorted(os.listdir(out)) == ["new.txt"] and os.listdir(tmp_path) == ["d"]


def test_a_folder_a_kill_left_aside_is_restored_before_the_next_write(tmp_path):
    out = tmp_path / "d"
    old = tmp_path / ".d.old"                     # a kill between the two renames of a folder output leaves this
    old.mkdir()
    (old / "kept.txt").write_text("k")
    assert restore_replaced(out) and (out / "kept.txt").read_text() == "k" and not old.exists()
    assert not restore_replaced(out)              # nothing aside any more
    os.replace(out, old)                          # killed again; this time the next write itself restores it
    with pytest.raises(RuntimeError):             # ... and fails: the older output is back all the same
        with atomic_output(out, folder=True):
            raise RuntimeError("fail")
    assert sorted(os.listdir(out)) == ["kept.txt"] and not old.exists()


def test_restore_never_replaces_an_output_that_is_there(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / ".d.old").mkdir()
    assert not restore_replaced(tmp_path / "d") and (tmp_path / ".d.old").exists()


def test_commit_partial_moves_a_finished_temporary_into_place(tmp_path):
    out = tmp_path / "s.h5"
    partial_path(out).write_bytes(b"data")
    assert leftover_partials(tmp_path) == [partial_path(out)]
    commit_partial(out)
    assert out.read_bytes() == b"data" and leftover_partials(tmp_path) == []
    with pytest.raises(AdvbgError, match="nothing was written"):
        commit_partial(tmp_path / "never.h5")


def _tar(path, members: list[tuple[str, bytes | None, str | None]], cut: int | None = None):
    """A .tar of (name, file bytes or None for a hard link, link target); ``cut``: keep only that many bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.LNKTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    path.write_bytes(raw if cut is None else raw[:cut])
    return path


def test_unpack_stages_under_the_temporary_and_keeps_hard_links(tmp_path):
    arc = _tar(tmp_path / "a.tar", [("top/a.txt", b"A" * 10, None), ("top/b.txt", None, "top/a.txt"),
                                    ("one.txt", b"1", None)])
    dest = tmp_path / "d"
    assert safe_unpack(arc, dest, progress=False) == ["one.txt", "top"]
    assert sorted(os.listdir(dest)) == ["one.txt", "top"]
    assert (dest / "top" / "b.txt").read_bytes() == b"A" * 10 and (dest / "one.txt").read_bytes() == b"1"
    assert os.stat(dest / "top" / "b.txt").st_ino == os.stat(dest / "top" / "a.txt").st_ino   # a link, not a copy


def test_an_unpack_failing_half_way_leaves_neither_the_output_nor_its_temporary(tmp_path, monkeypatch):
    arc = _tar(tmp_path / "a.tar", [("top/a.bin", b"a", None), ("top/b.bin", b"b", None)])
    real, calls = tarfile.TarFile.extract, []

    def extract(self, member, *args, **kwargs):   # the archive turns out damaged at its second member
        calls.append(member.name)
        if len(calls) == 2:
            raise tarfile.ReadError("unexpected end of data")
        return real(self, member, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extract", extract)
    dest = tmp_path / "d"
    with pytest.raises(AdvbgError, match="unpacking .* failed"):
        safe_unpack(arc, dest, progress=False)
    assert len(calls) == 2 and os.listdir(dest) == []
