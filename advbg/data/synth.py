"""A controlled synthetic dataset written as an advbg store: shapes on class-correlated backgrounds.

Every "photo" shows one flat-coloured shape (its class: circle, square, ...) on a textured background. Each
class owns a background *style* (a hue and a texture kind); with probability ``correlation`` a photo's
background takes its own class's style, otherwise a style drawn uniformly from all classes (which may again
be its own). So ``correlation=0`` makes backgrounds independent of the class, ``correlation=1`` makes them
fully predictive, and P(style == class) = correlation + (1 - correlation) / C. The shape's colour is drawn
uniformly at random, so only its outline carries the class.

Per photo the store gets
  - a foreground: the photo, the exact 0/1 shape mask (rendered 4x supersampled, thresholded at half
    coverage, and painted with that same mask), the label, the mask's box;
  - a background: the photo's Only-BG-T (the box filled with tiles of the largest strip outside it, as in
    IN-9), labelled with the photo's class, sharing the foreground's source id.
The styles actually drawn are kept in ``/synth/style`` and the settings in the root attribute ``synth``.
"""
from __future__ import annotations

import colorsys
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from advbg.data.composite import composite
from advbg.data.segment import only_bg_t
from advbg.data.writer import StoreWriter
from advbg.errors import AdvbgError
from advbg.files import check_output

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "diamond", "star", "hexagon",
                           "crescent")
TEXTURES: tuple[str, ...] = ("stripes", "checker", "dots", "noise", "waves", "grid")
_SS = 4  # supersampling factor of the shape raster


@dataclass(frozen=True)
class SynthConfig:
    """What `advbg synth` makes. Saved in the store's ``synth`` attribute."""

    n_classes: int = 6
    n_per_class: int = 100
    image_size: int = 32
    correlation: float = 0.9           # strength: P(own class style) before the uniform draw, see module doc
    seed: int = 0
    scale: tuple[float, float] = (0.24, 0.40)   # shape radius as a share of the image side

    def validate(self) -> "SynthConfig":
        if not 2 <= self.n_classes <= len(SHAPES):
            raise AdvbgError(f"classes must be 2..{len(SHAPES)} ({', '.join(SHAPES)}), got {self.n_classes}")
        if not 1 <= self.n_per_class <= 100_000:
            raise AdvbgError(f"per-class count must be 1..100000, got {self.n_per_class}")
        if self.image_size > 1024:
            raise AdvbgError(f"image size must be at most 1024 pixels, got {self.image_size}")
        if self.image_size < 16:
            raise AdvbgError(f"image size must be at least 16 pixels, got {self.image_size}")
        if self.seed < 0:
            raise AdvbgError(f"seed must be a non-negative integer, got {self.seed}")
        if not 0.0 <= self.correlation <= 1.0:
            raise AdvbgError(f"correlation must be in [0, 1], got {self.correlation}")
        lo, hi = self.scale
        if not 0.05 <= lo <= hi <= 0.45:
            raise AdvbgError(f"scale must satisfy 0.05 <= min <= max <= 0.45, got {self.scale}")
        return self

    @property
    def class_names(self) -> tuple[str, ...]:
        return SHAPES[: self.n_classes]

    @property
    def match_probability(self) -> float:
        """P(background style == the photo's class)."""
        return self.correlation + (1.0 - self.correlation) / self.n_classes


@dataclass
class Photo:
    """One synthetic photo and its parts (uint8 RGB, 0/1 mask, box x0, y0, x1, y1 exclusive)."""

    image: np.ndarray
    mask: np.ndarray
    clean_background: np.ndarray      # the background before the shape was painted
    colour: np.ndarray                # (3,) uint8 shape colour
    box: tuple[int, int, int, int]
    label: int
    style: int


# --------------------------------------------------------------------------------------------- shapes
def _polygon(n: int, radius: float, start: float = -np.pi / 2) -> np.ndarray:
    a = start + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(a), np.sin(a)], 1) * radius


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer, inn = _polygon(points, 1.0), _polygon(points, inner, -np.pi / 2 + np.pi / points)
    return np.stack([outer, inn], 1).reshape(-1, 2)


def _cross(arm: float = 0.36) -> list[np.ndarray]:
    return [np.array([[-1, -arm], [1, -arm], [1, arm], [-1, arm]], float),
            np.array([[-arm, -1], [arm, -1], [arm, 1], [-arm, 1]], float)]


# Each shape: (polygons to fill, discs to fill, discs to clear) in unit coordinates (radius 1).
_SHAPE_PARTS: dict[str, Callable[[], tuple[list, list, list]]] = {
    "circle": lambda: ([], [((0, 0), 1.0)], []),
    "square": lambda: ([np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.78], [], []),
    "triangle": lambda: ([_polygon(3, 1.1, -np.pi / 2) + [0, 0.15]], [], []),
    "cross": lambda: (_cross(), [], []),
    "ring": lambda: ([], [((0, 0), 1.0)], [((0, 0), 0.55)]),
    "diamond": lambda: ([np.array([[0, -1.05], [0.6, 0], [0, 1.05], [-0.6, 0]], float)], [], []),
    "star": lambda: ([_star() * 1.1], [], []),
    "hexagon": lambda: ([_polygon(6, 1.0, 0.0)], [], []),
    "crescent": lambda: ([], [((0, 0), 1.0)], [((0.5, -0.2), 0.85)]),
}


