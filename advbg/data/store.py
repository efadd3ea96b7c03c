"""The advbg store: one HDF5 file of foregrounds, backgrounds, class names, provenance and results.

Schema (version 1), readable with plain h5py::

    /                       attrs: advbg_schema=1, advbg_version, created (ISO-8601 UTC), command,
                                   image_size=(H, W), complete=True (set last; absent => interrupted write)
    /class_names            (C,) utf-8 strings; label k means class_names[k], -1 means "no class"
    /foregrounds/image      (N, H, W, 3) uint8 RGB, chunk = one item, gzip
    /foregrounds/mask       (N, H, W)    uint8 0/1, chunk = one item, gzip
    /foregrounds/label      (N,) int64
    /foregrounds/source_id  (N,) utf-8 strings (a foreground and the background cut from the same photo share it)
    /foregrounds/box        (N, 4) int64 x0, y0, x1, y1 (exclusive) of the object box, -1 when unknown
    /foregrounds/checksum   (N,) uint64 blake2b-64 of image bytes + mask bytes, written with the item
    /backgrounds/image      (M, H, W, 3) uint8 RGB
    /backgrounds/label      (M,) int64
    /backgrounds/source_id  (M,) utf-8 strings
    /backgrounds/checksum   (M,) uint64 blake2b-64 of image bytes
    /evalsets/<variant>/... optional evaluation sets (image, label, source_id, ...), see advbg.data.variants

Once written, the store file is never modified: ``Store`` opens it read-only in every mode. What is computed from
it later (search results, embeddings) lives in a sidecar folder ``<store>.d/``, one HDF5 file per artifact::

    <store>.d/results/<name>.h5      a search's results (advbg.search.results), attrs + datasets at the root
    <store>.d/embeddings/<name>.h5   one classifier's embeddings (advbg.search.index)

Each sidecar is written under a temporary name (``.<name>.h5.<pid>.partial``) in its folder and renamed into place
only when complete, so a reader sees the old file or the new one, never a torn one; its root attrs record
``store_digest``, and a sidecar made from other store content is not listed (``Store.results``). Plain h5py reads
every file as before. Stores written by earlier advbg builds keep their ``/results`` and ``/embeddings`` groups inside
the store file; they are still read (a sidecar of the same name takes precedence).

New stores are written under ``<path>.partial`` and renamed when complete, so a file at ``path`` is never a
half-written store. A writer (``StoreWriter``, or ``Store`` in mode 'r+') holds ``<path>.lock`` so that two
processes never write one store (or its sidecars) at once; the lock file appears with its pid already in it.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from advbg._version import __version__
from advbg.errors import StoreError, disk_error
from advbg.files import now

SCHEMA_VERSION = 1
_STR = h5py.string_dtype("utf-8")
_COMPRESSION = dict(compression="gzip", compression_opts=4)
DISK_HEADROOM = 4 << 20    # bytes a store writer leaves free for HDF5's metadata, which it writes when flushing


def item_checksum(*arrays: np.ndarray) -> int:
    """blake2b-64 of the arrays' bytes, as stored in the checksum datasets."""
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return int.from_bytes(h.digest(), "little")



def _command() -> str:
    return shlex.join([Path(sys.argv[0]).name] + sys.argv[1:]) if sys.argv and sys.argv[0] else "python-api"


def _strings(ds: h5py.Dataset) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in ds[()]]


