"""Build a store from photos + bounding boxes: reference resize/crop, GrabCut masks, Only-BG-T backgrounds.

Boxes come from a folder of ImageNet / PASCAL VOC XML files (searched recursively; coordinates 1-based
inclusive, as in VOC) or from a CSV ``file,xmin,ymin,xmax,ymax,label`` (0-based pixels, xmax/ymax exclusive,
``file`` relative to the image folder; one row per box). Each photo becomes a foreground, a background, both
or nothing, according to the filters (see ``ExtractConfig``); every drop is counted with its reason, printed
and stored in the store attrs, and what happened to each photo is kept in ``/extract_log``.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import multiprocessing as mp
import os
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import h5py
import numpy as np
from tqdm import tqdm

from advbg.data import segment
from advbg.data.imageio import read_image
from advbg.data.labels import IN9_CLASSES, class_index, imagenet_to_in9
from advbg.data.store import StoreWriter
from advbg.errors import AdvbgError
from advbg.files import check_output

IMAGE_EXTS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FILTERS = ("reference", "sehwag")
_STR = h5py.string_dtype("utf-8")

# Why a photo yields no foreground and/or no background (keys of the summary and of /extract_log).
REASONS = {
    "unreadable": "the image file could not be decoded",
    "box_count": "not exactly one bounding box",
    "unknown_label": "the box label is not one of the store's classes",
    "bad_box": "the box is empty or lies outside its image",
    "fg_box_cropped": "foreground: less than min_crop_survival of the box survives the centre crop",
    "fg_mask_small": "foreground: the GrabCut mask covers less than min_mask_box_fraction of the box (after retries)",
    "bg_box_large": "background: the box covers more than max_bg_box_fraction of the image",
    "mask_small": "GrabCut mask below min_mask_box_fraction of the box (sehwag filter: no mask, no item)",
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


@dataclass
class Outcome:
    """What one photo gave: a foreground (image, mask, box), a background, and why anything was dropped."""

    source_id: str
    label: int
    fg: tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]] | None = None
    bg: np.ndarray | None = None
    reasons: tuple[str, ...] = ()
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
                    missing_images=self.missing_images)

    def format(self) -> str:
        o = self.outcomes
        lines = [f"wrote {self.path}: {self.images} photos -> {self.foregrounds} foregrounds, "
                 f"{self.backgrounds} backgrounds (both {o['fg+bg']}, fg only {o['fg']}, bg only {o['bg']}, "
                 f"nothing {o['none']}); filter {self.filter}"]
        for key, n in sorted(self.reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"  dropped {n:6d}  {key}: {REASONS.get(key, key)}")
        if self.missing_images:
            lines.append(f"  {self.missing_images} annotation(s) name an image that is not in the image folder")
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
    out = Outcome(job.source_id, job.label)
    image = _read_rgb(job.path)
    if image is None:
        out.reasons = ("unreadable",)
    elif len(job.boxes) != 1:
        out.reasons = ("box_count",)
    elif job.label < 0:
        out.reasons = ("unknown_label",)
    else:
        try:
            _segment_photo(out, image, job.boxes[0], cfg)
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


def _segment_photo(out: Outcome, image: np.ndarray, box, cfg: ExtractConfig) -> None:
    image, cbox, survival = segment.resize_crop(image, box, resize=cfg.resize, crop=cfg.crop)
    reasons: list[str] = []
    if cfg.filter == "sehwag":
        mask = _grabcut(out, image, cbox, cfg) if cbox is not None else None
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
        mask = _grabcut(out, image, cbox, cfg)
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


def build_jobs(images: str | os.PathLike, boxes: str | os.PathLike,
               classes: str | Sequence[str] | None = None) -> tuple[list[Job], tuple[str, ...], int]:
    """(jobs sorted by source id, class names, number of annotations without an image)."""
    images, boxes = Path(images), Path(boxes)
    index = _image_index(images)
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
    missing = sum(1 for k in resolved if k not in index)
    names, mapping = resolve_classes((lab for items in resolved.values() for _, lab in items), classes)
    jobs = []
    for sid, path in index.items():
        items = resolved.get(sid, [])
        label = mapping.get(items[0][1], -1) if len(items) == 1 else -1
        jobs.append(Job(sid, str(path), tuple(b for b, _ in items), label))
    return jobs, names, missing


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


def extract(images: str | os.PathLike, boxes: str | os.PathLike, out: str | os.PathLike, *,
            classes: str | Sequence[str] | None = None, config: ExtractConfig | None = None,
            workers: int | None = None, resume: bool = False, overwrite: bool = False,
            progress: bool = True) -> ExtractSummary:
    """Build the store ``out`` from the photos under ``images`` and their ``boxes``; return the summary.

    ``workers`` processes (default: all cores) run the pixel work; the store is written in photo order, so the
    result does not depend on ``workers``. ``resume`` continues an interrupted run (its ``.partial`` file),
    skipping every photo it already finished.
    """
    cfg = (config or ExtractConfig()).validate()
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    most = 4 * (os.cpu_count() or 1)  # more processes than this only thrash (GrabCut is CPU-bound)
    if not 1 <= workers <= most:
        raise AdvbgError(f"--workers must be between 1 and {most} on this machine, got {workers}")
    check_output(out, inputs=[images, boxes])
    jobs, names, missing = build_jobs(images, boxes, classes)
    cfg_json = json.dumps(asdict(cfg), sort_keys=True)
    summary = ExtractSummary(Path(out), cfg.filter, missing_images=missing)
    with StoreWriter(out, class_names=names, image_size=(cfg.crop, cfg.crop), overwrite=overwrite, resume=resume,
                     attrs=dict(source="advbg extract", extract_config=cfg_json)) as w:
        if w.file.attrs.get("extract_config") != cfg_json or tuple(
                _text(s) for s in w.file["class_names"][()]) != names:
            raise AdvbgError(f"{w.partial} was started with other options or classes; rerun without --resume "
                             f"to start over")
        log_src, log_out = _log_datasets(w.file)
        done = {_text(s) for s in log_src[()]}
        _drop_unlogged_tail(w.file, done)
        _tally(summary, (_text(c) for c in log_out[()]))
        pending = [j for j in jobs if j.source_id not in done]
        t0 = time.perf_counter()
        for o in tqdm(_outcomes(pending, cfg, workers), total=len(pending), desc="extract", unit="img",
                      disable=not progress):
            if o.fg is not None:
                w.add_foreground(o.fg[0], o.fg[1], o.label, o.source_id, o.fg[2])
            if o.bg is not None:
                w.add_background(o.bg, o.label, o.source_id)
            _append(log_src, o.source_id)
            _append(log_out, o.code)
            w.flush()  # a killed run leaves a .partial that --resume can open, losing at most this photo
            _tally(summary, [o.code])
            summary.worker_s += o.total_s
            summary.grabcut_s += o.grabcut_s
            summary.processed_now += 1
        summary.wall_s = time.perf_counter() - t0
        w.file.attrs["extract_summary"] = json.dumps(summary.to_dict(), sort_keys=True)
    return summary
