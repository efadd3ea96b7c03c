"""Build a store from photos + boxes and/or masks: reference resize/crop, GrabCut or given masks, Only-BG-T.

Boxes come from a folder of ImageNet / PASCAL VOC XML files (searched recursively; coordinates 1-based
inclusive, as in VOC) or from a CSV ``file,xmin,ymin,xmax,ymax,label`` (0-based pixels, xmax/ymax exclusive,
``file`` relative to the image folder; one row per box). Each photo becomes a foreground, a background, both
or nothing, according to the filters (see ``ExtractConfig``); every drop is counted with its reason, printed
and stored in the store attrs, and what happened to each photo is kept in ``/extract_log``.

Masks may be given instead of (or besides) GrabCut: a folder of per-photo mask files (``MASK_EXTS``), matched
to the photos by relative path and stem (see ``read_mask`` and ``choose_object`` for how a file becomes the
object's 0/1 mask). With masks and no boxes, each photo's box is its mask's tight bound and its label is its
class folder (the first folder of its path under the image folder). Each foreground's mask source
("grabcut" or "given:<mask folder>") is kept in ``/foregrounds/mask_source``.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import multiprocessing as mp
import os
import time
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import h5py
import numpy as np
from PIL import Image, UnidentifiedImageError

from advbg.data import segment
from advbg.data.imageio import DEFAULT_MAX_PIXELS, read_image
from advbg.data.labels import IN9_CLASSES, class_index, imagenet_to_in9
from advbg.data.writer import StoreWriter
from advbg.errors import AdvbgError
from advbg.files import check_output
from advbg.progress import progress as progress_bar

IMAGE_EXTS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MASK_EXTS = (".png", ".npy", ".bmp", ".tif", ".tiff")   # lossless only: a JPEG mask's edges are noise
GRABCUT = "grabcut"
VOID = 255   # in an instance-id mask: PASCAL VOC's "void" outline, part of no instance
FILTERS = ("reference", "sehwag")
_STR = h5py.string_dtype("utf-8")

# Why a photo yields no foreground and/or no background (keys of the summary and of /extract_log).
REASONS = {
    "unreadable": "the image file could not be decoded",
    "box_count": "not exactly one bounding box",
    "mask_missing": "masks but no boxes were given, and this photo has no mask file",
    "mask_unreadable": "the mask file cannot be read as one channel of non-negative whole numbers",
    "mask_size": "the mask is not the size of its image",
    "mask_empty": "the mask has no object pixel (with a box: no instance inside the box)",
    "mask_full": "the object covers the whole image (no background pixel)",
    "mask_no_image": "a mask file that matches no image",
    "unknown_label": "the box label is not one of the store's classes",
    "bad_box": "the box is empty or lies outside its image",
    "fg_box_cropped": "foreground: less than min_crop_survival of the box survives the centre crop",
    "fg_mask_small": "foreground: the mask (GrabCut's after retries, or the given one after the crop) covers less "
                     "than min_mask_box_fraction of the box",
    "bg_box_large": "background: the box covers more than max_bg_box_fraction of the image",
    "mask_small": "mask (GrabCut's or the given one) below min_mask_box_fraction of the box (sehwag filter: "
                  "no mask, no item)",
    "fraction_small": "foreground below the lower bound of fg_fraction_range of the image (sehwag filter)",
    "fraction_large": "foreground above the upper bound of fg_fraction_range of the image (sehwag filter)",
}


@dataclass(frozen=True)
class ExtractConfig:
    """How photos become foregrounds/backgrounds; stored with the store, checked again on --resume."""

    resize: int = 256                     # shorter side first resized to this (reference: 256)
    crop: int = 224                       # then centre-cropped to crop x crop (reference: 224)
    iterations: int = 5                   # GrabCut iterations (reference: 5)
    retries: int = 3                      # GrabCut retries with other seeds when the mask is too small
    filter: str = "reference"             # "reference" (Xiao et al.) or "sehwag" (Sehwag et al.)
    min_mask_box_fraction: float = 0.1    # GrabCut mask must cover >= 10% of the box
    max_bg_box_fraction: float = 0.9      # reference: a background only if the box is <= 90% of the image
    min_crop_survival: float = 0.5        # reference: a foreground only if >= 50% of the box survives the crop
    fg_fraction_range: tuple[float, float] = (0.05, 0.70)  # sehwag: foreground 5%..70% of the image
    seed: int = 0                         # GrabCut RNG seed (retries use seed+1, ...)

    def validate(self) -> "ExtractConfig":
        if self.filter not in FILTERS:
            raise AdvbgError(f"--filter must be one of {', '.join(FILTERS)}, got {self.filter!r}")
        if self.crop <= 0:
            raise AdvbgError(f"--crop must be > 0 (a store holds images of one size), got {self.crop}")
        if self.resize and self.resize < self.crop:
            raise AdvbgError(f"--resize {self.resize} is smaller than --crop {self.crop}")
        lo, hi = self.fg_fraction_range
        if not 0 <= lo < hi <= 1:
            raise AdvbgError(f"fg_fraction_range must satisfy 0 <= low < high <= 1, got {self.fg_fraction_range}")
        return self


@dataclass(frozen=True)
class Job:
    """One photo to process."""

    source_id: str
    path: str
    boxes: tuple[tuple[int, int, int, int], ...]
    label: int          # store class of the (single) box, -1 unknown
    mask: str | None = None     # given mask file, None: GrabCut from the box
    masks_only: bool = False    # masks but no boxes were given: the box comes from the mask
    mask_source: str = GRABCUT  # what /foregrounds/mask_source records for this photo's foreground


@dataclass
class Outcome:
    """What one photo gave: a foreground (image, mask, box), a background, and why anything was dropped."""

    source_id: str
    label: int
    fg: tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]] | None = None
    bg: np.ndarray | None = None
    reasons: tuple[str, ...] = ()
    mask_source: str = GRABCUT
    grabcut_s: float = 0.0
    total_s: float = 0.0

    @property
    def code(self) -> str:
        made = "+".join(k for k, v in (("fg", self.fg), ("bg", self.bg)) if v is not None) or "none"
        return ";".join((made,) + self.reasons)


@dataclass
class ExtractSummary:
    """Counts over every photo of the run (resumed runs included) and timings of this run."""

    path: Path
    filter: str
    images: int = 0
    outcomes: Counter = field(default_factory=Counter)   # "fg+bg", "fg", "bg", "none"
    reasons: Counter = field(default_factory=Counter)
    missing_images: int = 0                               # annotations without an image file
    mask_sources: Counter = field(default_factory=Counter)  # foregrounds in the store by mask source
    processed_now: int = 0
    wall_s: float = 0.0
    worker_s: float = 0.0
    grabcut_s: float = 0.0

    @property
    def foregrounds(self) -> int:
        return self.outcomes["fg+bg"] + self.outcomes["fg"]

    @property
    def backgrounds(self) -> int:
        return self.outcomes["fg+bg"] + self.outcomes["bg"]

    def to_dict(self) -> dict:
        return dict(filter=self.filter, images=self.images, foregrounds=self.foregrounds,
                    backgrounds=self.backgrounds, outcomes=dict(self.outcomes), dropped=dict(self.reasons),
                    missing_images=self.missing_images, mask_sources=dict(self.mask_sources))

    def format(self) -> str:
        o = self.outcomes
        lines = [f"wrote {self.path}: {self.images} photos -> {self.foregrounds} foregrounds, "
                 f"{self.backgrounds} backgrounds (both {o['fg+bg']}, fg only {o['fg']}, bg only {o['bg']}, "
                 f"nothing {o['none']}); filter {self.filter}"]
        for key, n in sorted(self.reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"  dropped {n:6d}  {key}: {REASONS.get(key, key)}")
        if self.missing_images:
            lines.append(f"  {self.missing_images} annotation(s) name an image that is not in the image folder")
        if set(self.mask_sources) - {GRABCUT}:
            counts = sorted(self.mask_sources.items())
            lines.append("  foreground masks: " + ", ".join(f"{n} {src}" for src, n in counts))
        if self.processed_now:
            rate = self.processed_now / self.wall_s if self.wall_s else 0.0
            share = self.grabcut_s / self.worker_s if self.worker_s else 0.0
            lines.append(f"  this run: {self.processed_now} photos in {self.wall_s:.1f} s ({rate:.1f} images/s), "
                         f"{100 * share:.0f}% of worker time in GrabCut")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- one photo
def _read_rgb(path: str) -> np.ndarray | None:
    try:
        return read_image(path)  # advbg.data.imageio's conversion rules; bombs and corrupt files refused
    except AdvbgError:
        return None


def process_photo(job: Job, cfg: ExtractConfig) -> Outcome:
    """Apply the pixel pipeline and the filters to one photo (pure; runs in a worker)."""
    t0 = time.perf_counter()
    out = Outcome(job.source_id, job.label, mask_source=job.mask_source)
    image = _read_rgb(job.path)
    if image is None:
        out.reasons = ("unreadable",)
    elif job.masks_only and job.mask is None:
        out.reasons = ("mask_missing",)
    elif not job.masks_only and len(job.boxes) != 1:
        out.reasons = ("box_count",)
    elif job.label < 0:
        out.reasons = ("unknown_label",)
    else:
        box, given = (job.boxes[0] if job.boxes else None), None
        try:
            if box is not None:
                segment.box_fraction(box, image.shape)  # refuses an empty box or one outside the image first
            if job.mask is not None:
                given, derived = _given_mask(job.mask, image.shape, box)
                box = derived if box is None else box
            _segment_photo(out, image, box, cfg, given)
        except BadMask as e:
            out.reasons = (e.reason,)
        except AdvbgError:  # segment refuses an empty box or one outside the image: an annotation problem
            out.fg, out.bg, out.reasons = None, None, ("bad_box",)
    out.total_s = time.perf_counter() - t0
    return out


def _grabcut(out: Outcome, image: np.ndarray, box, cfg: ExtractConfig) -> np.ndarray | None:
    t = time.perf_counter()
    mask = segment.grabcut_mask(image, box, iterations=cfg.iterations, retries=cfg.retries,
                                min_box_fraction=cfg.min_mask_box_fraction, seed=cfg.seed)
    out.grabcut_s += time.perf_counter() - t
    return mask


def _crop_given(given: np.ndarray, box, cfg: ExtractConfig) -> np.ndarray | None:
    """The given 0/1 mask through the image's resize/crop (as 0/255, kept where >= 128), or None when it covers
    less than ``min_mask_box_fraction`` of the cropped box (GrabCut's acceptance rule)."""
    m = segment.resize_crop(given * np.uint8(255), None, resize=cfg.resize, crop=cfg.crop)[0]
    m = (m >= 128).astype(np.uint8)
    x0, y0, x1, y1 = box
    return m if np.count_nonzero(m) >= cfg.min_mask_box_fraction * (x1 - x0) * (y1 - y0) else None


def _segment_photo(out: Outcome, image: np.ndarray, box, cfg: ExtractConfig,
                   given: np.ndarray | None = None) -> None:
    """Resize/crop, mask (GrabCut on the cropped box, or the ``given`` 0/1 mask of the photo) and filter."""
    image, cbox, survival = segment.resize_crop(image, box, resize=cfg.resize, crop=cfg.crop)

    def mask_of(cbox) -> np.ndarray | None:
        return _grabcut(out, image, cbox, cfg) if given is None else _crop_given(given, cbox, cfg)

    reasons: list[str] = []
    if cfg.filter == "sehwag":
        mask = mask_of(cbox) if cbox is not None else None
        if mask is None:
            reasons.append("mask_small")
        else:
            frac, (lo, hi) = segment.mask_fraction(mask), cfg.fg_fraction_range
            if frac < lo or frac > hi:
                reasons.append("fraction_small" if frac < lo else "fraction_large")
            else:
                out.fg, out.bg = (image, mask, cbox), segment.only_bg_t(image, cbox)
        out.reasons = tuple(reasons)
        return
    if survival < cfg.min_crop_survival or cbox is None:
        reasons.append("fg_box_cropped")
    else:
        mask = mask_of(cbox)
        if mask is None:
            reasons.append("fg_mask_small")
        else:
            out.fg = (image, mask, cbox)
    if cbox is None:  # the object lies wholly outside the crop: the crop is all background
        out.bg = image.copy()
    elif segment.box_fraction(cbox, image.shape) > cfg.max_bg_box_fraction:
        reasons.append("bg_box_large")
    else:
        out.bg = segment.only_bg_t(image, cbox)
    out.reasons = tuple(reasons)


# --------------------------------------------------------------------------------------------- given masks
class BadMask(AdvbgError):
    """A mask file that cannot serve as its photo's mask; ``reason`` is a key of REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{REASONS[reason]}{': ' + detail if detail else ''}")
        self.reason = reason


def read_mask(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The mask file's values as a non-negative integer (H, W) array, or BadMask('mask_unreadable').

    ``.npy``: a 2-D array (or (H, W, 1)) of bools, integers, or floats that are whole numbers (the IN-9
    release's fg_mask files are float 0/1). Image files: one channel as stored (``1``, ``L``, 16-bit ``I``
    modes; a palette image gives its palette indices, as PASCAL VOC's masks need); an RGB(A) file is read only
    when its three colour channels are equal (alpha ignored). Anything else, more than ``max_pixels`` values
    (checked on the header, before decoding) or a corrupt file is refused.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            a = np.load(path, mmap_mode="r", allow_pickle=False)  # the header first: no huge allocation
            if a.size > max_pixels:
                raise ValueError(f"shape {a.shape}: more than the limit of {max_pixels:,} values")
            a = np.array(a)
        else:
            a = _read_mask_image(path, max_pixels)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError, UnidentifiedImageError) as e:
        raise BadMask("mask_unreadable", f"{path} ({type(e).__name__}: {e})") from None
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim != 2 or a.size == 0:
        raise BadMask("mask_unreadable", f"{path} has shape {a.shape}, not (H, W)")
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all() or (a != np.round(a)).any():
            raise BadMask("mask_unreadable", f"{path} holds values that are not whole numbers")
        a = a.astype(np.int64)
    elif a.dtype.kind not in "ui":
        raise BadMask("mask_unreadable", f"{path} has dtype {a.dtype}")
    if a.min() < 0:
        raise BadMask("mask_unreadable", f"{path} holds negative values")
    return a


def _read_mask_image(path: Path, max_pixels: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
        with Image.open(path) as im:  # lazy: the header only
            if im.size[0] * im.size[1] > max_pixels:
                raise ValueError(f"{im.size[0]}x{im.size[1]} pixels, more than the limit of {max_pixels:,}")
            im.load()
            if im.mode in ("1", "L", "P", "I", "F") or im.mode.startswith("I;16"):
                return np.array(im)
            if im.mode in ("RGB", "RGBA", "LA"):
                a = np.array(im)
                colour = a[..., :1] if im.mode == "LA" else a[..., :3]
                if (colour != colour[..., :1]).any():
                    raise ValueError("a colour mask (channels differ); give one channel of ids or 0/1")
                return colour[..., 0]
            raise ValueError(f"image mode {im.mode} is not a mask")


def choose_object(values: np.ndarray, box: Sequence[int] | None = None) -> np.ndarray:
    """The object's 0/1 mask from a mask file's values.

    One distinct non-zero value (0/1, 0/255, ...): the non-zero pixels. Several: the values are instance ids
    (255, PASCAL VOC's "void" outline, then belongs to no instance); the object is the instance with the most
    pixels inside ``box`` when a box is given, else the instance with the most pixels; ties go to the smaller
    id. Raises BadMask('mask_empty') when no pixel is chosen.
    """
    ids, counts = np.unique(values[values > 0], return_counts=True)
    if len(ids) == 0:
        raise BadMask("mask_empty")
    if len(ids) == 1:  # a binary mask (0/1, 0/255, ...)
        return (values > 0).astype(np.uint8)
    keep = ids != VOID
    ids, counts = ids[keep], counts[keep]
    if box is not None:
        x0, y0, x1, y1 = (max(int(v), 0) for v in box)
        inside = values[y0:y1, x0:x1]
        counts = np.array([np.count_nonzero(inside == i) for i in ids])
        if counts.max() == 0:
            raise BadMask("mask_empty", "no instance lies inside the box")
    return (values == ids[int(np.argmax(counts))]).astype(np.uint8)  # argmax: the first (smallest id) of ties


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), ends exclusive, of the smallest box holding every non-zero pixel of ``mask``."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise BadMask("mask_empty")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _given_mask(path: str, image_shape, box) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(object 0/1 mask, its tight box) of a photo from its mask file; BadMask for every refusal."""
    values = read_mask(path)
    if values.shape != tuple(image_shape[:2]):
        raise BadMask("mask_size", f"{path} is {values.shape[1]}x{values.shape[0]}, its image "
                                   f"{image_shape[1]}x{image_shape[0]}")
    obj = choose_object(values, box)
    if obj.all():
        raise BadMask("mask_full")
    return obj, tight_box(obj)


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one photo per process; OpenCV's own threads would oversubscribe the cores


def _work(args: tuple[Job, ExtractConfig]) -> Outcome:
    return process_photo(*args)


# --------------------------------------------------------------------------------------------- inputs
def _image_index(images: Path) -> dict[str, Path]:
    """Every image under ``images`` by source id (relative path without extension, '/'-separated)."""
    if not images.is_dir():
        raise AdvbgError(f"image folder {images} does not exist")
    out = {}
    for p in sorted(images.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTS and p.is_file():
            out[p.relative_to(images).with_suffix("").as_posix()] = p
    if not out:
        raise AdvbgError(f"no images ({', '.join(IMAGE_EXTS)}) under {images}")
    return out


def read_boxes_csv(path: Path) -> dict[str, list[tuple[tuple[int, int, int, int], str]]]:
    """{file: [(box, label), ...]} from a CSV with header file,xmin,ymin,xmax,ymax,label."""
    need = ["file", "xmin", "ymin", "xmax", "ymax", "label"]
    out: dict[str, list] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's byte-order mark
        rd = csv.DictReader(fh)
        if rd.fieldnames is None or [c.strip() for c in rd.fieldnames[:6]] != need:
            raise AdvbgError(f"{path}: the CSV header must be {','.join(need)} (got {rd.fieldnames})")
        for n, row in enumerate(rd, start=2):
            try:
                box = tuple(int(round(float(row[k]))) for k in need[1:5])
            except (TypeError, ValueError):
                raise AdvbgError(f"{path}:{n}: box coordinates must be numbers, got {row}") from None
            out.setdefault(row["file"].strip(), []).append((box, row["label"].strip()))
    return out


def read_boxes_voc(folder: Path) -> dict[str, list[tuple[tuple[int, int, int, int], str]]]:
    """{image name or xml stem: [(box, label), ...]} from ImageNet / PASCAL VOC XML files under ``folder``."""
    out: dict[str, list] = {}
    for xml in sorted(folder.rglob("*.xml")):
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as e:
            raise AdvbgError(f"{xml}: not a readable annotation XML ({e})") from None
        name = (root.findtext("filename") or xml.stem).strip()
        boxes = out.setdefault(name, [])
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            try:
                x0, y0, x1, y1 = (int(round(float(bb.findtext(k)))) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                raise AdvbgError(f"{xml}: an <object> without a numeric <bndbox>") from None
            boxes.append(((x0 - 1, y0 - 1, x1, y1), (obj.findtext("name") or "").strip()))
    if not out:
        raise AdvbgError(f"no annotation .xml files under {folder}")
    return out


def _imagenet_synsets() -> list[str]:
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return []
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "_info" / "imagenet_synsets.txt"
    return p.read_text().split() if p.is_file() else []


def resolve_classes(labels: Iterable[str], classes: str | Sequence[str] | None
                    ) -> tuple[tuple[str, ...], dict[str, int]]:
    """(class names of the store, {annotation label: class index}) for ``--classes`` (None, 'in9' or names).

    None: the sorted distinct labels. 'in9': IN-9's classes; labels may be IN-9 names, IN-9 folder names or
    ImageNet-1k synsets (n01440764...), mapped by the reference table. Labels matching no class get -1.
    """
    labels = sorted(set(labels))
    if classes is None:
        return tuple(labels), {lab: k for k, lab in enumerate(labels)}
    if isinstance(classes, str) and classes.strip().lower() == "in9":
        names: tuple[str, ...] = IN9_CLASSES
        table, synsets = imagenet_to_in9(), _imagenet_synsets()
        by_synset = {s: int(table[i]) for i, s in enumerate(synsets)}
    else:
        names = tuple(c.strip() for c in (classes.split(",") if isinstance(classes, str) else classes) if c.strip())
        by_synset = {}
        if not names:
            raise AdvbgError("--classes is empty")
    mapping = {}
    for lab in labels:
        if lab in by_synset:
            mapping[lab] = by_synset[lab]
            continue
        try:
            mapping[lab] = class_index(lab, names)
        except AdvbgError:
            mapping[lab] = -1
    return names, mapping


def _mask_index(masks: Path) -> dict[str, Path]:
    """Every mask file under ``masks`` by relative path without extension; two files of one name are refused."""
    if not masks.is_dir():
        raise AdvbgError(f"--masks {masks} is not a folder")
    out: dict[str, Path] = {}
    for p in sorted(masks.rglob("*")):
        if p.suffix.lower() in MASK_EXTS and p.is_file():
            key = p.relative_to(masks).with_suffix("").as_posix()
            if key in out:
                raise AdvbgError(f"masks {out[key]} and {p} name the same image; keep one")
            out[key] = p
    return out


def match_masks(index: dict[str, Path], masks: dict[str, Path]) -> tuple[dict[str, Path], int]:
    """({image source id: mask file}, number of mask files matching no image).

    A mask matches the image of the same relative path and stem (``cat/p1.png`` <-> ``cat/p1.jpg``); failing
    that, the image of the same stem when both stems are unique (a flat mask folder for nested images).
    """
    def unique_stems(keys) -> dict[str, str]:
        seen: dict[str, list[str]] = {}
        for k in keys:
            seen.setdefault(Path(k).name, []).append(k)
        return {stem: ks[0] for stem, ks in seen.items() if len(ks) == 1}

    image_stems, mask_stems = unique_stems(index), unique_stems(masks)
    out, used = {}, set()
    for sid in index:
        key = sid if sid in masks else mask_stems.get(Path(sid).name) if Path(sid).name in image_stems else None
        if key is not None and key not in used:
            out[sid] = masks[key]
            used.add(key)
    return out, len(masks) - len(used)


def _folder_label(source_id: str) -> str:
    parts = source_id.split("/")
    return parts[0] if len(parts) > 1 else ""


def build_jobs(images: str | os.PathLike, boxes: str | os.PathLike | None,
               classes: str | Sequence[str] | None = None, masks: str | os.PathLike | None = None
               ) -> tuple[list[Job], tuple[str, ...], int, int]:
    """(jobs sorted by source id, class names, annotations without an image, mask files without an image).

    With ``masks`` and no ``boxes``, labels are the images' class folders (see the module docstring).
    """
    if boxes is None and masks is None:
        raise AdvbgError("give --boxes, --masks or both")
    images = Path(images)
    index = _image_index(images)
    mask_files, unmatched, source = {}, 0, GRABCUT
    if masks is not None:
        mask_files, unmatched = match_masks(index, _mask_index(Path(masks)))
        source = f"given:{Path(masks).resolve().as_posix()}"
    if boxes is None:
        resolved = {sid: [] for sid in index}
        missing = 0
        names, mapping = resolve_classes((lab for sid in index if (lab := _folder_label(sid))), classes)
        labels = {sid: mapping.get(_folder_label(sid), -1) for sid in index}
    else:
        resolved, missing = _resolve_boxes(index, Path(boxes))
        names, mapping = resolve_classes((lab for items in resolved.values() for _, lab in items), classes)
        labels = {sid: mapping.get(resolved[sid][0][1], -1) if len(resolved.get(sid, [])) == 1 else -1
                  for sid in index}
    jobs = []
    for sid, path in index.items():
        mask = mask_files.get(sid)
        jobs.append(Job(sid, str(path), tuple(b for b, _ in resolved.get(sid, [])), labels[sid],
                        mask=None if mask is None else str(mask), masks_only=boxes is None,
                        mask_source=GRABCUT if mask is None else source))
    return jobs, names, missing, unmatched


def _resolve_boxes(index: dict[str, Path], boxes: Path) -> tuple[dict[str, list], int]:
    """({source id: [(box, label), ...]}, number of annotations naming no image)."""
    if boxes.is_dir():
        ann = read_boxes_voc(boxes)
        by_stem: dict[str, list[str]] = {}
        for sid in index:
            by_stem.setdefault(Path(sid).name, []).append(sid)
        resolved = {}
        for name, items in ann.items():
            key = Path(name).with_suffix("").as_posix() if Path(name).suffix.lower() in IMAGE_EXTS else name
            hits = [key] if key in index else by_stem.get(Path(key).name, [])
            if len(hits) > 1:
                raise AdvbgError(f"annotation {name!r} matches several images ({', '.join(hits[:3])}); "
                                 f"image file names must be unique")
            resolved[hits[0] if hits else f"\0{name}"] = items
    elif boxes.is_file():
        ann = read_boxes_csv(boxes)
        resolved = {Path(f).with_suffix("").as_posix(): items for f, items in ann.items()}
    else:
        raise AdvbgError(f"--boxes {boxes} is neither a folder of XML files nor a CSV file")
    return resolved, sum(1 for k in resolved if k not in index)


# --------------------------------------------------------------------------------------------- the run
def _log_datasets(f: h5py.File) -> tuple[h5py.Dataset, h5py.Dataset]:
    g = f.require_group("extract_log")
    if "source_id" not in g:
        g.create_dataset("source_id", (0,), _STR, maxshape=(None,), chunks=(1024,))
        g.create_dataset("outcome", (0,), _STR, maxshape=(None,), chunks=(1024,))
    n = min(g["source_id"].shape[0], g["outcome"].shape[0])  # a kill between the two appends
    for ds in (g["source_id"], g["outcome"]):
        ds.resize(n, axis=0)
    return g["source_id"], g["outcome"]


def _mask_source_dataset(f: h5py.File) -> h5py.Dataset:
    """/foregrounds/mask_source, one entry per foreground (created for a new store; optional for readers)."""
    g = f["foregrounds"]
    if "mask_source" not in g:
        n = g["source_id"].shape[0]  # a temporary store from before mask sources were recorded: GrabCut's
        g.create_dataset("mask_source", data=np.array([GRABCUT] * n, dtype=object), dtype=_STR, maxshape=(None,),
                         chunks=(1024,))
    return g["mask_source"]


def _drop_unlogged_tail(f: h5py.File, logged: set[str]) -> None:
    """A photo is finished once logged (its log entry is written last): cut items of an unfinished last photo."""
    for grp in ("foregrounds", "backgrounds"):
        g = f[grp]
        ids = g["source_id"]
        n = ids.shape[0]
        while n and _text(ids[n - 1]) not in logged:
            n -= 1
        if n < ids.shape[0]:
            for ds in g.values():
                ds.resize(n, axis=0)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _append(ds: h5py.Dataset, value: str) -> None:
    n = ds.shape[0]
    ds.resize(n + 1, axis=0)
    ds[n] = value


def _tally(summary: ExtractSummary, codes: Iterable[str]) -> None:
    for code in codes:
        made, *reasons = code.split(";")
        summary.outcomes[made] += 1
        summary.reasons.update(reasons)
        summary.images += 1


def _outcomes(jobs: list[Job], cfg: ExtractConfig, workers: int) -> Iterable[Outcome]:
    if workers <= 1 or len(jobs) <= 1:
        yield from (process_photo(j, cfg) for j in jobs)
        return
    # spawn, not fork: a forked child can inherit a locked OpenCV thread pool from the parent and hang.
    with mp.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
        yield from pool.imap(_work, [(j, cfg) for j in jobs], chunksize=max(1, min(8, len(jobs) // (4 * workers))))


def extract(images: str | os.PathLike, boxes: str | os.PathLike | None, out: str | os.PathLike, *,
            masks: str | os.PathLike | None = None, classes: str | Sequence[str] | None = None,
            config: ExtractConfig | None = None, workers: int | None = None, resume: bool = False,
            overwrite: bool = False, progress: bool = True) -> ExtractSummary:
    """Build the store ``out`` from the photos under ``images`` and their ``boxes`` and/or ``masks``.

    Returns the summary. A photo with a mask file uses it instead of GrabCut (see the module docstring).

    ``workers`` processes (default: all cores) run the pixel work; the store is written in photo order, so the
    result does not depend on ``workers``. ``resume`` continues an interrupted run (its temporary store file),
    skipping every photo it already finished.
    """
    cfg = (config or ExtractConfig()).validate()
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    most = 4 * (os.cpu_count() or 1)  # more processes than this only thrash (GrabCut is CPU-bound)
    if not 1 <= workers <= most:
        raise AdvbgError(f"--workers must be between 1 and {most} on this machine, got {workers}")
    check_output(out, inputs=[p for p in (images, boxes, masks) if p is not None])
    jobs, names, missing, unmatched = build_jobs(images, boxes, classes, masks)
    if boxes is None and not names:
        raise AdvbgError(f"with --masks and no --boxes the labels are the images' class folders, but every image "
                         f"lies directly in {images}; put each class in its own folder or give --boxes")
    cfg_json = json.dumps(asdict(cfg), sort_keys=True)
    mask_folder = None if masks is None else Path(masks).resolve().as_posix()
    inputs = json.dumps(dict(boxes=boxes is not None, masks=mask_folder))  # --resume must see the same inputs
    summary = ExtractSummary(Path(out), cfg.filter, missing_images=missing)
    if unmatched:
        summary.reasons["mask_no_image"] = unmatched
    with StoreWriter(out, class_names=names, image_size=(cfg.crop, cfg.crop), overwrite=overwrite, resume=resume,
                     attrs=dict(source="advbg extract", extract_config=cfg_json, extract_inputs=inputs)) as w:
        if w.file.attrs.get("extract_config") != cfg_json or tuple(
                _text(s) for s in w.file["class_names"][()]) != names or w.file.attrs.get(
                "extract_inputs", inputs) != inputs:
            raise AdvbgError(f"{w.temporary} was started with other options, inputs or classes; rerun without "
                             f"--resume to start over")
        mask_source = _mask_source_dataset(w.file)
        log_src, log_out = _log_datasets(w.file)
        done = {_text(s) for s in log_src[()]}
        _drop_unlogged_tail(w.file, done)
        _tally(summary, (_text(c) for c in log_out[()]))
        pending = [j for j in jobs if j.source_id not in done]
        t0 = time.perf_counter()
        for o in progress_bar(_outcomes(pending, cfg, workers), total=len(pending), desc="extract", unit="img",
                              enabled=progress):
            if o.fg is not None:
                w.add_foreground(o.fg[0], o.fg[1], o.label, o.source_id, o.fg[2])
                _append(mask_source, o.mask_source)
            if o.bg is not None:
                w.add_background(o.bg, o.label, o.source_id)
            _append(log_src, o.source_id)
            _append(log_out, o.code)
            w.flush()  # a killed run leaves a temporary that --resume can open, losing at most this photo
            _tally(summary, [o.code])
            summary.worker_s += o.total_s
            summary.grabcut_s += o.grabcut_s
            summary.processed_now += 1
        summary.wall_s = time.perf_counter() - t0
        summary.mask_sources.update(_text(v) for v in mask_source[()])
        w.file.attrs["extract_summary"] = json.dumps(summary.to_dict(), sort_keys=True)
    return summary
