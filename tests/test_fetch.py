"""fetch: SHA-256 check, safe unpacking (nothing may land outside DEST), fast offline failure. Nothing downloads."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from pathlib import Path

import pytest
from fixtures_data import run_cli

from advbg.data import fetch as fetch
from advbg.errors import AdvbgError


def _tar(path: Path, members: list[tuple[str, str, bytes | str]]) -> Path:
    """members: (kind, name, data-or-link target) with kind file | dir | symlink | hardlink."""
    with tarfile.open(path, "w:gz") as tf:
        for kind, name, data in members:
            ti = tarfile.TarInfo(name)
            if kind == "file":
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                ti.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}[kind]
                if kind != "dir":
                    ti.linkname = data
                tf.addfile(ti)
    return path


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _release_tar(path: Path) -> Path:
    return _tar(path, [("dir", "bg_challenge", b""),
                       ("file", "bg_challenge/original/val/00_dog/n1_1.JPEG", b"jpeg bytes"),
                       ("file", "bg_challenge/fg_mask/val/00_dog/n1_1.npy", b"npy bytes")])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("members, why", [
    ([("file", "../evil", b"x")], "'..' in path"),
    ([("file", "ok/../../evil", b"x")], "'..' in path"),
    ([("file", "/tmp/advbg_abs_evil", b"x")], "absolute path"),
    ([("symlink", "link", "../../outside")], "link pointing outside"),
    ([("symlink", "link", "/etc/passwd")], "link to absolute path"),
    ([("hardlink", "hl", "../outside")], "link pointing outside"),
])
def test_unpack_refuses_members_escaping_dest(tmp_path, members, why):
    box = tmp_path / "box"
    dest = box / "dest"
    dest.mkdir(parents=True)
    arc = _tar(tmp_path / "a.tar.gz", [("file", "fine.txt", b"ok")] + members)
    with pytest.raises(AdvbgError, match="refusing to unpack") as e:
        fetch.safe_unpack(arc, dest, progress=False)
    assert why in str(e.value)
    assert _tree(box) == {"dest"}  # nothing written, inside or outside
    assert not Path("/tmp/advbg_abs_evil").exists()


def test_unpack_refuses_file_written_through_symlink_to_outside(tmp_path):
    dest = tmp_path / "dest"
    arc = _tar(tmp_path / "a.tar.gz", [("symlink", "d", ".."), ("file", "d/evil", b"x")])
    with pytest.raises(AdvbgError, match="refusing"):
        fetch.safe_unpack(arc, dest, progress=False)
    assert not (tmp_path / "evil").exists()


def test_unpack_writes_safe_archive_and_leaves_no_temp(tmp_path):
    dest = tmp_path / "dest"
    arc = _tar(tmp_path / "a.tar.gz", [("file", "top/a.txt", b"A"), ("symlink", "top/ln", "a.txt")])
    assert fetch.safe_unpack(arc, dest, progress=False) == ["top"]
    assert (dest / "top" / "a.txt").read_bytes() == b"A"
    assert (dest / "top" / "ln").read_bytes() == b"A"
    assert sorted(os.listdir(dest)) == ["top"]


def test_fetch_with_archive_verifies_then_unpacks(tmp_path):
    arc = _release_tar(tmp_path / "rel.tar.gz")
    root = fetch.fetch_in9(tmp_path / "d", archive=arc, sha256=_sha(arc), progress=False)
    assert root == tmp_path / "d" / "bg_challenge"
    assert (root / "original" / "val" / "00_dog" / "n1_1.JPEG").read_bytes() == b"jpeg bytes"


def test_fetch_checksum_mismatch_fails_loudly_and_unpacks_nothing(tmp_path):
    arc = _release_tar(tmp_path / "rel.tar.gz")
    with pytest.raises(AdvbgError, match="SHA-256 mismatch .* expected 2d66f571"):
        fetch.fetch_in9(tmp_path / "d", archive=arc, progress=False)
    assert not (tmp_path / "d" / "bg_challenge").exists()


def test_fetch_offline_fails_at_once_with_archive_hint(tmp_path):
    t = time.perf_counter()
    with pytest.raises(AdvbgError, match="--archive"):
        fetch.fetch_in9(tmp_path / "d", url="http://127.0.0.1:9/none.tar.gz", timeout=2, progress=False)
    assert time.perf_counter() - t < 5
    assert not any((tmp_path / "d").glob("*.partial"))


def test_cli_fetch_offline_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fetch, "IN9_URL", "http://127.0.0.1:9/backgrounds_challenge_data.tar.gz")
    assert run_cli(["fetch", "in9", "--dest", str(tmp_path / "d"), "--timeout", "2", "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "place it here by hand" in err and "--archive" in err


def test_cli_fetch_archive_with_sha256_override(tmp_path, capsys):
    arc = _release_tar(tmp_path / "rel.tar.gz")
    assert run_cli(["fetch", "in9", "--dest", str(tmp_path / "d"), "--archive", str(arc), "--sha256", _sha(arc),
                    "-q"]) == 0
    assert "IN-9 release ready" in capsys.readouterr().out


def test_cli_fetch_rejects_malformed_sha256(tmp_path, capsys):
    arc = _release_tar(tmp_path / "rel.tar.gz")
    assert run_cli(["fetch", "in9", "--dest", str(tmp_path / "d"), "--archive", str(arc), "--sha256", "abc", "-q"]) == 1
    assert "64 hex digits" in capsys.readouterr().err
