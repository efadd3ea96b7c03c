"""Ingest the released ImageNet-9 test data (``bg_challenge/``) into an advbg store.

Layout read (class folder names contain spaces; label = index in sorted folder order)::

    <root>/original/val/<NN_class>/<stem>.JPEG      -> foreground image
    <root>/fg_mask/val/<NN_class>/<stem>.npy        -> its 2-D 0/1 mask
    <root>/only_bg_t/val/<NN_class>/<stem>.JPEG     -> background (same source id = stem)
    <root>/<other variant>/val/<NN_class>/<file>    -> evaluation set /evalsets/<variant> (see docs/data.md)

Every file is checked (readable, same size as the others, mask matches its image); each problem is reported
with its file, then ingest fails, or with ``skip_bad`` leaves those items out and records how many.
"""
from __future__ import annotations

import json
import os
import re
import stat
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from advbg.data.imageio import check_mask, read_image
from advbg.data.labels import IN9_CLASSES, IN9_FOLDERS
from advbg.data.variants import EvalsetWriter
from advbg.data.writer import StoreWriter
from advbg.errors import AdvbgError
from advbg.files import check_output
from advbg.progress import progress as progress_bar
from advbg.progress import progress_write

IMAGE_EXTS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FG_VARIANT, BG_VARIANT, MASK_DIR = "original", "only_bg_t", "fg_mask"
# Released variants whose file stem is the photo's own source id: which side of the photo they show.
_FG_FROM_STEM = {"only_fg"}
_BG_FROM_STEM = {"no_fg", "only_bg_b"}
_MIXED_NAME = re.compile(r"^fg_(?P<fg>.+?)_bg_(?P<bg>.+)$")
# Median |difference| (0-255) above which a name-claimed fg/bg is judged not to be the one in the pixels;
# JPEG re-encoding stays far below it, a different photo far above.
_PROVENANCE_TOLERANCE = 20.0


@dataclass
class IngestReport:
    """What ``ingest_in9`` wrote: counts, skipped items and the problems found (``file: what``)."""

    path: Path
    class_names: tuple[str, ...]
    n_foregrounds: int = 0
    n_backgrounds: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    evalsets: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        sets = ", ".join(f"{k} {v}" for k, v in sorted(self.evalsets.items())) or "none"
        return (f"wrote {self.path}: {self.n_foregrounds} foregrounds, {self.n_backgrounds} backgrounds, "
                f"{len(self.class_names)} classes; evaluation sets: {sets}; skipped {self.skipped} bad item(s)")


def find_release_root(path: str | os.PathLike) -> Path:
    """The folder holding ``original/val`` (``path`` itself or ``path/bg_challenge``)."""
    path = Path(path)
    for cand in (path, path / "bg_challenge"):
        if (cand / FG_VARIANT / "val").is_dir():
            return cand
    raise AdvbgError(f"{path} is not the released IN-9 layout: expected {path}/original/val/<NN_class>/... "
                     f"(or {path}/bg_challenge/original/val/...); get it with `advbg fetch in9 --dest DIR`")


def class_names_for(folders: list[str]) -> tuple[str, ...]:
    """Store class names for sorted class folders: IN-9's names for IN-9's folders, else the folder minus 'NN_'."""
    if tuple(folders) == IN9_FOLDERS:
        return IN9_CLASSES
    return tuple(re.sub(r"^\d+_", "", f) for f in folders)


def _images_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    # Everything with an image name but folders: a FIFO, device or dangling link is reported as a bad item
    # (file_problem), never dropped without a word.
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTS and not p.is_dir()}


def file_problem(path: Path, root: Path | None = None) -> str | None:
    """Why ``path`` cannot be read as a data file (None: a regular file inside ``root``): a link leading out of
    the data folder, a dangling link, or not a regular file (FIFO, device, socket; opening one can block)."""
    try:
        st = path.stat()
    except OSError:
        return "a dangling link" if path.is_symlink() else "cannot be read"
    if root is not None and path.is_symlink() and not path.resolve().is_relative_to(root.resolve()):
        return f"a link leading out of the data folder (to {path.resolve()}); copy the file in instead"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a FIFO, device or socket, or a link to one)"
    return None


