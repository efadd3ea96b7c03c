"""The one error type the library raises for bad input (the CLI turns it into one line and exit code 1), and the
checks of user-given values that several layers share."""
from __future__ import annotations

import os


class AdvbgError(Exception):
    """Bad input or an unusable file; the message names the problem and, where there is one, the fix."""


class StoreError(AdvbgError, ValueError):
    """A store file that is missing, malformed, incomplete or inconsistent."""


class ModelError(AdvbgError, ValueError):
    """A classifier that cannot be built or loaded as asked."""


# errno -> the words the one-line error uses; anything else is not a disk condition and is left alone
_DISK_ERRNOS = {28: "no space left on device", 122: "disk quota exceeded", 30: "read-only file system",
                13: "permission denied", 1: "operation not permitted"}


def disk_error(e: BaseException, path: object, cls: type[AdvbgError] = AdvbgError) -> AdvbgError | None:
    """An AdvbgError naming ``path`` and the condition when ``e`` is a full, read-only or forbidden disk, else None.

    h5py reports HDF5's write failures as OSError or RuntimeError without an errno, and faiss as RuntimeError,
    so their message is read as well."""
    if not isinstance(e, (OSError, RuntimeError)):
        return None
    words = _DISK_ERRNOS.get(getattr(e, "errno", None) or 0)
    if words is None:
        text = str(e).lower()
        words = next((w for n, w in _DISK_ERRNOS.items() if f"errno = {n}," in text or w in text), None)
    if words is None:
        return None
    fix = "free some space" if "space" in words or "quota" in words else "choose a writable place"
    return cls(f"cannot write {path}: {words} ({fix} and run the command again)")


# The seeds every command accepts: what every generator advbg seeds (numpy, torch, OpenCV's 32-bit int) takes.
SEED_MAX = 2**31 - 1


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_workers(workers: int | None, *, default: int, least: int = 1, per_core: int = 4) -> int:
    """``workers`` (``None``: ``default``) if it lies in ``least .. per_core x usable_cores()``, else one AdvbgError:
    more worker processes than that only thrash, and each costs memory."""
    workers = default if workers is None else int(workers)
    most = per_core * usable_cores()
    if not least <= workers <= most:
        raise AdvbgError(f"--workers must be between {least} and {most} ({per_core} per usable core) on this "
                         f"machine, got {workers}")
    return workers
