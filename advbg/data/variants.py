"""Evaluation variants of a store's foregrounds: the IN-9 sets, the background probes, the background factors.

Public, stable API (used by ``advbg variants`` and by evaluation, which makes variants on the fly)::

    variant_names() -> tuple[str, ...]
    make_variant(store, name, fg_index, rng_seed=0, options=VariantOptions()) -> VariantBatch
    iter_variant(store, name, block=64, rng_seed=0, options=...) -> Iterator[VariantBatch]
    write_variants(store_path, out, fmt="folder"|"h5", names=..., seed=0, options=...) -> Path
    open_evalset(path, name) -> Evalset      (an /evalsets/<name> group of a store or a variants .h5)

Every variant gives exactly one image per requested foreground row, labelled with that foreground's class,
and records which store foreground (``fg_id``) and which store background (``bg_id``) it was made of (-1:
none). Random choices use one generator per (seed, variant, foreground row), so a set does not depend on
the block size or on which other rows were asked for. Each row also carries the mask source of its foreground
row (``mask_sources``: "grabcut", "given:<folder>", ...), written to every set's manifest / datasets.
"""
from __future__ import annotations

import csv
import difflib
import errno
import json
import os
import re
import shutil
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import h5py
import numpy as np

from advbg.data import segment
from advbg.data.composite import composite
from advbg.data.labels import IN9_CLASSES, IN9_FOLDERS
from advbg.data.store import Store
from advbg.data.writer import DISK_HEADROOM
from advbg.errors import AdvbgError
from advbg.files import atomic_output, check_output, partial_path
from advbg.progress import progress as progress_bar

_STR = h5py.string_dtype("utf-8")
# Level 1: photos shrink by ~15% at any gzip level, and level 1 costs about half the time of level 4.
_COMPRESSION = dict(compression="gzip", compression_opts=1)
_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1]
EVALSETS_SCHEMA = 1
# Far wider than any store image (a wider Gaussian only flattens the background more slowly); bounds the run time.
MAX_BLUR_KERNEL = 1001


# --------------------------------------------------------------------------------------------- types
@dataclass(frozen=True)
class VariantOptions:
    """Knobs of the parametrised variants (saved with every written set)."""

    blur_kernel: int = 21         # bg_blur: odd Gaussian kernel size in pixels (sigma derived by OpenCV)
    recolor: str = "hue"          # bg_recolor: "hue" (rotate hue by hue_shift) or "gray" (desaturate)
    hue_shift: int = 90           # bg_recolor: degrees on the 0-360 hue circle
    reduced_margin: int = 16      # bg_reduced: pixels added on every side of the object box
    reduced_fill: str = "black"   # bg_reduced: what replaces the background outside it: black | gray | white
    texture: str = "auto"         # bg_texture: "store" (unlabelled store backgrounds), "procedural", or auto

    def validate(self) -> "VariantOptions":
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0 or self.blur_kernel > MAX_BLUR_KERNEL:
            raise AdvbgError(f"blur kernel must be an odd number of pixels from 1 to {MAX_BLUR_KERNEL}, "
                             f"got {self.blur_kernel}")
        if self.recolor not in ("hue", "gray"):
            raise AdvbgError(f"recolor must be 'hue' or 'gray', got {self.recolor!r}")
        if self.reduced_margin < 0:
            raise AdvbgError(f"reduced margin must be >= 0 pixels, got {self.reduced_margin}")
        if self.reduced_fill not in _FILLS:
            raise AdvbgError(f"reduced fill must be one of {', '.join(_FILLS)}, got {self.reduced_fill!r}")
        if self.texture not in ("auto", "store", "procedural"):
            raise AdvbgError(f"texture must be auto, store or procedural, got {self.texture!r}")
        return self


_FILLS = {"black": 0, "gray": 128, "white": 255}