def _image_size(path: Path) -> tuple[int, int] | None:
    """(H, W) from the header only; None when the header cannot be read (read_image then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return im.size[1], im.size[0]
    except Exception:  # noqa: BLE001 - any header failure (incl. Pillow's bomb guard) is reported by read_rgb
        return None


def read_rgb(path: Path, size: tuple[int, int], root: Path | None = None) -> tuple[np.ndarray | None, str | None]:
    """(uint8 HxWx3 RGB image, None) or (None, what is wrong), decoded by advbg.data.imageio's rules (as the
    reference: no EXIF rotation)."""
    why = file_problem(path, root)
    if why:
        return None, why
    try:
        arr = read_image(path)
    except AdvbgError as e:
        return None, str(e).removeprefix(f"refusing {path}: ")
    if arr.shape[:2] != size:
        return None, f"image is {arr.shape[1]}x{arr.shape[0]}, the others are {size[1]}x{size[0]}"
    return arr, None


def read_mask(path: Path, size: tuple[int, int], root: Path | None = None) -> tuple[np.ndarray | None, str | None]:
    """(uint8 HxW 0/1 mask, None) or (None, what is wrong), checked by advbg.data.imageio.check_mask."""
    if not os.path.lexists(path):
        return None, f"missing mask {path.name}"
    why = file_problem(path, root)
    if why:
        return None, f"mask {path.name}: {why}"
    try:
        why = _mask_header_problem(path, size)
        if why:
            return None, why
        m = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, MemoryError) as e:
        return None, f"unreadable mask {path.name} ({type(e).__name__}: {e})"
    try:
        return check_mask(m, size, name=f"mask {path.name}"), None
    except AdvbgError as e:
        return None, str(e)


def _mask_header_problem(path: Path, size: tuple[int, int]) -> str | None:
    """What is wrong with a mask .npy judged from its header alone (None: fine), so that a header declaring a
    huge array is refused before anything is allocated."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            return f"mask {path.name} is a .npy of format version {version}; expected 1.0 or 2.0"
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f, max_header_size=10_000)
        data_bytes = os.fstat(f.fileno()).st_size - f.tell()
    if shape not in (size, size + (1,)):
        return f"mask {path.name} has shape {shape}, expected {size} (the image's)"
    if dtype.hasobject or dtype.kind not in "biuf":
        return f"mask {path.name} has dtype {dtype}, expected numbers"
    if data_bytes < int(np.prod(shape)) * dtype.itemsize:
        return f"mask {path.name} is truncated ({data_bytes} bytes of data for {shape} {dtype})"
    return None


def _reference_size(paths: list[Path]) -> tuple[int, int]:
    sizes = Counter(s for s in map(_image_size, paths) if s is not None)
    if not sizes:
        raise AdvbgError(f"none of the {len(paths)} original images could be read")
    return sizes.most_common(1)[0][0]


def _stderr_report(line: str) -> None:
    progress_write(line)


class _Ingest:
    """One ingest run: holds the writer, the id tables and the problem list."""

    def __init__(self, root: Path, writer: StoreWriter, folders: list[str], size: tuple[int, int],
                 report: IngestReport, on_problem: Callable[[str], None], progress: bool):
        self.root, self.w, self.folders, self.size = root, writer, folders, size
        self.report, self.on_problem, self.progress = report, on_problem, progress
        self.fg_ids: dict[str, int] = {}
        self.bg_ids: dict[str, int] = {}

    def problem(self, path: Path, what: str) -> None:
        line = f"{path.relative_to(self.root)}: {what}"
        self.report.problems.append(line)
        self.on_problem(line)

    def ingest_items(self, items: list[tuple[int, str, Path]]) -> None:
        has_bg = (self.root / BG_VARIANT / "val").is_dir()
        bg_files = {f: _images_by_stem(self.root / BG_VARIANT / "val" / f) for f in self.folders}
        for label, folder, path in progress_bar(items, desc="foregrounds", unit="img", enabled=self.progress):
            image, why = read_rgb(path, self.size, self.root)
            bad = [(path, why)] if why else []
            mask_path = self.root / MASK_DIR / "val" / folder / f"{path.stem}.npy"
            mask, why = read_mask(mask_path, self.size, self.root)
            if why:
                bad.append((path if not os.path.lexists(mask_path) else mask_path, why))
            bg = None
            if has_bg:
                bg_path = bg_files[folder].get(path.stem)
                if bg_path is None:
                    bad.append((path, f"missing {BG_VARIANT} image for {path.stem}"))
                else:
                    bg, why = read_rgb(bg_path, self.size, self.root)
                    if why:
                        bad.append((bg_path, why))
            for p, what in bad:
                self.problem(p, what)
            if bad:
                self.report.skipped += 1
                continue
            self.fg_ids[path.stem] = self.w.add_foreground(image, mask, label, path.stem)
            if bg is not None:
                self.bg_ids[path.stem] = self.w.add_background(bg, label, path.stem)

    def ingest_evalset(self, variant: str) -> int:
        base = self.root / variant / "val"
        files = [(label, p) for label, folder in enumerate(self.folders)
                 for p in _images_by_stem(base / folder).values()]
        ew = EvalsetWriter(self.w.file, variant, self.size, attrs=dict(
            origin="released", provenance="fg_id/bg_id from file names, checked against the pixels; "
                                          "-1 where the name is absent or the pixels disagree"))
        counts = Counter()
        for label, p in progress_bar(files, desc=variant, unit="img", enabled=self.progress):
            image, why = read_rgb(p, self.size, self.root)
            if why:
                self.problem(p, why)
                counts["skipped"] += 1
                continue
            fg_id, bg_id = self._provenance(variant, p.stem, image, counts)
            ew.append(image, label, p.stem, fg_id, bg_id)
        ew.close(**{f"n_{k}": v for k, v in counts.items()})
        return ew.n

    def _provenance(self, variant: str, stem: str, image: np.ndarray, counts: Counter) -> tuple[int, int]:
        if variant in _FG_FROM_STEM:
            return self.fg_ids.get(stem, -1), -1
        if variant in _BG_FROM_STEM:
            return -1, self.bg_ids.get(stem, -1)
        m = _MIXED_NAME.match(stem)
        if not m:
            return -1, -1
        fg_id, bg_id = self.fg_ids.get(m["fg"], -1), self.bg_ids.get(m["bg"], -1)
        if fg_id < 0:
            return -1, -1
        mask = self.w.file["foregrounds/mask"][fg_id].astype(bool)
        if not _close(image[mask], self.w.file["foregrounds/image"][fg_id][mask]):
            counts["unverified_fg"] += 1
            fg_id = -1
        if bg_id >= 0 and not _close(image[~mask], self.w.file["backgrounds/image"][bg_id][~mask]):
            counts["unverified_bg"] += 1
            bg_id = -1
        return fg_id, bg_id


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    if a.size == 0:
        return True
    return float(np.median(np.abs(a.astype(np.int16) - b.astype(np.int16)))) <= _PROVENANCE_TOLERANCE


