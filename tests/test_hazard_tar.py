"""Hazard: tar archives with traversal or link tricks. `advbg.data.fetch.safe_unpack` refuses them and writes nothing,
inside or outside DEST; the outside world is compared byte for byte before and after."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from advbg.data.fetch import safe_unpack
from advbg.errors import AdvbgError


def make_tar(path: Path, members: list[tuple]) -> Path:
    """members: (kind, name[, data or link target]); kind file | dir | symlink | hardlink | fifo | chardev."""
    types = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
             "fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE}
    with tarfile.open(path, "w:gz") as tf:
        for kind, name, *rest in members:
            ti = tarfile.TarInfo(name)
            if kind == "file":
                ti.size = len(rest[0])
                tf.addfile(ti, io.BytesIO(rest[0]))
                continue
            ti.type = types[kind]
            if kind in ("symlink", "hardlink"):
                ti.linkname = rest[0]
            tf.addfile(ti)
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root (links not followed) with its type and content hash or link target."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def world(tmp_path):
    """tmp/outside/secret (must never change), tmp/dest (empty), tmp/arc (archives)."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"keep me")
    (tmp_path / "dest").mkdir()
    (tmp_path / "arc").mkdir()
    return tmp_path


CASES = {
    "dotdot": [("file", "../outside/evil", b"x")],
    "dotdot-deep": [("file", "top/a/../../../outside/evil", b"x")],
    "absolute": [("file", "{root}/outside/evil", b"x")],
    "symlink-out-then-write-through": [("symlink", "top", "../outside"), ("file", "top/evil", b"x")],
    "symlink-absolute": [("symlink", "top", "{root}/outside")],
    "symlink-chain": [("symlink", "a", "."), ("symlink", "b", "a/a/a/../../../outside/secret")],
    "hardlink-out-then-overwrite": [("hardlink", "top", "../outside/secret"), ("file", "top", b"pwned")],
    "hardlink-absolute": [("hardlink", "top", "{root}/outside/secret"), ("file", "top", b"pwned")],
    "dir-replaced-by-link": [("dir", "top"), ("symlink", "top", "../outside"), ("file", "top/evil", b"x")],
    "fifo": [("fifo", "top/pipe")],
    "char-device": [("chardev", "top/null")],
}


@pytest.mark.parametrize("case", list(CASES))
def test_tricky_archive_is_refused_and_writes_nothing_anywhere(world, case):
    members = [tuple(m.replace("{root}", str(world)) if isinstance(m, str) else m for m in mem)
               for mem in [("file", "top/fine.txt", b"fine")] + CASES[case]]
    arc = make_tar(world / "arc" / "a.tar.gz", members)
    before = snapshot(world)
    with pytest.raises(AdvbgError, match="refusing to unpack|failed"):
        safe_unpack(arc, world / "dest", progress=False)
    assert snapshot(world) == before  # outside untouched, dest still empty (no temp folder left either)
    assert (world / "outside" / "secret").read_bytes() == b"keep me"


def test_existing_link_in_dest_pointing_outside_is_not_followed(world):
    os.symlink(world / "outside", world / "dest" / "top")  # left there by someone else
    arc = make_tar(world / "arc" / "a.tar.gz", [("file", "top/evil", b"x")])
    before = snapshot(world)
    with pytest.raises(AdvbgError, match="refusing to unpack|already exists"):
        safe_unpack(arc, world / "dest", progress=False)
    assert snapshot(world) == before


def test_truncated_archive_leaves_nothing_behind(world):
    arc = make_tar(world / "arc" / "a.tar.gz", [("file", f"top/f{i}", os.urandom(4096)) for i in range(20)])
    arc.write_bytes(arc.read_bytes()[:30_000])
    before = snapshot(world)
    with pytest.raises(AdvbgError, match="not a readable tar archive|truncated|failed"):
        safe_unpack(arc, world / "dest", progress=False)
    assert snapshot(world) == before


def test_safe_archive_with_an_internal_link_is_unpacked(world):
    arc = make_tar(world / "arc" / "a.tar.gz", [("file", "top/a.txt", b"A"), ("symlink", "top/ln", "a.txt"),
                                                 ("hardlink", "top/hl", "top/a.txt")])
    assert safe_unpack(arc, world / "dest", progress=False) == ["top"]
    assert (world / "dest" / "top" / "ln").read_bytes() == b"A" == (world / "dest" / "top" / "hl").read_bytes()
    assert sorted(p.name for p in (world / "dest").iterdir()) == ["top"]