@dataclass
class VariantBatch:
    """One block of a variant: row i was made for foreground row ``fg_index[i]`` of the store."""

    name: str
    images: np.ndarray      # (n, H, W, 3) uint8 RGB
    labels: np.ndarray      # (n,) int64: class of the foreground row (the photo's class)
    fg_id: np.ndarray       # (n,) int64: store foreground whose object pixels are in the image, -1 none
    bg_id: np.ndarray       # (n,) int64: store background whose pixels fill the background, -1 none
    source_id: list[str]    # (n,) photo of the foreground row
    fg_index: np.ndarray    # (n,) int64: the foreground row each image was made for
    mask_source: list[str] = field(default_factory=list)  # (n,) mask source of the foreground row

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class _Block:
    """What a variant function sees: a block of foregrounds plus the store and per-row generators."""

    store: Store
    name: str
    index: np.ndarray       # (n,) foreground rows
    images: np.ndarray      # (n, H, W, 3) uint8
    masks: np.ndarray       # (n, H, W) uint8 0/1
    labels: np.ndarray      # (n,)
    boxes: np.ndarray       # (n, 4) stored box, or the mask's bounding box when none was stored
    own_bg: np.ndarray      # (n,) background sharing the foreground's source id, -1 when none
    rngs: list[np.random.Generator]
    options: VariantOptions

    def __len__(self) -> int:
        return len(self.index)


_VariantFn = Callable[[_Block], "tuple[np.ndarray, np.ndarray, np.ndarray]"]


@dataclass(frozen=True)
class _Spec:
    name: str
    fn: _VariantFn
    description: str


_REGISTRY: dict[str, _Spec] = {}


def _variant(name: str, description: str) -> Callable[[_VariantFn], _VariantFn]:
    def register(fn: _VariantFn) -> _VariantFn:
        _REGISTRY[name] = _Spec(name, fn, description)
        return fn
    return register


def variant_names() -> tuple[str, ...]:
    """All variant names, IN-9 sets first, then the background probes and factors."""
    return tuple(_REGISTRY)


def _spec(name: str) -> _Spec:
    if name not in _REGISTRY:

        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(_REGISTRY)}"
        raise AdvbgError(f"unknown variant {name!r}{hint}")
    return _REGISTRY[name]


# --------------------------------------------------------------------------------------------- pixel helpers
def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0, 0, mask.shape[1], mask.shape[0]
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _ids(n: int, value: int = -1) -> np.ndarray:
    return np.full(n, value, np.int64)


def procedural_texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A seeded colour texture (H, W, 3) uint8: four oriented colour gratings plus band-limited noise."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros((h, w, 3), np.float32)
    for _ in range(4):
        theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(2, 24) / max(h, w), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
        out += wave[..., None] * rng.uniform(-1, 1, 3).astype(np.float32)
    sigma = float(rng.uniform(1, 6))
    noise = cv2.GaussianBlur(rng.standard_normal((h, w, 3)).astype(np.float32), (0, 0), sigma) * sigma
    out += noise
    out -= out.min()
    return (255 * out / max(float(out.max()), 1e-6)).astype(np.uint8)


# --------------------------------------------------------------------------------------------- IN-9 variants
@_variant("original", "the foreground's photo unchanged")
def _original(b: _Block):
    return b.images.copy(), b.index.copy(), b.own_bg.copy()


@_variant("only_bg_b", "the photo with the object box filled black")
def _only_bg_b(b: _Block):
    imgs = np.stack([segment.only_bg_b(im, box) for im, box in zip(b.images, b.boxes)])
    return imgs, _ids(len(b)), b.own_bg.copy()


@_variant("only_bg_t", "the stored Only-BG-T background of the same photo (computed from the box if absent)")
def _only_bg_t(b: _Block):
    imgs = b.images.copy()
    have = b.own_bg >= 0
    if have.any():
        imgs[have] = b.store.backgrounds.read(b.own_bg[have])
    for i in np.flatnonzero(~have):
        imgs[i] = segment.only_bg_t(b.images[i], b.boxes[i])
    return imgs, _ids(len(b)), b.own_bg.copy()


@_variant("no_fg", "the photo with the GrabCut mask filled black")
def _no_fg(b: _Block):
    return composite(np.zeros_like(b.images), b.masks, b.images), _ids(len(b)), b.own_bg.copy()


@_variant("only_fg", "the object on black")
def _only_fg(b: _Block):
    return composite(b.images, b.masks, 0), b.index.copy(), _ids(len(b))