def ingest_in9(path: str | os.PathLike, out: str | os.PathLike, *, skip_bad: bool = False,
               overwrite: bool = False, evalsets: bool = True, progress: bool = True,
               on_problem: Callable[[str], None] | None = None) -> IngestReport:
    """Build a store from the released layout at ``path``; return what was written.

    Problems are passed to ``on_problem`` (default: one line each on stderr) as ``file: what is wrong``. Without
    ``skip_bad`` any problem fails the ingest (no store is left behind); with it, bad items are left out and
    their number is stored in the attrs ``skipped_items`` / ``skipped_report``. ``evalsets=False`` skips the
    other variant folders (about 0.5 GB of pixels each for the full release).
    """
    root = find_release_root(path)
    check_output(out, inputs=[root])
    folders = sorted(p.name for p in (root / FG_VARIANT / "val").iterdir() if p.is_dir())
    if not folders:
        raise AdvbgError(f"{root}/original/val has no class folders")
    items = _items_of(root, folders)
    if not items:
        raise AdvbgError(f"{root}/original/val has class folders but no images ({', '.join(IMAGE_EXTS)})")
    report = IngestReport(path=Path(out), class_names=class_names_for(folders))
    writer = StoreWriter(out, class_names=report.class_names, overwrite=overwrite,
                         image_size=_reference_size([p for *_, p in items if file_problem(p, root) is None]),
                         attrs=dict(source="ImageNet-9 release (bg_challenge)", release_root=str(root.resolve())))
    run = _Ingest(root, writer, folders, writer.image_size, report, on_problem or _stderr_report, progress)
    try:
        run.ingest_items(items)
        for variant in _evalset_variants(root) if evalsets else []:
            report.evalsets[variant] = run.ingest_evalset(variant)
        if report.problems and not skip_bad:
            raise AdvbgError(f"{len(report.problems)} problem(s) in {root} (listed above; first: "
                             f"{report.problems[0]}); fix them or pass --skip-bad to leave those items out")
        report.n_foregrounds, report.n_backgrounds = len(run.fg_ids), len(run.bg_ids)
        writer.file.attrs.update(skipped_items=report.skipped, skipped_report=json.dumps(report.problems))
    except BaseException:
        writer.close(success=False)
        writer.temporary.unlink(missing_ok=True)
        raise
    writer.close(success=True)
    return report


def _items_of(root: Path, folders: list[str]) -> list[tuple[int, str, Path]]:
    return [(label, folder, p) for label, folder in enumerate(folders)
            for p in _images_by_stem(root / FG_VARIANT / "val" / folder).values()]


def _evalset_variants(root: Path) -> list[str]:
    skip = {FG_VARIANT, BG_VARIANT, MASK_DIR}
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in skip and (p / "val").is_dir())
