"""Ingest the released ImageNet-9 test data (``bg_challenge/``) into an advbg store.

Layout read (class folder names contain spaces; label = index in sorted folder order)::

    <root>/original/val/<NN_class>/<stem>.JPEG      -> foreground image
    <root>/fg_mask/val/<NN_class>/<stem>.npy        -> its 2-D 0/1 mask
    <root>/only_bg_t/val/<NN_class>/<stem>.JPEG     -> background (same source id = stem)
    <root>/<other variant>/val/<NN_class>/<file>    -> evaluation set /evalsets/<variant> (see docs/data.md)

Every folder and file is read only if its real path (links followed) lies inside the release; every file is
checked (readable, same size as the others, mask matches its image); every item (source id) that some variant has
and original/ lacks, and every photo that an evaluation set read lacks, is named. Each problem is reported with
its file, then ingest fails, or with ``skip_bad`` leaves those items out and records how many.
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
# Released variants named fg_<source id>_bg_<source id>, in the foreground's class folder.
_MIXED = {"mixed_same", "mixed_next", "mixed_rand"}
_TIED = _FG_FROM_STEM | _BG_FROM_STEM | _MIXED   # evaluation sets whose files name their item
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
    without_photo: int = 0                    # items some variant has and original/ lacks (part of ``skipped``)
    missing_from_evalsets: int | None = None  # photos some evaluation set lacks (None: no evaluation set read)

    def summary(self) -> str:
        sets = ", ".join(f"{k} {v}" for k, v in sorted(self.evalsets.items())) or "none"
        line = (f"wrote {self.path}: {self.n_foregrounds} foregrounds, {self.n_backgrounds} backgrounds, "
                f"{len(self.class_names)} classes; evaluation sets: {sets}; skipped {self.skipped} bad item(s), "
                f"{self.without_photo} of them without a photo in {FG_VARIANT}/")
        if self.missing_from_evalsets is not None:
            line += f"; {self.missing_from_evalsets} photo(s) missing from some evaluation set"
        return line


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


def _outside(path: Path, real_root: Path) -> str | None:
    """Why ``path`` is not read (None: its real path, every link on the way followed, lies inside ``real_root``)."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError):   # a loop of links
        return "a loop of symbolic links"
    if target.is_relative_to(real_root):
        return None
    return f"a link leading out of the release folder (to {target})"


def file_problem(path: Path, root: Path | None = None) -> str | None:
    """Why ``path`` cannot be read as a data file (None: a regular file inside ``root``): a link anywhere on the
    way out of the release folder, a dangling link, or not a regular file (FIFO, device, socket; opening one can
    block)."""
    try:
        st = path.stat()
    except OSError:
        return "a dangling link" if path.is_symlink() else "cannot be read"
    why = _outside(path, root.resolve()) if root is not None else None
    if why:
        return f"{why}; copy the file in instead"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a FIFO, device or socket, or a link to one)"
    return None


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        return []
    # Everything with such a name but folders: a FIFO, device or dangling link is reported as a bad item when
    # read (file_problem), never dropped without a word.
    return [p for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes and not p.is_dir()]


def _item(variant: str, stem: str) -> str | None:
    """The source id of the item a released file of ``variant`` belongs to (None: a variant or name advbg cannot
    tie to an item)."""
    if variant in (FG_VARIANT, MASK_DIR, BG_VARIANT) or variant in _FG_FROM_STEM | _BG_FROM_STEM:
        return stem
    m = _MIXED_NAME.match(stem)
    return m["fg"] if variant in _MIXED and m else None