def _mixed(b: _Block, candidates: Callable[[int, np.random.Generator], np.ndarray], what: str):
    """Composite each foreground on a background drawn by ``candidates(class, rng)``; another photo's if possible."""
    bg_src, fg_src = b.store.backgrounds.source_ids, b.store.foregrounds.source_ids
    choice = np.empty(len(b), np.int64)
    for i, (row, y, rng) in enumerate(zip(b.index, b.labels, b.rngs)):
        cand = candidates(int(y), rng)
        other = cand[[bg_src[j] != fg_src[row] for j in cand]]
        cand = other if len(other) else cand
        if len(cand) == 0:
            raise AdvbgError(f"{b.name} needs a background of {what} for foreground {row} (class {int(y)}); "
                             f"the store has none (background labels present: "
                             f"{sorted(set(b.store.backgrounds.labels.tolist()))})")
        choice[i] = cand[rng.integers(len(cand))]
    bgs = b.store.backgrounds.read(choice)
    return composite(b.images, b.masks, bgs), b.index.copy(), choice


def _of_class(b: _Block, c: int) -> np.ndarray:
    return np.flatnonzero(b.store.backgrounds.labels == c)


@_variant("mixed_same", "the object on the Only-BG-T background of a random other photo of the same class")
def _mixed_same(b: _Block):
    return _mixed(b, lambda y, rng: _of_class(b, y), "the same class")


@_variant("mixed_rand", "the object on the Only-BG-T background of a random photo of a random class "
                        "(class uniform over the classes that have backgrounds, then photo uniform)")
def _mixed_rand(b: _Block):
    labels = b.store.backgrounds.labels
    classes = np.unique(labels[labels >= 0])

    def cand(y: int, rng: np.random.Generator) -> np.ndarray:
        return _of_class(b, int(classes[rng.integers(len(classes))])) if len(classes) else classes
    return _mixed(b, cand, "any class")


@_variant("mixed_next", "the object on the Only-BG-T background of a random photo of class (y + 1) mod C")
def _mixed_next(b: _Block):
    n_classes = len(b.store.class_names)
    return _mixed(b, lambda y, rng: _of_class(b, (y + 1) % n_classes), "the next class")


# --------------------------------------------------------------------------------------------- probes (Sehwag et al.)
@_variant("fg_white", "the photo with the object mask filled white (background influence probe)")
def _fg_white(b: _Block):
    return composite(np.full_like(b.images, 255), b.masks, b.images), _ids(len(b)), b.own_bg.copy()


@_variant("bg_white", "the object on white")
def _bg_white(b: _Block):
    return composite(b.images, b.masks, 255), b.index.copy(), _ids(len(b))


@_variant("bg_texture", "the object on a random texture: an unlabelled store background if the store has any "
                        "(label -1), else a procedural texture")
def _bg_texture(b: _Block):
    pool = np.flatnonzero(b.store.backgrounds.labels < 0)
    use_store = b.options.texture == "store" or (b.options.texture == "auto" and len(pool) > 0)
    if use_store and not len(pool):
        raise AdvbgError("texture 'store' needs unlabelled backgrounds (label -1) in the store; it has none")
    if use_store:
        choice = np.array([pool[rng.integers(len(pool))] for rng in b.rngs], np.int64)
        return composite(b.images, b.masks, b.store.backgrounds.read(choice)), b.index.copy(), choice
    tex = np.stack([procedural_texture(rng, b.images.shape[1:3]) for rng in b.rngs])
    return composite(b.images, b.masks, tex), b.index.copy(), _ids(len(b))


@_variant("bg_gauss", "the object on Gaussian noise (mean 127.5, sd 64, clipped to 0-255)")
def _bg_gauss(b: _Block):
    noise = np.stack([np.clip(rng.normal(127.5, 64.0, b.images.shape[1:]), 0, 255).round() for rng in b.rngs])
    return composite(b.images, b.masks, noise.astype(np.uint8)), b.index.copy(), _ids(len(b))


@_variant("bg_uniform", "the object on uniform noise (each channel 0-255)")
def _bg_uniform(b: _Block):
    noise = np.stack([rng.integers(0, 256, b.images.shape[1:], dtype=np.uint8) for rng in b.rngs])
    return composite(b.images, b.masks, noise), b.index.copy(), _ids(len(b))


@_variant("bg_color", "the object on one random flat colour per image")
def _bg_color(b: _Block):
    colours = np.stack([rng.integers(0, 256, 3, dtype=np.uint8) for rng in b.rngs])[:, None, None, :]
    return composite(b.images, b.masks, colours), b.index.copy(), _ids(len(b))


