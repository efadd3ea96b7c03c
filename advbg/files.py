"""Files advbg writes and reads besides the store: atomic outputs, output-path checks, hashes, timestamps.

A leaf module: every layer may import it, it imports nothing of advbg but the errors."""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from advbg.errors import AdvbgError, disk_error


# --------------------------------------------------------------------------------------------- atomic outputs
def partial_path(path: str | os.PathLike) -> Path:
    """The one temporary name of an output while it is written: a hidden sibling ``.<name>.partial``.

    Hidden, so that a listing of the folder never shows it as a result; beside the output, so that the final
    rename stays on one file system (and so is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file, or a folder's entries (so that a rename in it survives a crash of the machine)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, folder: bool = False) -> Iterator[Path]:
    """The one way advbg writes an output: yields the temporary path (``partial_path(path)``; an empty folder
    with ``folder=True``) to write into; only when the block ends without error is it fsync'ed and renamed to
    ``path``, replacing an older output, and the parent folder fsync'ed. On any error nothing appears at ``path``
    (an older output stays) and the temporary is removed; a kill leaves at most the hidden temporary, which the
    next write of the same output removes. A full or read-only disk becomes one AdvbgError naming ``path``.

    Callers whose library picks a format from the file name (matplotlib, OpenCV) pass the format explicitly."""
    path = Path(path)
    tmp = partial_path(path)
    _remove(tmp)                     # left by a killed writer of this output
    restore_replaced(path)
    try:
        if folder:
            tmp.mkdir()
        yield tmp
        _commit(tmp, path, folder)
    except BaseException as e:
        _remove(tmp)
        err = disk_error(e, path) if isinstance(e, (OSError, RuntimeError)) else None
        if err is not None:
            raise err from None
        raise


def restore_replaced(path: str | os.PathLike) -> bool:
    """Put back an older folder output that a writer killed between its two renames left aside (``.NAME.old``,
    nothing at ``path``); True when it did."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if old.is_dir() and not old.is_symlink() and not os.path.lexists(path):
        os.replace(old, path)
        return True
    return False


def commit_partial(path: str | os.PathLike, *, folder: bool = False, src: str | os.PathLike | None = None) -> Path:
    """Move a finished ``partial_path(path)`` (or ``src``, a temporary elsewhere on the same file system) into place
    as ``atomic_output`` does (fsync, rename over ``path``, fsync of the folder), for writers that fill the
    temporary themselves: a new store (kept across runs to resume it), an unpacked archive."""
    path = Path(path)
    _commit(Path(src) if src is not None else partial_path(path), path, folder)
    return path


def _commit(tmp: Path, path: Path, folder: bool) -> None:
    if not os.path.lexists(tmp):
        raise AdvbgError(f"internal error: nothing was written to {path}")
    if folder:
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                fsync_path(f)
        old = path.with_name(f".{path.name}.old")
        if path.is_dir() and not path.is_symlink():   # a folder cannot be renamed over a non-empty folder
            _remove(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.chmod(tmp, 0o666 & ~_umask())              # the usual permissions of a new file, whoever made tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    fsync_path(path.parent if str(path.parent) else ".")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (``atomic_output``)."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (``atomic_output``)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def leftover_partials(folder: str | os.PathLike) -> list[Path]:
    """The temporaries (``partial_path``) that killed writers left in ``folder``, by name."""
    return sorted(Path(folder).glob(".*.partial"))


def is_partial(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an output's temporary (``partial_path``), not an output."""
    return str(path).endswith(".partial")


def check_output(path: str | os.PathLike | None, suffixes: tuple[str, ...] = (),
                 inputs: Iterable[str | os.PathLike | None] = (), *, folder: bool = False) -> None:
    """Refuse an output path before any work, in one line: a symbolic link, something that is not a regular file
    (a device, FIFO or socket; with ``folder``: not a folder), a missing parent folder, a wrong suffix (if
    ``suffixes``), a path that is one of the command's ``inputs`` (the store, a checkpoint, ...) or lies inside an
    input folder (a photo folder, a release): writing there would replace an input. ``None`` and ``-`` mean "no
    output"."""
    if path is None or str(path) == "-":
        return
    path = Path(path)
    check_file_name(path.name, path.parent if path.parent.is_dir() else ".")
    if path.is_symlink():
        raise AdvbgError(f"output {path} is a symbolic link; give the real path (advbg replaces outputs, which "
                         f"would replace the link, not what it points to)")
    if path.exists():
        if folder and not path.is_dir():
            raise AdvbgError(f"{path} exists and is not a folder; give a folder")
        if not folder and path.is_dir():
            raise AdvbgError(f"{path} is a directory; give a file name")
        if not folder and not path.is_file():
            raise AdvbgError(f"output {path} is not a regular file (a device, FIFO or socket); give a file name")
    if not path.parent.exists():
        raise AdvbgError(f"folder {path.parent} does not exist")
    for given in inputs:
        if given is None or str(given) == "-":
            continue
        if _same_path(path, Path(given), folder):
            raise AdvbgError(f"output {path} is an input of this command ({given}); writing it would replace "
                             f"that input: choose another output")
        if _inside_folder(path, Path(given)):
            raise AdvbgError(f"output {path} is inside the input folder {given} of this command; writing there "
                             f"could replace an input file: choose an output outside it")
    if suffixes and path.suffix.lower() not in suffixes:
        raise AdvbgError(f"output file {path} must end in {' or '.join(suffixes)}")


# Room kept for the temporary names outputs are written under (".NAME.XXXXXXXX.partial") before their rename.
_TEMP_EXTRA = 24


def check_file_name(name: str, folder: str | os.PathLike = ".", what: str = "output file name") -> None:
    """Refuse a file name the folder's file system cannot hold (with room for advbg's temporary names)."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(os.fsencode(name)) + _TEMP_EXTRA > limit:
        raise AdvbgError(f"{what} {name[:40]}... is {len(os.fsencode(name))} bytes long; the file system allows "
                         f"{limit} and advbg needs {_TEMP_EXTRA} of them for temporary names: use a shorter name")


def _same_path(out: Path, given: Path, folder: bool) -> bool:
    """The output is the input, or (an output folder) holds it."""
    try:
        if out.exists() and given.exists() and os.path.samefile(out, given):
            return True
        o, g = out.resolve(), given.resolve()
    except OSError:
        return False
    return o == g or (folder and o in g.parents)


def _inside_folder(out: Path, given: Path) -> bool:
    """The output lies inside the folder ``given`` (links followed), wherever it is in that tree."""
    try:
        if not given.is_dir():
            return False
        o, g = out.resolve(), given.resolve()
    except (OSError, RuntimeError):   # a loop of links: the other checks say what is wrong with the path
        return False
    return g in o.parents


def save_figure(fig, path: str | os.PathLike, dpi: int = 90, metadata: dict | None = None) -> Path:
    """Save a matplotlib figure as PNG atomically (temporary name, then rename) and close it; ``metadata``: PNG
    text entries."""
    import matplotlib.pyplot as plt  # deferred: heavy or optional dependency, loaded only when used

    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png", metadata=metadata)
    finally:
        plt.close(fig)
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _clean(o):
    """JSON-safe copy: NaN/inf -> None, numpy scalars/arrays -> Python."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    return o


def json_text(obj) -> str:
    """The JSON advbg writes: indented, NaN/inf as null, numpy values as Python ones."""
    return json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json_text(obj))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def now() -> str:
    """UTC timestamp as stored in every artifact (ISO 8601, to the second)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
