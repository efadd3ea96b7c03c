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

Each sidecar is written under a temporary name (advbg.files.atomic_output) in its folder and renamed into place
only when complete, so a reader sees the old file or the new one, never a torn one; its root attrs record
``store_digest``, and a sidecar made from other store content is not listed (``Store.results``). Plain h5py reads
every file as before. Stores written by earlier advbg builds keep their ``/results`` and ``/embeddings`` groups inside
the store file; they are still read (a sidecar of the same name takes precedence).

New stores are written by ``advbg.data.writer.StoreWriter`` under a hidden temporary and renamed when complete, so
a file at ``path`` is never a half-written store. A writer (``StoreWriter``, or ``Store`` in mode 'r+') holds
``<path>.lock`` (advbg.data.sidecar) so that two processes never write one store (or its sidecars) at once.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from advbg._version import __version__
from advbg.data.sidecar import (StoreLock, check_derived_name, legacy_groups, remove_leftovers, sidecar_files,
                                sidecar_folder)
from advbg.errors import AdvbgError, StoreError, disk_error
from advbg.files import atomic_write_bytes, now, partial_path

SCHEMA_VERSION = 1
# Codes of a results outcome matrix (F, B) uint8 besides mapped class indices (read by advbg.search.criteria and
# checked by verify): one definition, in the schema.
OUTCOME_INVALID = 253       # composite with NaN/inf logits (e.g. fp16 overflow): no prediction, never fooled
OUTCOME_NONE = 254          # mapped prediction "none" (unmapped top-1)
OUTCOME_MISSING = 255       # pair not evaluated (early exit, pruning)


def item_checksum(*arrays: np.ndarray) -> int:
    """blake2b-64 of the arrays' bytes, as stored in the checksum datasets."""
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return int.from_bytes(h.digest(), "little")


def read_strings(ds: h5py.Dataset) -> list[str]:
    """A dataset of HDF5 strings as Python strings."""
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in ds[()]]


def close_quietly(f) -> None:
    """Close an h5py file; a file whose writes failed (full disk) may fail again on close, which changes nothing."""
    if f is None:
        return
    with contextlib.suppress(Exception):
        if f.id.valid:
            f.close()


# --------------------------------------------------------------------------------------------- reading
class ItemSet:
    """Foregrounds or backgrounds of a store: ``len()``, numpy-style ``images[i:j]``, small arrays in memory."""

    def __init__(self, group: h5py.Group):
        self.group = group
        self.images: h5py.Dataset = group["image"]
        self.labels: np.ndarray = group["label"][()].astype(np.int64)
        self.source_ids: list[str] = read_strings(group["source_id"])
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
        self._lock: StoreLock | None = None
        self._sidecars: dict[Path, tuple[tuple, h5py.File]] = {}
        self._retired: list[h5py.File] = []
        self._digest: str | None = None
        if not self.path.exists():
            tmp = partial_path(path)
            hint = f" (an interrupted write left its temporary {tmp.name} beside it)" if tmp.exists() else ""
            raise StoreError(f"store {self.path} does not exist{hint}")
        if not self.path.is_file():
            raise StoreError(f"store {self.path} is not a file")
        if not h5py.is_hdf5(self.path):
            raise StoreError(f"{self.path} is not an HDF5 file (an advbg store is made by `advbg extract`, "
                             f"`advbg ingest` or data/build_demo.py)")
        try:
            if mode == "r+":
                self._lock = StoreLock(self.path)
                self._lock.acquire()
            self.file = h5py.File(self.path, "r")
            self._validate()
            self.foregrounds = Foregrounds(self.file["foregrounds"])
            self.backgrounds = Backgrounds(self.file["backgrounds"])
            self.class_names: tuple[str, ...] = tuple(read_strings(self.file["class_names"]))
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
        f = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            remove_leftovers(folder)
            # Built in memory (the name is never created on disk) and written with one plain write: HDF5 itself
            # never meets a full disk (it can crash the process then), and the file on disk is complete or absent.
            f = h5py.File(partial_path(final), "w", driver="core", backing_store=False)
            f.attrs.update(advbg_derived=kind, name=name, store=self.path.name, store_digest=self.digest(),
                           advbg_version=__version__, created=now(), complete=False)
            yield f
            f.attrs["complete"] = True
            f.flush()
            image = f.id.get_file_image()
            f.close()
            try:
                atomic_write_bytes(final, image)
            except AdvbgError as e:                 # a full or read-only disk: one line, as the store's errors
                raise StoreError(str(e)) from None
        except BaseException as e:
            close_quietly(f)
            for empty in (folder, folder.parent):      # made for this write: leave no trace of a failed one
                with contextlib.suppress(OSError):
                    empty.rmdir()
            raise disk_error(e, final, StoreError) or e from None

    # -- lifecycle -------------------------------------------------------------------------------------
    def close(self) -> None:
        for f in [getattr(self, "file", None)] + [f for _, f in self._sidecars.values()] + self._retired:
            close_quietly(f)
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