# --------------------------------------------------------------------------------------------- background factors
@_variant("bg_blur", "the sharp object on its own photo blurred with a Gaussian of blur_kernel pixels")
def _bg_blur(b: _Block):
    k = b.options.blur_kernel
    blurred = np.stack([cv2.GaussianBlur(im, (k, k), 0) for im in b.images])
    return composite(b.images, b.masks, blurred), b.index.copy(), b.own_bg.copy()


@_variant("bg_recolor", "the object on its own background with the hue rotated by hue_shift degrees, or grayscale")
def _bg_recolor(b: _Block):
    o = b.options
    out = []
    for im in b.images:
        if o.recolor == "gray":
            out.append(np.repeat(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2))
        else:  # OpenCV's 8-bit hue runs 0-179 (2 degrees a step)
            hsv = cv2.cvtColor(im, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + o.hue_shift // 2) % 180).astype(np.uint8)
            out.append(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))
    return composite(b.images, b.masks, np.stack(out)), b.index.copy(), b.own_bg.copy()


@_variant("bg_reduced", "background kept only inside the object box grown by reduced_margin pixels on every side; "
                        "outside filled with reduced_fill")
def _bg_reduced(b: _Block):
    m, h, w = b.options.reduced_margin, *b.images.shape[1:3]
    out = np.full_like(b.images, _FILLS[b.options.reduced_fill])
    for i, (x0, y0, x1, y1) in enumerate(b.boxes):
        ya, yb, xa, xb = max(0, y0 - m), min(h, y1 + m), max(0, x0 - m), min(w, x1 + m)
        out[i, ya:yb, xa:xb] = b.images[i, ya:yb, xa:xb]
    return composite(b.images, b.masks, out), b.index.copy(), b.own_bg.copy()


# --------------------------------------------------------------------------------------------- making blocks
def _rng(seed: int, name: str, row: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), int(row)])


def _own_backgrounds(store: Store) -> dict[str, int]:
    cache = getattr(store, "_advbg_bg_by_source", None)
    if cache is None:
        cache = {}
        for j, s in enumerate(store.backgrounds.source_ids):
            cache.setdefault(s, j)
        store._advbg_bg_by_source = cache  # type: ignore[attr-defined]
    return cache


UNRECORDED = "unrecorded"


def mask_sources(store: Store) -> list[str]:
    """Per foreground row, where its mask came from: ``/foregrounds/mask_source`` when the store has it;
    else "grabcut" for a store of ``advbg extract`` (which had no other source), "unrecorded" otherwise."""
    cache = getattr(store, "_advbg_mask_sources", None)
    if cache is None:
        ds = store.file["foregrounds"].get("mask_source")
        if ds is not None and ds.shape[0] == len(store.foregrounds):
            cache = [s.decode() if isinstance(s, bytes) else str(s) for s in ds[()]]
        else:
            extracted = store.attrs.get("source") == "advbg extract"
            cache = ["grabcut" if extracted else UNRECORDED] * len(store.foregrounds)
        store._advbg_mask_sources = cache  # type: ignore[attr-defined]
    return cache


def mask_source_counts(store: Store) -> dict[str, int]:
    """{mask source: number of foregrounds}, for the metadata of written sets."""
    counts: dict[str, int] = {}
    for s in mask_sources(store):
        counts[s] = counts.get(s, 0) + 1
    return dict(sorted(counts.items()))


