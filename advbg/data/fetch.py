"""Getting the released ImageNet-9 test data: download with a progress bar, SHA-256 check, safe unpack.

``fetch_in9(dest)`` downloads the release archive (or takes one placed by hand, ``archive=``), checks its
SHA-256 and unpacks it into ``dest`` (giving ``dest/bg_challenge``). The unpacker refuses any archive with a
member that could land outside ``dest`` before writing a single file.
"""
from __future__ import annotations

import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from advbg.errors import AdvbgError
from advbg.files import atomic_output, commit_partial, partial_path, sha256_file
from advbg.progress import progress as progress_bar

IN9_URL = "https://github.com/MadryLab/backgrounds_challenge/releases/download/data/backgrounds_challenge_data.tar.gz"
# Pinned by a downstream project; advbg has not re-derived it from a download (no network where it was built).
IN9_SHA256 = "2d66f571b0492986b347e37d2ee498ed34b58012af425d772dacda4422896fe7"
IN9_ARCHIVE = "backgrounds_challenge_data.tar.gz"
IN9_ROOT = "bg_challenge"
# Seconds per socket operation (connect, each read): fail fast offline, tolerate a slow but live server.
TIMEOUT_S = 15.0
_CHUNK = 1 << 20
# What a damaged archive raises while being read: truncated gzip/bz2/xz streams surface as EOFError or zlib.error.
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)



def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise AdvbgError unless the file's SHA-256 equals ``expected`` (case-insensitive hex)."""
    expected = expected.strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise AdvbgError(f"--sha256 must be 64 hex digits, got {expected!r}")
    got = sha256_file(path)
    if got != expected:
        raise AdvbgError(f"SHA-256 mismatch for {path}: expected {expected}, got {got}; the file is corrupt or "
                         f"not the release archive (delete it and fetch again, or pass --sha256 {got} if you "
                         f"trust this file)")


def download(url: str, path: str | os.PathLike, *, timeout: float = TIMEOUT_S, progress: bool = True) -> Path:
    """Download ``url`` to ``path`` (``atomic_output``: renamed when complete) with a progress bar."""
    path = Path(path)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_output(path) as tmp, \
                open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with progress_bar(total=total, unit="B", unit_scale=True, desc=path.name, enabled=progress) as bar:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise AdvbgError(f"could not download {url} ({reason}). Offline? Download the archive on another machine, "
                         f"place it here by hand and run: advbg fetch in9 --dest {path.parent} --archive "
                         f"PATH/{path.name}") from None
    return path


# --------------------------------------------------------------------------------------------- unpacking
def _inside(path: str, dest: Path) -> bool:
    """Whether ``path`` stays inside ``dest`` lexically (links already on disk are kept out by other checks)."""
    return Path(os.path.normpath(path)).is_relative_to(dest)


def _check_member(m: tarfile.TarInfo, dest: Path) -> str | None:
    """Why this member is unsafe to unpack into ``dest``, or None when it is safe.

    Checked lexically: pre-existing files cannot interfere because members are unpacked into a fresh
    temporary folder; link chains built inside the archive are caught there by tarfile's ``data`` filter.
    """
    name = m.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", name):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' in path"
    if not _inside(str(dest / name), dest):
        return "path outside the destination"
    if m.issym() or m.islnk():
        link = m.linkname
        if link.startswith("/") or PurePosixPath(link).is_absolute():
            return f"link to absolute path {link!r}"
        base = (dest / name).parent if m.issym() else dest
        if not _inside(str(base / link), dest):
            return f"link pointing outside the destination ({link!r})"
    elif not (m.isfile() or m.isdir()):
        return "device, fifo or other special file"
    return None


