"""Writing a new store: item by item under its hidden temporary (``partial_path``, kept for ``resume`` when a
run is interrupted), renamed into place when complete, so a file at the store's path is never a half-written store.
The writer holds the store's lock (``<path>.lock``) so that two processes never write one store at once."""
from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from advbg._version import __version__
from advbg.data.sidecar import StoreLock, sidecar_folder
from advbg.data.store import SCHEMA_VERSION, close_quietly, item_checksum, read_strings
from advbg.errors import StoreError, disk_error
from advbg.files import commit_partial, now, partial_path

_STR = h5py.string_dtype("utf-8")
_COMPRESSION = dict(compression="gzip", compression_opts=4)
DISK_HEADROOM = 4 << 20    # bytes a store writer leaves free for HDF5's metadata, which it writes when flushing


def _command() -> str:
    return shlex.join([Path(sys.argv[0]).name] + sys.argv[1:]) if sys.argv and sys.argv[0] else "python-api"


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
    """Writes a new store item by item under its temporary ``self.temporary`` and renames it to ``path`` on success.

    ``resume=True`` reopens an existing temporary left by an interrupted run; ``done_source_ids`` then tells
    which photos are already in it. On an exception the temporary is kept (for resume) and ``path`` is
    never created.
    """

    def __init__(self, path: str | os.PathLike, *, class_names: Sequence[str], image_size: tuple[int, int],
                 overwrite: bool = False, resume: bool = False, command: str | None = None,
                 attrs: dict | None = None):
        self.path = Path(path)
        self.temporary = partial_path(self.path)
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
        self._lock = StoreLock(self.path)
        self._lock.acquire()
        try:
            self._require_room(0)
            if resume and self.temporary.exists():
                self.file = self._reopen_partial()
                if tuple(int(v) for v in self.file.attrs["image_size"]) != self.image_size:
                    raise StoreError(f"{self.temporary} was started with image size "
                                     f"{tuple(self.file.attrs['image_size'])}, not {self.image_size}")
            else:
                self.temporary.unlink(missing_ok=True)
                self.file = self._create(class_names, command, attrs or {})
        except BaseException as e:
            self._lock.release()
            err = disk_error(e, self.temporary, StoreError)
            if err is not None:
                with contextlib.suppress(OSError):
                    self.temporary.unlink(missing_ok=True)
                raise err from None
            raise
        self._fg = {k: _Appendable(self.file[f"foregrounds/{k}"])
                    for k in ("image", "mask", "label", "source_id", "box", "checksum")}
        self._bg = {k: _Appendable(self.file[f"backgrounds/{k}"])
                    for k in ("image", "label", "source_id", "checksum")}

    def _reopen_partial(self) -> h5py.File:
        """Reopen an interrupted temporary, cutting every item list back to the last complete item.

        An item is complete once its checksum is written (always last), so a process killed half-way through an
        item leaves longer image/label/... lists that would misalign everything appended after a resume.
        """
        f = None
        try:
            f = h5py.File(self.temporary, "r+")
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
            raise StoreError(f"cannot resume from {self.temporary}: it is unreadable ({e}); delete it and start "
                             f"again without resume") from None

    def _create(self, class_names: Sequence[str], command: str | None, attrs: dict) -> h5py.File:

        h, w = self.image_size
        names = [_check_text(c, "class name") for c in class_names]
        f = h5py.File(self.temporary, "w")
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
        return set(read_strings(self.file["foregrounds/source_id"])) | set(read_strings(self.file["backgrounds/source_id"]))

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
        if shutil.disk_usage(self.temporary.parent).free < nbytes + DISK_HEADROOM:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.temporary))

    # -- lifecycle -------------------------------------------------------------------------------------
    def close(self, success: bool = True) -> None:
        """Finish: mark complete and rename into place (success), or keep the temporary for resume.

        A full or read-only disk removes the temporary (its last writes failed, so it is not a sound base to
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
                commit_partial(self.path)
                # what was derived from the store this one replaces (readers ignore it: its digest differs)
                shutil.rmtree(sidecar_folder(self.path), ignore_errors=True)
            else:
                close_quietly(self.file)
        except BaseException as e:
            self._fail(e)
            raise
        finally:
            self._lock.release()

    def _fail(self, e: BaseException) -> None:
        """On a disk error (full, read-only): drop the temporary and raise it as one line; else do nothing."""
        close_quietly(self.file)
        err = disk_error(e, self.temporary, StoreError)
        if err is not None:
            with contextlib.suppress(OSError):
                self.temporary.unlink(missing_ok=True)
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