def make_variant(store: Store, name: str, fg_index: Sequence[int] | np.ndarray | slice, *, rng_seed: int = 0,
                 options: VariantOptions | None = None) -> VariantBatch:
    """The variant ``name`` of the foreground rows ``fg_index`` (read from the store, only those rows)."""
    spec = _spec(name)
    options = (options or VariantOptions()).validate()
    n_fg = len(store.foregrounds)
    if isinstance(fg_index, slice):
        fg_index = np.arange(n_fg)[fg_index]
    index = np.asarray(fg_index, np.int64).reshape(-1)
    if index.size and (index.min() < 0 or index.max() >= n_fg):
        raise AdvbgError(f"foreground rows must be in 0..{n_fg - 1}, got {index.min()}..{index.max()}")
    fg = store.foregrounds
    images, masks = fg.read(index), fg.read_masks(index)
    boxes = fg.boxes[index]
    for i in range(len(index)):
        x0, y0, x1, y1 = boxes[i]
        if not (x1 > x0 >= 0 and y1 > y0 >= 0):
            boxes[i] = _mask_box(masks[i])
    by_source = _own_backgrounds(store)
    own = np.array([by_source.get(fg.source_ids[r], -1) for r in index], np.int64)
    block = _Block(store, name, index, images, masks, fg.labels[index].copy(), boxes, own,
                   [_rng(rng_seed, name, r) for r in index], options)
    imgs, fg_id, bg_id = spec.fn(block)
    sources = mask_sources(store)
    return VariantBatch(name, np.ascontiguousarray(imgs, np.uint8), block.labels, np.asarray(fg_id, np.int64),
                        np.asarray(bg_id, np.int64), [fg.source_ids[r] for r in index], index,
                        [sources[r] for r in index])


def why_not(store: Store, name: str, options: VariantOptions | None = None) -> str | None:
    """Why the variant cannot be made for every foreground of this store (None when it can)."""
    _spec(name)
    bg = store.backgrounds.labels
    have = set(bg[bg >= 0].tolist())
    n_classes = len(store.class_names)
    need = {"mixed_same": lambda y: y, "mixed_next": lambda y: (y + 1) % n_classes}.get(name)
    if need is not None:
        missing = sorted({need(int(y)) for y in store.foregrounds.labels} - have)
        if missing:
            return (f"{name} needs backgrounds of class(es) {', '.join(store.class_names[c] for c in missing)}; "
                    f"the store has none")
    if name == "mixed_rand" and not have:
        return "mixed_rand needs labelled backgrounds; the store has none"
    if name == "bg_texture" and (options or VariantOptions()).texture == "store" and not (bg < 0).any():
        return "bg_texture with texture 'store' needs unlabelled backgrounds (label -1); the store has none"
    return None


def iter_variant(store: Store, name: str, *, block: int = 64, rng_seed: int = 0,
                 options: VariantOptions | None = None) -> Iterator[VariantBatch]:
    """The whole variant over all foreground rows, ``block`` rows at a time."""
    if block < 1:
        raise AdvbgError(f"block must be >= 1, got {block}")
    for start in range(0, len(store.foregrounds), block):
        yield make_variant(store, name, slice(start, start + block), rng_seed=rng_seed, options=options)


# --------------------------------------------------------------------------------------------- evalsets in HDF5
class EvalsetWriter:
    """Appends items to ``/evalsets/<name>`` of an open h5py file (replacing an earlier group of that name).

    Datasets: image (K,H,W,3) uint8, label (K,) int64, source_id (K,) utf-8, fg_id (K,) int64, bg_id (K,)
    int64. ``close()`` sets ``attrs['complete'] = True`` last.
    """

    def __init__(self, file: h5py.File, name: str, image_size: tuple[int, int], attrs: dict | None = None):
        root = file.require_group("evalsets")
        if name in root:
            del root[name]
        self.group = g = root.create_group(name)
        g.attrs.update(variant=name, complete=False, **(attrs or {}))
        h, w = image_size
        g.create_dataset("image", (0, h, w, 3), np.uint8, maxshape=(None, h, w, 3), chunks=(1, h, w, 3),
                         **_COMPRESSION)
        for k in ("label", "fg_id", "bg_id"):
            g.create_dataset(k, (0,), np.int64, maxshape=(None,), chunks=(1024,))
        g.create_dataset("source_id", (0,), _STR, maxshape=(None,), chunks=(1024,))
        self.n = 0

    def append_many(self, images: np.ndarray, labels, source_ids: Sequence[str], fg_id, bg_id) -> None:
        k = len(images)
        if k == 0:
            return
        g, n = self.group, self.n
        for key, value in (("image", images), ("label", labels), ("fg_id", fg_id), ("bg_id", bg_id),
                           ("source_id", np.array(list(source_ids), dtype=object))):
            g[key].resize(n + k, axis=0)
            g[key][n:n + k] = value
        self.n += k

    def append(self, image: np.ndarray, label: int, source_id: str, fg_id: int = -1, bg_id: int = -1) -> None:
        self.append_many(image[None], [label], [source_id], [fg_id], [bg_id])

    def append_batch(self, batch: VariantBatch) -> None:
        self.append_many(batch.images, batch.labels, batch.source_id, batch.fg_id, batch.bg_id)

    def close(self, **attrs) -> None:
        self.group.attrs.update(n=self.n, **attrs)
        self.group.attrs["complete"] = True