# --------------------------------------------------------------------------------------------- locking
class _Lock:
    """An exclusive ``<path>.lock`` file holding the writer's pid; a clear error names the holder."""

    def __init__(self, path: Path):
        self.path = Path(str(path) + ".lock")
        self.held = False

    def acquire(self) -> None:
        try:
            self._create()
        except FileExistsError:
            holder = self._holder()
            if holder is None:
                return self.acquire()           # the holder let go (or was dead) meanwhile
            raise StoreError(f"{self.path.with_suffix('')} is being written by another process (pid {holder}); "
                             f"wait for it, or delete {self.path} if that process is gone") from None
        except OSError as e:
            raise disk_error(e, self.path, StoreError) or e from None
        self.held = True

    def _create(self) -> None:
        """Make the lock file with the pid already in it: written under a temporary name, then hard-linked, so a
        lock is never seen empty and a full disk leaves no lock at all."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            tmp.write_text(str(os.getpid()))
            try:
                os.link(tmp, self.path)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK):
                    raise
                self._create_without_links()    # file systems without hard links (some network/FUSE mounts)
        finally:
            tmp.unlink(missing_ok=True)

    def _create_without_links(self) -> None:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, str(os.getpid()).encode())
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)

    def _holder(self) -> str | None:
        """The live holder's pid, or None after removing a stale lock (dead pid on this machine, or empty: this
        advbg never leaves one, an older one killed at the wrong moment did)."""
        try:
            holder = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError:
            return "?"
        if holder.isdigit() and _pid_alive(int(holder)):
            return holder
        self.path.unlink(missing_ok=True)
        return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------- reading
class ItemSet:
    """Foregrounds or backgrounds of a store: ``len()``, numpy-style ``images[i:j]``, small arrays in memory."""

    def __init__(self, group: h5py.Group):
        self.group = group
        self.images: h5py.Dataset = group["image"]
        self.labels: np.ndarray = group["label"][()].astype(np.int64)
        self.source_ids: list[str] = _strings(group["source_id"])
        self.checksums: np.ndarray = group["checksum"][()]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def read(self, index: slice | Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 (n, H, W, 3) images at ``index`` (a slice, or indices in any order)."""
        return _take(self.images, index)

    def blocks(self, block: int) -> Iterator[tuple[slice, np.ndarray]]:
        """(slice, images) blocks in order, ``block`` items at a time (the store is never read whole)."""
        for start in range(0, len(self), block):
            s = slice(start, min(start + block, len(self)))
            yield s, self.read(s)

    def __repr__(self) -> str:
        n, h, w, _ = self.images.shape
        return f"<{type(self).__name__} {n} x {h}x{w}>"