def safe_unpack(archive: str | os.PathLike, dest: str | os.PathLike, *, progress: bool = True) -> list[str]:
    """Unpack a tar archive into ``dest`` and return its top-level names.

    Every member is checked first; an archive with any absolute name, ``..`` component, link leading outside
    ``dest`` or special file is refused as a whole (nothing written). Members are unpacked into a temporary
    folder inside ``dest`` and moved into place only when all of them were written.
    """
    dest = Path(dest).resolve()
    try:
        tar = tarfile.open(archive, "r:*")
        members = tar.getmembers()
    except _READ_ERRORS as e:
        why = ("it ends early (truncated): download it again" if isinstance(e, (EOFError, zlib.error))
               or "unexpected end" in str(e).lower() else "it is not a (compressed) tar archive")
        raise AdvbgError(f"{archive} is not a readable tar archive ({type(e).__name__}: {e}); {why}") from None
    with tar:
        bad = [(m.name, why) for m in members if (why := _check_member(m, dest))]
        if bad:
            shown = "; ".join(f"{n!r}: {w}" for n, w in bad[:5])
            raise AdvbgError(f"refusing to unpack {archive}: {len(bad)} unsafe member(s) ({shown}); "
                             f"nothing was written")
        tops = sorted({PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts})
        clash = [t for t in tops if os.path.lexists(dest / t)]
        if clash:
            raise AdvbgError(f"{dest / clash[0]} already exists; delete it or choose another --dest")
        if not hasattr(tarfile, "data_filter"):  # the second guard below needs Python 3.10.12+ / 3.11.4+
            raise AdvbgError("safe unpacking needs Python >= 3.10.12 (or >= 3.11.4) for tarfile's data filter; "
                             "upgrade Python, or unpack the archive yourself and run `advbg ingest in9`")
        dest.mkdir(parents=True, exist_ok=True)   # only now: a refused archive leaves no folder behind
        # The whole archive is unpacked into one hidden folder first, so tarfile's data filter judges every link
        # against the archive's real layout (members staged one by one under other names let a chain of links
        # through), and each top-level entry appears at its name only once every member was written.
        staging = partial_path(dest / "unpack")
        _remove_tree(staging)                       # left by a killed unpack
        try:
            staging.mkdir()
            for m in progress_bar(members, desc="unpacking", unit="file", enabled=progress):
                tar.extract(m, staging, set_attrs=False, filter="data")
            for t in tops:
                commit_partial(dest / t, folder=(staging / t).is_dir() and not (staging / t).is_symlink(),
                               src=staging / t)
        except _READ_ERRORS as e:
            why = ("the archive ends early (truncated)" if isinstance(e, (EOFError, zlib.error))
                   or "unexpected end" in str(e).lower() else "the archive is damaged")
            raise AdvbgError(f"unpacking {archive} failed ({type(e).__name__}: {e}); {why}") from None
        finally:
            _remove_tree(staging)
    return tops


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def fetch_in9(dest: str | os.PathLike, *, archive: str | os.PathLike | None = None, sha256: str | None = None,
              url: str | None = None, timeout: float = TIMEOUT_S, keep_archive: bool = True,
              progress: bool = True) -> Path:
    """Get the released IN-9 test data into ``dest`` and return ``dest/bg_challenge``.

    ``archive``: an archive placed by hand (verified and unpacked, nothing downloaded). Otherwise the archive
    is downloaded into ``dest`` (an earlier complete download there is reused after its checksum passes).
    """
    dest, sha256, url = Path(dest), sha256 or IN9_SHA256, url or IN9_URL
    root = dest / IN9_ROOT
    if (root / "original" / "val").is_dir():
        return root
    if dest.exists() and not dest.is_dir():
        raise AdvbgError(f"--dest {dest} is not a folder")
    created = not dest.exists()
    try:
        if archive is not None:
            archive = Path(archive)
            if not archive.is_file():
                raise AdvbgError(f"--archive {archive} does not exist or is not a file")
            verify_sha256(archive, sha256)
            dest.mkdir(parents=True, exist_ok=True)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            archive = dest / IN9_ARCHIVE
            if not archive.is_file():
                download(url, archive, timeout=timeout, progress=progress)
            verify_sha256(archive, sha256)
        tops = safe_unpack(archive, dest, progress=progress)
    except BaseException:
        if created and dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()   # a refusal leaves no trace: the folder it made is removed again
        raise
    if not keep_archive and archive.parent.resolve() == dest.resolve():
        archive.unlink()
    if not (root / "original" / "val").is_dir():
        raise AdvbgError(f"{archive} unpacked to {', '.join(tops) or 'nothing'}, not {IN9_ROOT}/original/val: "
                         f"is it the backgrounds-challenge release archive?")
    return root
