"""What sits beside a store file: the writer's lock (``<store>.lock``) and the sidecar folder ``<store>.d/`` of
derived artifacts (one HDF5 file each), plus the ``/results`` and ``/embeddings`` groups earlier builds kept inside
the store."""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import h5py

from advbg.errors import StoreError, disk_error
from advbg.files import leftover_partials


class StoreLock:
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


# --------------------------------------------------------------------------------------------- sidecars
def sidecar_folder(store_path: str | os.PathLike) -> Path:
    """``<store>.d``: where the derived artifacts of the store at ``store_path`` live."""
    return Path(str(store_path) + ".d")


def require_sidecar_folder(store_path: str | os.PathLike, kind: str) -> None:
    """Refuse, before any work and in one line, a ``<store>.d`` or ``<store>.d/<kind>`` that exists but is not a
    usable folder (a file, a FIFO, a dangling link, a link loop): writing the results there would fail at the end."""
    for folder in (sidecar_folder(store_path), sidecar_folder(store_path) / kind):
        if not os.path.lexists(folder):
            return
        try:
            os.stat(folder)
        except OSError as e:
            raise StoreError(f"{folder} is not a usable folder ({e.strerror or e}; a dangling link or a link loop); "
                             f"move it away so that advbg can make the folder") from None
        if not folder.is_dir():
            raise StoreError(f"{folder} is not a folder (a file, FIFO or device); move it away so that advbg can "
                             f"make the folder")


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


def remove_leftovers(folder: Path) -> None:
    """Temporary files of writers killed before their rename (the caller holds the lock: none is running)."""
    for p in leftover_partials(folder):
        with contextlib.suppress(OSError):
            p.unlink()