class Foregrounds(ItemSet):
    """Foregrounds: images plus 0/1 masks and (optionally) object boxes."""

    def __init__(self, group: h5py.Group):
        super().__init__(group)
        self.masks: h5py.Dataset = group["mask"]
        self.boxes: np.ndarray = group["box"][()].astype(np.int64)

    def read_masks(self, index: slice | Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 (n, H, W) 0/1 masks at ``index``."""
        return _take(self.masks, index)


class Backgrounds(ItemSet):
    """Backgrounds: images with a class label (-1: no class)."""


def _take(ds: h5py.Dataset, index) -> np.ndarray:
    if isinstance(index, slice):
        return ds[index]
    idx = np.asarray(index, dtype=np.int64)
    if idx.size == 0:
        return np.empty((0,) + ds.shape[1:], ds.dtype)
    order = np.argsort(idx, kind="stable")
    uniq, inverse = np.unique(idx[order], return_inverse=True)
    data = ds[uniq]  # h5py fancy indexing wants increasing unique indices
    out = np.empty((len(idx),) + ds.shape[1:], ds.dtype)
    out[order] = data[inverse]
    return out


class Store:
    """An open advbg store. Mode 'r' (default) reads; 'r+' also writes derived artifacts (results, embeddings)
    into the sidecar folder and holds the store's lock. The store file itself is opened read-only either way.

    >>> with Store("advbg/data/demo.h5") as s:
    ...     print(len(s.foregrounds), s.class_names)
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        if mode not in ("r", "r+"):
            raise StoreError(f"mode must be 'r' or 'r+' (got {mode!r}); create stores with StoreWriter")
        self.path, self.mode = Path(path), mode
        self._lock: _Lock | None = None
        self._sidecars: dict[Path, tuple[tuple, h5py.File]] = {}
        self._retired: list[h5py.File] = []
        self._digest: str | None = None
        if not self.path.exists():
            hint = " (an interrupted write left a .partial file beside it)" if Path(str(path) + ".partial").exists() else ""
            raise StoreError(f"store {self.path} does not exist{hint}")
        if not self.path.is_file():
            raise StoreError(f"store {self.path} is not a file")
        if not h5py.is_hdf5(self.path):
            raise StoreError(f"{self.path} is not an HDF5 file (an advbg store is made by `advbg extract`, "
                             f"`advbg ingest` or data/build_demo.py)")
        try:
            if mode == "r+":
                self._lock = _Lock(self.path)
                self._lock.acquire()
            self.file = h5py.File(self.path, "r")
            self._validate()
            self.foregrounds = Foregrounds(self.file["foregrounds"])
            self.backgrounds = Backgrounds(self.file["backgrounds"])
            self.class_names: tuple[str, ...] = tuple(_strings(self.file["class_names"]))
        except StoreError:
            self.close()
            raise
        except (OSError, KeyError, ValueError) as e:
            self.close()
            if "unable to lock file" in str(e):
                raise StoreError(f"{self.path} is open for writing in another process (HDF5 allows no readers "
                                 f"then); close the other process and retry") from None
            raise StoreError(f"{self.path} is not a readable advbg store: {e}") from None
        except BaseException:
            self.close()
            raise

    def _validate(self) -> None:
        f, p = self.file, self.path
        version = f.attrs.get("advbg_schema")
        if version is None:
            raise StoreError(f"{p} is an HDF5 file but not an advbg store (no advbg_schema attribute)")
        if int(version) > SCHEMA_VERSION:
            raise StoreError(f"{p} has store schema {int(version)}; this advbg reads up to {SCHEMA_VERSION}: upgrade advbg")
        if not f.attrs.get("complete", False):
            raise StoreError(f"{p} is incomplete (its write was interrupted); rebuild it")
        for key in ("class_names", "foregrounds/image", "foregrounds/mask", "foregrounds/label",
                    "foregrounds/source_id", "foregrounds/box", "foregrounds/checksum", "backgrounds/image",
                    "backgrounds/label", "backgrounds/source_id", "backgrounds/checksum"):
            if key not in f:
                raise StoreError(f"{p} is missing /{key}")
        h, w = (int(v) for v in f.attrs["image_size"])
        fi, fm, bi = f["foregrounds/image"], f["foregrounds/mask"], f["backgrounds/image"]
        if fi.shape[1:] != (h, w, 3) or bi.shape[1:] != (h, w, 3):
            raise StoreError(f"{p}: images are {fi.shape[1:]} / {bi.shape[1:]} but the store says {h}x{w}x3")
        if fm.shape != fi.shape[:3]:
            raise StoreError(f"{p}: foreground masks have shape {fm.shape}, images {fi.shape[:3]}; they must match")
        for grp in ("foregrounds", "backgrounds"):
            n = f[f"{grp}/image"].shape[0]
            for k in ("label", "source_id", "checksum"):
                if f[f"{grp}/{k}"].shape[0] != n:
                    raise StoreError(f"{p}: /{grp}/{k} has {f[f'{grp}/{k}'].shape[0]} entries for {n} images")
        if f["foregrounds/box"].shape != (fi.shape[0], 4):
            raise StoreError(f"{p}: /foregrounds/box must be ({fi.shape[0]}, 4)")
        if fi.dtype != np.uint8 or bi.dtype != np.uint8 or fm.dtype != np.uint8:
            raise StoreError(f"{p}: images and masks must be uint8")

    # -- small accessors -------------------------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int]:
        h, w = (int(v) for v in self.file.attrs["image_size"])
        return h, w

    @property
    def attrs(self) -> h5py.AttributeManager:
        return self.file.attrs

    def require_nonempty(self) -> None:
        """Raise a clear StoreError when there is nothing to search."""
        if len(self.foregrounds) == 0 or len(self.backgrounds) == 0:
            raise StoreError(f"{self.path} has {len(self.foregrounds)} foregrounds and "
                             f"{len(self.backgrounds)} backgrounds; a search needs at least one of each")

    def digest(self) -> str:
        """Content digest of the store's items (from their stored checksums), recorded with every result."""
        if self._digest is None:
            h = hashlib.sha256()
            for arr in (self.foregrounds.checksums, self.backgrounds.checksums,
                        self.foregrounds.labels, self.backgrounds.labels):
                h.update(np.ascontiguousarray(arr).tobytes())
            h.update("\n".join(self.class_names).encode())
            self._digest = h.hexdigest()[:16]
        return self._digest

    @property
    def writable(self) -> bool:
        return self.mode == "r+"

    def require_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.path} is open read-only; open it with mode='r+' to write results")

    # -- derived artifacts (sidecar files) -------------------------------------------------------------
    @property
    def results(self) -> dict[str, h5py.Group]:
        """Search results by name: the root group of each ``<store>.d/results/<name>.h5`` made from this store's
        content (read-only), plus ``/results`` groups an earlier advbg wrote inside the store file."""
        return self.derived("results")

    @property
    def embeddings(self) -> dict[str, h5py.Group]:
        """Embeddings by name, as ``results`` lists results."""
        return self.derived("embeddings")

    def derived(self, kind: str) -> dict[str, h5py.Group]:
        """Derived artifacts of ``kind`` ('results' or 'embeddings') for this store's content, by name.

        A sidecar that cannot be opened or was made from other store content is left out (``advbg verify``
        reports it)."""
        out = dict(legacy_groups(self.file, kind))
        for name, path in sidecar_files(self.path, kind).items():
            try:
                f = self.open_sidecar(path)
            except OSError:
                continue
            if str(f.attrs.get("store_digest", "")) == self.digest():
                out[name] = f
        return out

    def open_sidecar(self, path: Path) -> h5py.File:
        """``path`` opened read-only, reopened when it was replaced since (a handle kept by a caller stays valid)."""
        st = path.stat()
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        have = self._sidecars.get(path)
        if have is not None and have[0] == key and have[1].id.valid:
            return have[1]
        if have is not None:
            self._retired.append(have[1])
        f = h5py.File(path, "r")
        self._sidecars[path] = (key, f)
        return f

    @contextlib.contextmanager
    def write_derived(self, kind: str, name: str) -> Iterator[h5py.File]:
        """A new HDF5 file for artifact ``name`` of ``kind``, at ``<store>.d/<kind>/<name>.h5`` only once the block
        ended without error (replacing an older one); on any error or kill nothing appears there. The file is
        built in memory (derived artifacts are small next to the store) and written in one go.

        Needs mode 'r+'. A full or read-only disk raises a one-line StoreError naming the file."""
        self.require_writable()
        check_derived_name(name)
        folder = sidecar_folder(self.path) / kind
        final = folder / f"{name}.h5"
        tmp = folder / f".{name}.h5.{os.getpid()}.partial"
        f = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _remove_leftovers(folder)
            # Built in memory and written with one plain write: HDF5 itself never meets a full disk (it can crash
            # the process then), and the file on disk is complete or absent.
            f = h5py.File(tmp, "w", driver="core", backing_store=False)
            f.attrs.update(advbg_derived=kind, name=name, store=self.path.name, store_digest=self.digest(),
                           advbg_version=__version__, created=now(), complete=False)
            yield f
            f.attrs["complete"] = True
            f.flush()
            image = f.id.get_file_image()
            f.close()
            _write_durably(tmp, image)
            os.replace(tmp, final)
            _fsync(folder)
        except BaseException as e:
            _close_quietly(f)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            for empty in (folder, folder.parent):      # made for this write: leave no trace of a failed one
                with contextlib.suppress(OSError):
                    empty.rmdir()
            raise disk_error(e, final, StoreError) or e from None

    # -- lifecycle -------------------------------------------------------------------------------------
    def close(self) -> None:
        for f in [getattr(self, "file", None)] + [f for _, f in self._sidecars.values()] + self._retired:
            _close_quietly(f)
        self._sidecars.clear()
        self._retired.clear()
        if self._lock:
            self._lock.release()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self.file.id.valid else "closed"
        h, w = self.image_size if self.file.id.valid else ("?", "?")
        n_f = len(self.foregrounds) if self.file.id.valid else "?"
        n_b = len(self.backgrounds) if self.file.id.valid else "?"
        return (f"<advbg Store {str(self.path)!r} ({state}, mode {self.mode if state == 'open' else '-'}): "
                f"{n_f} foregrounds, {n_b} backgrounds, {h}x{w}, {len(self.class_names)} classes>")


