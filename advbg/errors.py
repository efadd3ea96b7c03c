"""The one error type the library raises for bad input; the CLI turns it into one line and exit code 1."""


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