@dataclass
class Evalset:
    """A written evaluation set: ``images`` is the h5py dataset (slice it), the rest are small arrays."""

    name: str
    images: h5py.Dataset
    labels: np.ndarray
    fg_id: np.ndarray
    bg_id: np.ndarray
    source_ids: list[str]
    attrs: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def blocks(self, block: int) -> Iterator[tuple[slice, np.ndarray]]:
        for start in range(0, len(self), block):
            s = slice(start, min(start + block, len(self)))
            yield s, self.images[s]


def evalset_names(file: h5py.File) -> list[str]:
    """Names of the complete evaluation sets in an open store or variants file."""
    g = file.get("evalsets")
    return [] if g is None else sorted(k for k in g if g[k].attrs.get("complete", False))


def open_evalset(file: h5py.File, name: str) -> Evalset:
    """The complete evaluation set ``/evalsets/<name>`` of an open h5py file (a store's ``.file`` or a variants .h5)."""
    names = evalset_names(file)
    if name not in names:
        raise AdvbgError(f"{file.filename} has no complete evaluation set {name!r} "
                         f"(it has: {', '.join(names) or 'none'})")
    g = file["evalsets"][name]
    return Evalset(name, g["image"], g["label"][()], g["fg_id"][()], g["bg_id"][()],
                   [s.decode() if isinstance(s, bytes) else s for s in g["source_id"][()]], dict(g.attrs))


# --------------------------------------------------------------------------------------------- writing sets
def class_folders(class_names: Sequence[str]) -> list[str]:
    """Folder names of the released layout: IN-9's own for IN-9, else ``NN_name``.

    A class name is data, never a path: separators and control characters become '_' (spaces are kept, as in
    the release), so no name can lead outside the output folder.
    """
    if tuple(class_names) == IN9_CLASSES:
        return list(IN9_FOLDERS)
    return [f"{k:02d}_{_UNSAFE_IN_FOLDER.sub('_', name)}" for k, name in enumerate(class_names)]


_UNSAFE_IN_FOLDER = re.compile(r"[/\\\x00-\x1f]")


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s.replace("/", "__")).strip("._") or "item"


def _file_name(batch: VariantBatch, i: int, store: Store) -> str:
    f, bg = int(batch.fg_id[i]), int(batch.bg_id[i])
    src = batch.source_id[i]
    if f >= 0 and bg >= 0 and store.backgrounds.source_ids[bg] != src:
        return f"fg_{_safe_name(src)}_bg_{_safe_name(store.backgrounds.source_ids[bg])}"
    return _safe_name(src)


def _write_folder(store: Store, tmp: Path, name: str, batches: Iterator[VariantBatch]) -> int:
    """``<name>/val/<NN_class>/<file>.png`` (lossless) plus ``<name>/manifest.csv``; returns the image count."""
    folders = class_folders(store.class_names)
    base = tmp / name
    base.mkdir(parents=True)
    used: set[str] = set()
    with open(base / "manifest.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["file", "label", "class", "fg_id", "bg_id", "source_id", "fg_source_id", "bg_source_id",
                     "mask_source"])
        for batch in batches:
            for i in range(len(batch)):
                y, f, b = int(batch.labels[i]), int(batch.fg_id[i]), int(batch.bg_id[i])
                stem, k = _file_name(batch, i, store), 1
                rel = f"val/{folders[y]}/{stem}.png"
                while rel in used:
                    k += 1
                    rel = f"val/{folders[y]}/{stem}_{k}.png"
                used.add(rel)
                (base / rel).parent.mkdir(parents=True, exist_ok=True)
                if not cv2.imwrite(str(base / rel), cv2.cvtColor(batch.images[i], cv2.COLOR_RGB2BGR), _PNG):
                    raise AdvbgError(f"could not write {base / rel}")
                wr.writerow([rel, y, store.class_names[y], f, b, batch.source_id[i],
                             store.foregrounds.source_ids[f] if f >= 0 else "",
                             store.backgrounds.source_ids[b] if b >= 0 else "", batch.mask_source[i]])
    return len(used)