# --------------------------------------------------------------------------------------------- sidecars
def sidecar_folder(store_path: str | os.PathLike) -> Path:
    """``<store>.d``: where the derived artifacts of the store at ``store_path`` live."""
    return Path(str(store_path) + ".d")


def sidecar_files(store_path: str | os.PathLike, kind: str) -> dict[str, Path]:
    """Name -> path of every finished sidecar of ``kind`` (temporary files of running or killed writers excluded)."""
    folder = sidecar_folder(store_path) / kind
    if not folder.is_dir():
        return {}
    return {p.name[:-3]: p for p in sorted(folder.glob("*.h5")) if not p.name.startswith(".") and p.is_file()}


def legacy_groups(file: h5py.File, kind: str) -> dict[str, h5py.Group]:
    """``/<kind>/<name>`` groups inside a store file written by an earlier advbg (read-only; unreadable: none)."""
    try:
        root = file.get(kind)
        return {k: root[k] for k in root} if isinstance(root, h5py.Group) else {}
    except (OSError, KeyError, RuntimeError, ValueError):
        return {}


def check_derived_name(name: str) -> None:
    """Refuse a results/embeddings name that cannot be a file name of its own."""
    if not name or "/" in name or "\0" in name or name.startswith(".") or len(name.encode()) > 200:
        raise StoreError(f"bad results name {name!r} (non-empty, no '/', not starting with '.', at most 200 bytes)")