class _Release:
    """The release's folders, each listed once. A folder whose real path lies outside the release is reported once
    and never listed (its listing is None)."""

    def __init__(self, root: Path, problem: Callable[[Path, str], None]):
        self.root, self.real, self.problem = root, root.resolve(), problem
        for folder in (root / FG_VARIANT, root / FG_VARIANT / "val"):
            why = _outside(folder, self.real)
            if why:
                raise AdvbgError(f"{folder} is {why}; copy the release into one folder")
        self.folders = sorted(p.name for p in (root / FG_VARIANT / "val").iterdir() if p.is_dir())
        self._listings: dict[str, dict[str, list[Path] | None] | None] = {}

    def listing(self, variant: str) -> dict[str, list[Path] | None] | None:
        """Class folder -> the files of ``variant`` in it (None: not read); None when no folder of it is read."""
        if variant not in self._listings:
            self._listings[variant] = self._list(variant)
        return self._listings[variant]

    def _not_read(self, folder: Path) -> bool:
        why = _outside(folder, self.real) if os.path.lexists(folder) else None
        if why:
            self.problem(folder, f"{why}; nothing in it is read")
        return why is not None

    def _list(self, variant: str) -> dict[str, list[Path] | None] | None:
        val = self.root / variant / "val"
        if self._not_read(val.parent) or self._not_read(val):
            return None
        suffixes = (".npy",) if variant == MASK_DIR else IMAGE_EXTS
        listing = {f: None if self._not_read(val / f) else _files(val / f, suffixes) for f in self.folders}
        for p in sorted(val.iterdir()) if val.is_dir() else []:
            if p.name not in listing and p.is_dir():
                self.problem(p, f"a class folder that {FG_VARIANT}/val lacks; nothing in it is read")
        return listing

    def by_item(self, variant: str, folder: str) -> dict[str, Path] | None:
        """Item (source id) -> a file of ``variant`` in class ``folder``; None: that folder is not read."""
        listing = self.listing(variant)
        files = None if listing is None else listing[folder]
        if files is None:
            return None
        return {item: p for p in files if (item := _item(variant, p.stem)) is not None}

    def leads_out(self, variant: str, folder: str) -> str:
        return f"{variant}/val/{folder} leads out of the release folder"

    def without_photo(self, variants: list[str]) -> list[tuple[Path, str]]:
        """(original/val/<folder>/<item>, why) for every item some of ``variants`` has and original/ lacks."""
        found = []
        for folder in self.folders:
            photos = self.by_item(FG_VARIANT, folder)
            having: dict[str, list[str]] = {}
            for v in variants:
                for item in self.by_item(v, folder) or {}:
                    having.setdefault(item, []).append(v)
            for item in sorted(set(having) - set(photos or {})):
                why = "no photo" if photos is not None else f"no photo read ({self.leads_out(FG_VARIANT, folder)})"
                found.append((self.root / FG_VARIANT / "val" / folder / item,
                              f"{why}, but {', '.join(sorted(having[item]))} have this item; left out"))
        return found

    def missing_from(self, variants: list[str]) -> list[tuple[Path, str]]:
        """(photo, why) for every photo of original/ that some of ``variants`` (read ones) lacks."""
        found = []
        for folder in self.folders:
            have = {v: self.by_item(v, folder) for v in variants}
            for item, photo in (self.by_item(FG_VARIANT, folder) or {}).items():
                lacking = sorted(v for v, items in have.items() if items is not None and item not in items)
                if lacking:
                    found.append((photo, f"missing from {', '.join(lacking)}"))
        return found


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
    """One ingest run: holds the release's listings, the writer, the id tables and the problem list."""

    def __init__(self, root: Path, report: IngestReport, on_problem: Callable[[str], None], progress: bool):
        self.root, self.report, self.on_problem, self.progress = root, report, on_problem, progress
        self.release = _Release(root, self.problem)
        self.folders = self.release.folders
        self.fg_ids: dict[str, int] = {}
        self.bg_ids: dict[str, int] = {}

    def start(self, writer: StoreWriter) -> None:
        self.w, self.size = writer, writer.image_size

    def problem(self, path: Path, what: str) -> None:
        line = f"{path.relative_to(self.root)}: {what}"
        self.report.problems.append(line)
        self.on_problem(line)

    def survey(self, evalsets: list[str]) -> list[tuple[int, str, Path]]:
        """List every folder to be read (reporting those leading out of the release) and check the items
        (``check_items``); return (label, class folder, photo) of every photo in original/ that is read."""
        for variant in [MASK_DIR, BG_VARIANT] + evalsets:
            self.release.listing(variant)
        items = [(label, folder, p) for label, folder in enumerate(self.folders)
                 for p in (self.release.by_item(FG_VARIANT, folder) or {}).values()]
        if not items:
            raise AdvbgError(f"{self.root}/original/val has class folders but no images ({', '.join(IMAGE_EXTS)})")
        self.check_items(evalsets)
        return items

    def check_items(self, evalsets: list[str]) -> None:
        """Report every item that some variant has and original/ lacks (left out), and every photo that an
        evaluation set lacks."""
        tied = [v for v in evalsets if v in _TIED]
        for path, what in self.release.without_photo([MASK_DIR, BG_VARIANT] + tied):
            self.problem(path, what)
            self.report.skipped += 1
            self.report.without_photo += 1
        if evalsets:
            gaps = self.release.missing_from(tied)
            for path, what in gaps:
                self.problem(path, what)
            self.report.missing_from_evalsets = len(gaps)

    def _companion(self, variant: str, folder: str, stem: str, what: str) -> tuple[Path | None, str | None]:
        """The file of ``variant`` for item ``stem`` and None, or None and why there is none."""
        files = self.release.by_item(variant, folder)
        if files is None:
            return None, f"{what} not read ({self.release.leads_out(variant, folder)})"
        if stem not in files:
            return None, f"missing {what}"
        return files[stem], None

    def ingest_items(self, items: list[tuple[int, str, Path]]) -> None:
        has_bg = self.release.listing(BG_VARIANT) is None or (self.root / BG_VARIANT / "val").is_dir()
        for label, folder, path in progress_bar(items, desc="foregrounds", unit="img", enabled=self.progress):
            image, why = read_rgb(path, self.size, self.root)
            bad = [(path, why)] if why else []
            mask_path, why = self._companion(MASK_DIR, folder, path.stem, f"mask {path.stem}.npy")
            mask = None
            if mask_path is not None:
                mask, why = read_mask(mask_path, self.size, self.root)
            if why:
                bad.append((mask_path or path, why))
            bg = None
            if has_bg:
                bg_path, why = self._companion(BG_VARIANT, folder, path.stem, f"{BG_VARIANT} image for {path.stem}")
                if bg_path is not None:
                    bg, why = read_rgb(bg_path, self.size, self.root)
                if why:
                    bad.append((bg_path or path, why))
            for p, what in bad:
                self.problem(p, what)
            if bad:
                self.report.skipped += 1
                continue
            self.fg_ids[path.stem] = self.w.add_foreground(image, mask, label, path.stem)
            if bg is not None:
                self.bg_ids[path.stem] = self.w.add_background(bg, label, path.stem)

    def ingest_evalset(self, variant: str) -> int | None:
        """Store ``variant`` as /evalsets/<variant>; its number of images, None when no folder of it is read."""
        listing = self.release.listing(variant)
        if listing is None:
            return None
        files = [(label, p) for label, folder in enumerate(self.folders) for p in listing[folder] or []]
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
    _refuse_output_in_release(out, root)
    check_output(out, (".h5",), inputs=[root])
    report = IngestReport(path=Path(out), class_names=())
    run = _Ingest(root, report, on_problem or _stderr_report, progress)
    if not run.folders:
        raise AdvbgError(f"{root}/original/val has no class folders")
    report.class_names = class_names_for(run.folders)
    variants = _evalset_variants(root) if evalsets else []
    items = run.survey(variants)
    writer = StoreWriter(out, class_names=report.class_names, overwrite=overwrite,
                         image_size=_reference_size([p for *_, p in items if file_problem(p, root) is None]),
                         attrs=dict(source="ImageNet-9 release (bg_challenge)", release_root=str(root.resolve())))
    run.start(writer)
    try:
        run.ingest_items(items)
        for variant in variants:
            n = run.ingest_evalset(variant)
            if n is not None:
                report.evalsets[variant] = n
        if report.problems and not skip_bad:
            raise AdvbgError(f"{len(report.problems)} problem(s) in {root} (listed above; first: "
                             f"{report.problems[0]}); fix them or pass --skip-bad to leave those items out")
        report.n_foregrounds, report.n_backgrounds = len(run.fg_ids), len(run.bg_ids)
        writer.file.attrs.update(skipped_items=report.skipped, skipped_report=json.dumps(report.problems),
                                 items_without_photo=report.without_photo,
                                 missing_from_evalsets=report.missing_from_evalsets or 0)
    except BaseException:
        writer.close(success=False)
        writer.temporary.unlink(missing_ok=True)
        raise
    writer.close(success=True)
    return report


def _refuse_output_in_release(out: str | os.PathLike, root: Path) -> None:
    """Refuse an output inside the release folder (links followed): writing there could replace a release file."""
    try:
        real = Path(out).resolve()
    except (OSError, RuntimeError):   # a loop of links: check_output says what is wrong with the path
        return
    if real.is_relative_to(root.resolve()):
        raise AdvbgError(f"output {out} is inside the release folder {root}, the input of this command; writing "
                         f"there could replace a release file: choose an output outside it")


def _evalset_variants(root: Path) -> list[str]:
    skip = {FG_VARIANT, BG_VARIANT, MASK_DIR}
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in skip and (p / "val").is_dir())