def _write_h5(store: Store, f: h5py.File, name: str, batches: Iterator[VariantBatch], meta: dict) -> int:
    w = EvalsetWriter(f, name, store.image_size, attrs=dict(origin="generated", **meta))
    sources: list[str] = []
    for batch in batches:
        w.append_batch(batch)
        sources.extend(batch.mask_source)
    # per row: the mask source of the foreground row it was made for (optional for readers)
    w.group.create_dataset("mask_source", data=np.array(sources, dtype=object), dtype=_STR)
    w.close()
    return w.n


def write_variants(store_path: str | os.PathLike, out: str | os.PathLike, *, fmt: str | None = None,
                   names: Sequence[str] | None = None, seed: int = 0, options: VariantOptions | None = None,
                   block: int = 64, overwrite: bool = False, progress: bool = True,
                   on_skip: Callable[[str, str], None] | None = None) -> dict[str, int]:
    """Write variant sets of a store to ``out`` (a folder in the released layout, or a new .h5 file).

    Returns the number of images per variant. ``out`` appears only when everything was written (built under a
    hidden temporary and renamed: ``atomic_output``). A variant the store cannot make (``why_not``) fails the call
    when it was named in ``names``; with ``names=None`` (all) it is skipped, reported to ``on_skip(name, reason)``
    and listed under ``skipped`` in the output's metadata.
    """
    out = Path(out)
    fmt = fmt or ("h5" if out.suffix.lower() in (".h5", ".hdf5") else "folder")
    if fmt not in ("folder", "h5"):
        raise AdvbgError(f"--format must be folder or h5, got {fmt!r}")
    explicit = names is not None
    names = list(names or variant_names())
    for n in names:
        _spec(n)
    options = (options or VariantOptions()).validate()
    if not names:
        raise AdvbgError("no variants named")
    if seed < 0:
        raise AdvbgError(f"--seed must be >= 0, got {seed}")
    check_output(out, inputs=[store_path], folder=fmt == "folder")
    if out.exists() and not overwrite:
        raise AdvbgError(f"{out} already exists; pass --overwrite to replace it")
    counts: dict[str, int] = {}
    with Store(store_path) as store:
        skipped = {n: r for n in names if (r := why_not(store, n, options))}
        if skipped and explicit:
            raise AdvbgError(next(iter(skipped.values())))
        for n, reason in skipped.items():
            if on_skip:
                on_skip(n, reason)
        names = [n for n in names if n not in skipped]
        meta = dict(seed=int(seed), options=json.dumps(asdict(options)), store=str(Path(store_path).resolve()),
                    store_digest=store.digest(), skipped=json.dumps(skipped),
                    mask_sources=json.dumps(mask_source_counts(store)))
        bar = progress_bar(total=len(names) * len(store.foregrounds), unit="img", desc="variants", enabled=progress)

        def batches(name: str) -> Iterator[VariantBatch]:
            for b in iter_variant(store, name, block=block, rng_seed=seed, options=options):
                _require_room(partial_path(out), b.images.nbytes)
                bar.update(len(b))
                yield b
        try:
            with atomic_output(out, folder=fmt == "folder") as tmp:
                if fmt == "folder":
                    for name in names:
                        counts[name] = _write_folder(store, tmp, name, batches(name))
                    (tmp / "variants.json").write_text(json.dumps(dict(meta, counts=counts,
                                                                       class_names=list(store.class_names)), indent=2))
                else:
                    with h5py.File(tmp, "w") as f:
                        f.attrs.update(advbg_evalsets=EVALSETS_SCHEMA, complete=False, **meta)
                        f.create_dataset("class_names", data=np.array(list(store.class_names), dtype=object),
                                         dtype=_STR)
                        for name in names:
                            counts[name] = _write_h5(store, f, name, batches(name), meta)
                        f.attrs["complete"] = True
        finally:
            bar.close()
    return counts


def _require_room(tmp: Path, nbytes: int) -> None:
    """Stop cleanly while the disk still has room for the next block: HDF5 meeting a full disk can crash the
    process (the same rule as the store writer's)."""
    if shutil.disk_usage(tmp.parent).free < nbytes + DISK_HEADROOM:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