def _remove_leftovers(folder: Path) -> None:
    """Temporary files of writers killed before their rename (the caller holds the lock: none is running)."""
    for p in folder.glob(".*.partial"):
        with contextlib.suppress(OSError):
            p.unlink()


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _close_quietly(f) -> None:
    """Close an h5py file; a file whose writes failed (full disk) may fail again on close, which changes nothing."""
    if f is None:
        return
    with contextlib.suppress(Exception):
        if f.id.valid:
            f.close()


# --------------------------------------------------------------------------------------------- writing
def _check_text(text, what: str = "source id") -> str:
    """A string HDF5 can store as UTF-8: no NUL (C strings) and no lone surrogates (undecodable file names)."""
    text = str(text)
    if "\0" in text:
        raise StoreError(f"{what} {text!r} contains a NUL character, which HDF5 strings cannot hold")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise StoreError(f"{what} {text!r} is not valid Unicode (a file name in another encoding?); "
                         f"rename the file to UTF-8") from None
    return text


def _check_label(label, source_id) -> int:
    try:
        return int(label)
    except (TypeError, ValueError):
        raise StoreError(f"label of {source_id!r} must be an integer class index, got {label!r}") from None


@dataclass
class _Appendable:
    ds: h5py.Dataset

    def append(self, value) -> None:
        n = self.ds.shape[0]
        self.ds.resize(n + 1, axis=0)
        self.ds[n] = value