def shape_mask(name: str, size: int, centre: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """0/1 uint8 (size, size) mask of a shape: drawn 4x larger, then kept where it covers half a pixel."""
    polys, discs, holes = _SHAPE_PARTS[name]()
    big = np.zeros((size * _SS, size * _SS), np.uint8)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    cx, cy = centre

    def to_px(p: np.ndarray) -> np.ndarray:
        q = (np.asarray(p, float) @ rot.T) * radius + (cx, cy)
        return np.round(q * _SS * 16).astype(np.int32)        # 4 fractional bits for cv2's shift

    for p in polys:
        cv2.fillPoly(big, [to_px(p)], 255, lineType=cv2.LINE_8, shift=4)
    for fill, parts in ((255, discs), (0, holes)):
        for off, r in parts:
            ctr = tuple(int(v) for v in to_px(np.array([off]))[0])
            cv2.circle(big, ctr, int(round(r * radius * _SS * 16)), fill, -1, lineType=cv2.LINE_8, shift=4)
    cover = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
    return (cover >= 128).astype(np.uint8)


# --------------------------------------------------------------------------------------------- backgrounds
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


def _pattern(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) float pattern in [0, 1] of one texture kind, with random frequency, angle and phase."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    freq, phase, theta = rng.uniform(3, 6), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    if kind == "stripes":
        p = np.sin(2 * np.pi * freq * u + phase) > 0
    elif kind == "checker":
        p = (np.sin(2 * np.pi * freq * u + phase) > 0) ^ (np.sin(2 * np.pi * freq * v + phase) > 0)
    elif kind == "dots":
        p = np.sin(2 * np.pi * freq * u + phase) * np.sin(2 * np.pi * freq * v) > 0.5
    elif kind == "noise":
        p = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), size / 16) > 0
    elif kind == "waves":
        p = np.sin(2 * np.pi * (freq * u + 0.15 * np.sin(2 * np.pi * 2 * v)) + phase) * 0.5 + 0.5
    else:  # grid
        p = (np.abs(np.sin(np.pi * freq * u + phase)) < 0.3) | (np.abs(np.sin(np.pi * freq * v)) < 0.3)
    return p.astype(np.float32)


def style_background(style: int, n_styles: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 (size, size, 3) background of one style: the style's hue (jittered) in its texture kind."""
    hue, value = style / n_styles + rng.uniform(-0.03, 0.03), rng.uniform(0.7, 0.9)
    a = _hsv(hue, rng.uniform(0.55, 0.8), value)
    b = _hsv(hue + 0.04, rng.uniform(0.5, 0.8), value - rng.uniform(0.15, 0.25))
    p = _pattern(TEXTURES[style % len(TEXTURES)], rng, size)[..., None]
    img = a * (1 - p) + b * p + rng.normal(0, 0.02, (size, size, 3)).astype(np.float32)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------- photos
def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _shape_colour(background: np.ndarray, rng: np.random.Generator, min_distance: float = 0.35) -> np.ndarray:
    """A random colour at least ``min_distance`` (RGB in [0, 1]) from the background's mean, so the outline shows."""
    mean = background.reshape(-1, 3).mean(0) / 255.0
    for _ in range(32):
        c = _hsv(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.1, 1.0))
        if np.linalg.norm(c - mean) >= min_distance:
            break
    return np.clip(np.round(c * 255), 0, 255).astype(np.uint8)


def render_photo(config: SynthConfig, label: int, rng: np.random.Generator) -> Photo:
    """One photo of class ``label``: its style drawn per the correlation, then a shape painted on it."""
    n, size = config.n_classes, config.image_size
    style = label if rng.random() < config.correlation else int(rng.integers(n))
    clean = style_background(style, n, rng, size)
    radius = rng.uniform(*config.scale) * size
    lo, hi = radius + 1, size - radius - 1
    centre = (rng.uniform(lo, hi), rng.uniform(lo, hi))
    mask = shape_mask(config.class_names[label], size, centre, radius, rng.uniform(0, 2 * np.pi))
    if not mask.any():  # cannot happen with scale >= 0.05 and size >= 16; guards a future change
        raise AdvbgError(f"empty shape mask for {config.class_names[label]}")
    colour = _shape_colour(clean, rng)
    image = composite(colour, mask, clean)
    return Photo(image, mask, clean, colour, _box(mask), label, style)


def make_synthetic(path: str | os.PathLike, config: SynthConfig = SynthConfig(), *, overwrite: bool = False,
                   echo: Callable[[str], None] | None = None) -> Path:
    """Write the synthetic store to ``path`` (atomically, through StoreWriter) and return its path.

    Photo i has class ``i % n_classes`` (classes interleaved) and source id ``synth<seed>-<i>``; one generator
    seeded with ``config.seed`` draws everything, so a seed always gives the same bytes of pixels.
    """
    config.validate()
    check_output(path)
    rng = np.random.default_rng(config.seed)
    size = (config.image_size, config.image_size)
    styles = []
    meta = json.dumps(dict(asdict(config), class_names=list(config.class_names), textures=list(TEXTURES),
                           match_probability=config.match_probability))
    with StoreWriter(path, class_names=config.class_names, image_size=size, overwrite=overwrite,
                     attrs=dict(synth=meta)) as w:
        for i in range(config.n_classes * config.n_per_class):
            ph = render_photo(config, i % config.n_classes, rng)
            sid = f"synth{config.seed}-{i:05d}"
            w.add_foreground(ph.image, ph.mask, ph.label, sid, ph.box)
            w.add_background(only_bg_t(ph.image, ph.box), ph.label, sid)
            styles.append(ph.style)
        w.file.create_dataset("synth/style", data=np.asarray(styles, np.int64))
    if echo:
        match = float(np.mean(np.asarray(styles) == np.arange(len(styles)) % config.n_classes))
        echo(f"wrote {path}: {len(styles)} photos of {config.n_classes} classes ({', '.join(config.class_names)}), "
             f"{config.image_size}x{config.image_size}, background style matches the class in {100 * match:.1f}%")
    return Path(path)
