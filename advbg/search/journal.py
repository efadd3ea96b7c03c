"""The search journal: committed units in append-only files beside the store, safe against SIGKILL at any byte.

An HDF5 file killed in the middle of a write can be left unreadable, so a running search writes no HDF5 file until
it has finished. Each process appends one record per finished unit to its own file ``rank-NNNNN.bin`` in a
folder ``<store>.<results name>.journal/``; a record is
``b"ADVJ" | payload length (u64) | crc32 (u32) | payload (.npz bytes)`` and is fsync'ed before the next unit
starts. A reader takes records up to the first torn or corrupt one, so a crash loses at most the unit that was
being written, and a writer cuts such a tail off before appending. ``meta.npz`` (written once, atomically) holds
what identifies the run (fingerprint, foregrounds, pool, attributes); ``run.json`` appears when the search
finished. Only the results owner (``advbg.search.results.sink``) uses it: it turns a finished journal into the
results file beside the store.
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from advbg.errors import AdvbgError, disk_error
from advbg.files import atomic_write_bytes

MAGIC = b"ADVJ"
_HEAD = struct.Struct("<4sQI")


def journal_folder(store_path: str | os.PathLike, name: str, base: str | os.PathLike | None = None) -> Path:
    """Where the journal of results ``name`` of the store at ``store_path`` lives."""
    p = Path(store_path)
    folder = Path(base) if base is not None else p.parent
    return folder / f"{p.name}.{name}.journal"


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@contextlib.contextmanager
def _disk(path: Path) -> Iterator[None]:
    """A full or read-only disk while writing ``path`` becomes a one-line AdvbgError."""
    try:
        yield
    except OSError as e:
        err = disk_error(e, path)
        if err is None:
            raise
        raise err from None


def _atomic_write(path: Path, data: bytes) -> None:
    with _disk(path):
        atomic_write_bytes(path, data)


def _scan(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(start offset, end offset, payload) of each intact record, stopping at the first bad one."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + _HEAD.size <= len(data):
        magic, n, crc = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + n
        if magic != MAGIC or end > len(data):
            return
        payload = data[pos + _HEAD.size:end]
        if zlib.crc32(payload) != crc:
            return
        yield pos, end, payload
        pos = end


class JournalWriter:
    """One process's append-only file of unit records."""

    def __init__(self, path: Path):
        self.path = path
        good = 0
        if path.exists():
            for _, end, _ in _scan(path):
                good = end
        self._f = open(path, "r+b" if path.exists() else "wb")
        self._f.truncate(good)      # drop a record torn by a crash
        self._f.seek(good)

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        payload = _npz_bytes(arrays)
        with _disk(self.path):     # a record torn by a full disk is cut off by the next writer, skipped by readers
            self._f.write(_HEAD.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload)
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:
            pass     # a flush that failed on a full disk: every complete record was fsync'ed already


class Journal:
    """A journal folder: meta, per-rank record files, and the final run record."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    @property
    def meta_path(self) -> Path:
        return self.folder / "meta.npz"

    def exists(self) -> bool:
        return self.meta_path.exists()

    def meta(self) -> dict:
        """The run identity written by ``create``: arrays plus ``attrs`` (a dict)."""
        with np.load(self.meta_path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
        out["attrs"] = json.loads(str(out.pop("attrs_json")))
        return out

    def create(self, fingerprint: str, arrays: dict[str, np.ndarray], attrs: dict) -> None:
        """Start afresh: remove an old journal, write the meta of this run."""
        self.remove()
        try:
            with _disk(self.folder):
                self.folder.mkdir(parents=True)
            _atomic_write(self.meta_path, _npz_bytes(dict(arrays, fingerprint=np.array(fingerprint),
                                                          attrs_json=np.array(json.dumps(attrs)))))
        except BaseException:
            self.remove()       # a journal without its meta holds nothing: leave no folder behind
            raise

    def fingerprint(self) -> str | None:
        try:
            with np.load(self.meta_path, allow_pickle=False) as z:
                return str(z["fingerprint"])
        except (OSError, KeyError, ValueError, zlib.error):
            return None      # missing or torn meta: the journal holds nothing usable

    def writer(self, rank: int) -> JournalWriter:
        if not self.exists():
            raise AdvbgError(f"journal {self.folder} has no meta.npz; was it deleted while the search ran?")
        return JournalWriter(self.folder / f"rank-{rank:05d}.bin")

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("rank-*.bin")) if self.folder.is_dir() else []

    def records(self, keys: tuple[str, ...] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Every intact unit record (all ranks), optionally only some arrays of it."""
        for path in self.files():
            for _, _, payload in _scan(path):
                with np.load(io.BytesIO(payload), allow_pickle=False) as z:
                    yield {k: z[k] for k in (keys or z.files) if k in z.files}   # a later column may be absent

    def done_rows(self, n: int) -> np.ndarray:
        """Boolean (n,): rows of the searched foregrounds whose unit is committed."""
        done = np.zeros(n, bool)
        for r in self.records(("start", "stop")):
            done[int(r["start"]):int(r["stop"])] = True
        return done

    def write_run(self, run: dict) -> None:
        _atomic_write(self.folder / "run.json", json.dumps(run, default=str).encode())

    def run(self) -> dict | None:
        p = self.folder / "run.json"
        return json.loads(p.read_text()) if p.exists() else None

    def units(self) -> int:
        """How many unit records are committed (all ranks)."""
        return sum(1 for path in self.files() for _ in _scan(path))

    def remove(self) -> None:
        """Delete the journal. It is first renamed (one atomic step) to a name no reader looks at, so a kill
        during the deletion never leaves a half-deleted journal that looks like an interrupted run."""
        remove_obsolete(self.folder)
        if not os.path.lexists(self.folder):
            return
        if not self.folder.is_dir() or self.folder.is_symlink():
            raise AdvbgError(f"journal {self.folder} is not a folder; remove it or choose another --results-name")
        gone = self.folder.with_name(f"{self.folder.name}.obsolete-{os.getpid()}")
        with _disk(self.folder):
            os.rename(self.folder, gone)
        shutil.rmtree(gone, ignore_errors=True)


def remove_obsolete(folder: Path) -> None:
    """Delete what a killed ``Journal.remove`` left of ``folder`` (its renamed, half-deleted copies)."""
    for old in folder.parent.glob(f"{glob.escape(folder.name)}.obsolete-*"):
        shutil.rmtree(old, ignore_errors=True)