class StoreWriter:
    """Writes a new store item by item under ``<path>.partial`` and renames it to ``path`` on success.

    ``resume=True`` reopens an existing ``.partial`` left by an interrupted run; ``done_source_ids`` then tells
    which photos are already in it. On an exception the ``.partial`` file is kept (for resume) and ``path`` is
    never created.
    """

    def __init__(self, path: str | os.PathLike, *, class_names: Sequence[str], image_size: tuple[int, int],
                 overwrite: bool = False, resume: bool = False, command: str | None = None,
                 attrs: dict | None = None):
        self.path = Path(path)
        self.partial = Path(str(self.path) + ".partial")
        if self.path.exists() and not overwrite:
            raise StoreError(f"{self.path} already exists; pass overwrite=True (--overwrite) to replace it")
        if self.path.exists() and self.path.is_dir():
            raise StoreError(f"{self.path} is a directory")
        parent = self.path.parent
        if not parent.exists():
            raise StoreError(f"output folder {parent} does not exist")
        h, w = (int(v) for v in image_size)
        if h <= 0 or w <= 0:
            raise StoreError(f"image_size must be positive, got {image_size}")
        self.image_size = (h, w)
        self._lock = _Lock(self.path)
        self._lock.acquire()
        try:
            self._require_room(0)
            if resume and self.partial.exists():
                self.file = self._reopen_partial()
                if tuple(int(v) for v in self.file.attrs["image_size"]) != self.image_size:
                    raise StoreError(f"{self.partial} was started with image size "
                                     f"{tuple(self.file.attrs['image_size'])}, not {self.image_size}")
            else:
                self.partial.unlink(missing_ok=True)
                self.file = self._create(class_names, command, attrs or {})
        except BaseException as e:
            self._lock.release()
            err = disk_error(e, self.partial, StoreError)
            if err is not None:
                with contextlib.suppress(OSError):
                    self.partial.unlink(missing_ok=True)
                raise err from None
            raise
        self._fg = {k: _Appendable(self.file[f"foregrounds/{k}"])
                    for k in ("image", "mask", "label", "source_id", "box", "checksum")}
        self._bg = {k: _Appendable(self.file[f"backgrounds/{k}"])
                    for k in ("image", "label", "source_id", "checksum")}

    def _reopen_partial(self) -> h5py.File:
        """Reopen an interrupted ``.partial``, cutting every item list back to the last complete item.

        An item is complete once its checksum is written (always last), so a process killed half-way through an
        item leaves longer image/label/... lists that would misalign everything appended after a resume.
        """
        f = None
        try:
            f = h5py.File(self.partial, "r+")
            for grp in ("foregrounds", "backgrounds"):
                g = f[grp]
                n = g["checksum"].shape[0]
                for ds in g.values():
                    if ds.shape[0] > n:
                        ds.resize(n, axis=0)
            return f
        except (OSError, KeyError, ValueError) as e:
            if f is not None:
                f.close()
            raise StoreError(f"cannot resume from {self.partial}: it is unreadable ({e}); delete it and start "
                             f"again without resume") from None

    def _create(self, class_names: Sequence[str], command: str | None, attrs: dict) -> h5py.File:

        h, w = self.image_size
        names = [_check_text(c, "class name") for c in class_names]
        f = h5py.File(self.partial, "w")
        f.attrs.update(advbg_schema=SCHEMA_VERSION, advbg_version=__version__, created=now(),
                       command=command or _command(), image_size=np.array([h, w], np.int64), complete=False)
        for k, v in attrs.items():
            f.attrs[k] = v
        f.create_dataset("class_names", data=np.array(names, dtype=object), dtype=_STR)
        for grp, has_mask in (("foregrounds", True), ("backgrounds", False)):
            g = f.create_group(grp)
            g.create_dataset("image", (0, h, w, 3), np.uint8, maxshape=(None, h, w, 3), chunks=(1, h, w, 3),
                             **_COMPRESSION)
            if has_mask:
                g.create_dataset("mask", (0, h, w), np.uint8, maxshape=(None, h, w), chunks=(1, h, w),
                                 **_COMPRESSION)
                g.create_dataset("box", (0, 4), np.int64, maxshape=(None, 4), chunks=(1024, 4))
            g.create_dataset("label", (0,), np.int64, maxshape=(None,), chunks=(1024,))
            g.create_dataset("source_id", (0,), _STR, maxshape=(None,), chunks=(1024,))
            g.create_dataset("checksum", (0,), np.uint64, maxshape=(None,), chunks=(1024,))
        return f

    # -- items -----------------------------------------------------------------------------------------
    @property
    def done_source_ids(self) -> set[str]:
        """Source ids already written (foregrounds and backgrounds), for resuming."""
        return set(_strings(self.file["foregrounds/source_id"])) | set(_strings(self.file["backgrounds/source_id"]))

    def _check_image(self, image: np.ndarray, what: str) -> np.ndarray:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.shape != self.image_size + (3,):
            raise StoreError(f"{what} must be uint8 {self.image_size + (3,)}, got {image.dtype} {image.shape}")
        return image

    def add_foreground(self, image: np.ndarray, mask: np.ndarray, label: int, source_id: str,
                       box: Sequence[int] | None = None) -> int:
        """Append one foreground (uint8 HxWx3 image, HxW mask of 0/1) and return its fg_id."""
        image = self._check_image(image, f"foreground {source_id!r}")
        mask = np.asarray(mask)
        if mask.shape != self.image_size:
            raise StoreError(f"mask of foreground {source_id!r} has shape {mask.shape}, image {self.image_size}")
        if mask.dtype == bool or not np.isin(mask, (0, 1)).all():
            mask = (mask > 0)
        mask = mask.astype(np.uint8)
        label, source_id = _check_label(label, source_id), _check_text(source_id)
        box = np.asarray(box if box is not None else (-1, -1, -1, -1), np.int64)
        if box.shape != (4,):
            raise StoreError(f"box of foreground {source_id!r} must be 4 numbers x0, y0, x1, y1, got {box.tolist()}")
        self._require_room(image.nbytes + mask.nbytes)
        fg_id = self._fg["image"].ds.shape[0]
        self._fg["image"].append(image)
        self._fg["mask"].append(mask)
        self._fg["label"].append(label)
        self._fg["source_id"].append(source_id)
        self._fg["box"].append(box)
        self._fg["checksum"].append(np.uint64(item_checksum(image, mask)))  # last: marks the item complete
        return fg_id

    def add_background(self, image: np.ndarray, label: int, source_id: str) -> int:
        """Append one background (uint8 HxWx3) and return its bg_id."""
        image = self._check_image(image, f"background {source_id!r}")
        label, source_id = _check_label(label, source_id), _check_text(source_id)
        self._require_room(image.nbytes)
        bg_id = self._bg["image"].ds.shape[0]
        self._bg["image"].append(image)
        self._bg["label"].append(label)
        self._bg["source_id"].append(source_id)
        self._bg["checksum"].append(np.uint64(item_checksum(image)))  # last: marks the item complete
        return bg_id

    def flush(self) -> None:
        self.file.flush()

    def _require_room(self, nbytes: int) -> None:
        """Stop cleanly while the disk still has room: HDF5 meeting a full disk can leave its file unusable and
        crash the process when its objects are freed."""
        if shutil.disk_usage(self.partial.parent).free < nbytes + DISK_HEADROOM:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.partial))

    # -- lifecycle -------------------------------------------------------------------------------------
    def close(self, success: bool = True) -> None:
        """Finish: mark complete and rename into place (success), or keep the .partial for resume.

        A full or read-only disk removes the .partial (its last writes failed, so it is not a sound base to
        resume from) and raises a one-line StoreError."""
        try:
            if not self.file.id.valid:
                return
            if success:
                self._require_room(0)
                self.file.attrs["complete"] = True
                self.file.attrs["n_foregrounds"] = self._fg["image"].ds.shape[0]
                self.file.attrs["n_backgrounds"] = self._bg["image"].ds.shape[0]
                self.file.close()
                os.replace(self.partial, self.path)
                # what was derived from the store this one replaces (readers ignore it: its digest differs)
                shutil.rmtree(sidecar_folder(self.path), ignore_errors=True)
            else:
                _close_quietly(self.file)
        except BaseException as e:
            self._fail(e)
            raise
        finally:
            self._lock.release()

    def _fail(self, e: BaseException) -> None:
        """On a disk error (full, read-only): drop the .partial and raise it as one line; else do nothing."""
        _close_quietly(self.file)
        err = disk_error(e, self.partial, StoreError)
        if err is not None:
            with contextlib.suppress(OSError):
                self.partial.unlink(missing_ok=True)
            raise err from None

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            try:
                self._fail(exc)
            finally:
                self._lock.release()
        self.close(success=exc_type is None)


def write_store(path: str | os.PathLike, *, class_names: Sequence[str], fg_images: np.ndarray,
                fg_masks: np.ndarray, fg_labels: Sequence[int], bg_images: np.ndarray, bg_labels: Sequence[int],
                fg_source_ids: Sequence[str] | None = None, bg_source_ids: Sequence[str] | None = None,
                fg_boxes: np.ndarray | None = None, overwrite: bool = False, command: str | None = None) -> Path:
    """Write a whole store from in-memory arrays (tests, notebooks, small sets) and return its path."""
    fg_images, bg_images = np.asarray(fg_images), np.asarray(bg_images)
    if fg_images.ndim != 4 or bg_images.ndim != 4:
        raise StoreError("fg_images and bg_images must be (n, H, W, 3) arrays")
    size = fg_images.shape[1:3] if len(fg_images) else bg_images.shape[1:3]
    with StoreWriter(path, class_names=class_names, image_size=size, overwrite=overwrite, command=command) as w:
        for i in range(len(fg_images)):
            w.add_foreground(fg_images[i], fg_masks[i], fg_labels[i],
                             fg_source_ids[i] if fg_source_ids is not None else f"fg{i}",
                             None if fg_boxes is None else fg_boxes[i])
        for j in range(len(bg_images)):
            w.add_background(bg_images[j], bg_labels[j], bg_source_ids[j] if bg_source_ids is not None else f"bg{j}")
    return Path(path)
