"""Pixel operations of the IN-9 protocol: reference resize/crop, GrabCut masks, Only-BG-T and Only-BG-B.

Images are RGB uint8 (H, W, 3). A box is ``(x0, y0, x1, y1)`` in pixels with x1/y1 exclusive.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from advbg.errors import AdvbgError

Box = tuple[int, int, int, int]


def _check_box(box: Sequence[int], shape: Sequence[int]) -> Box:
    """The box clipped to the image; an AdvbgError if it is malformed or empty after clipping."""
    if box is None or len(box) != 4:
        raise AdvbgError(f"a box must be (x0, y0, x1, y1), got {box!r}")
    h, w = int(shape[0]), int(shape[1])
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, x1 = max(0, min(x0, w)), max(0, min(x1, w))
    y0, y1 = max(0, min(y0, h)), max(0, min(y1, h))
    if x1 <= x0 or y1 <= y0:
        raise AdvbgError(f"box {tuple(box)} is empty inside a {w}x{h} image; boxes are x0, y0, x1, y1 "
                         f"with x1 > x0 and y1 > y0 (exclusive ends)")
    return x0, y0, x1, y1


def box_fraction(box: Sequence[int], image_shape: Sequence[int]) -> float:
    """Share of the image's pixels inside the box (the box clipped to the image first)."""
    x0, y0, x1, y1 = _check_box(box, image_shape)
    return (x1 - x0) * (y1 - y0) / float(image_shape[0] * image_shape[1])


def mask_fraction(mask: np.ndarray) -> float:
    """Share of the pixels where the mask is non-zero."""
    mask = np.asarray(mask)
    return float(np.count_nonzero(mask)) / mask.size if mask.size else 0.0


# --------------------------------------------------------------------------------------------- resize/crop
def resize_crop(image: np.ndarray, box: Sequence[int] | None, resize: int = 256,
                crop: int = 224) -> tuple[np.ndarray, Box | None, float]:
    """Reference preprocessing: shorter side to ``resize``, then a ``crop`` x ``crop`` centre crop.

    ``image`` is uint8 (H, W, 3) or (H, W) (a mask: resize it with ``resize <= 0`` to keep it 0/1).
    ``resize <= 0`` skips the resize, ``crop <= 0`` the crop. Sizes and offsets follow torchvision's
    ``Resize(resize)`` + ``CenterCrop(crop)`` (longer side truncated, crop offset rounded). Returns the image,
    the box mapped into the result (clipped; None if no box was given or nothing of it survives) and the
    fraction of the box's area that survives the crop (1.0 without a box).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise AdvbgError(f"expected a uint8 (H, W, 3) image or (H, W) mask, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    if box is not None:
        _check_box(box, image.shape)
    nh, nw = h, w
    if resize > 0 and min(h, w) != resize:
        nh, nw = (resize, int(resize * w / h)) if h <= w else (int(resize * h / w), resize)
        # INTER_AREA averages like PIL's antialiased bilinear when shrinking; it is bilinear when enlarging.
        interp = cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR
        image = cv2.resize(image, (nw, nh), interpolation=interp)
    top = left = 0
    if crop > 0:
        if crop > nh or crop > nw:
            raise AdvbgError(f"cannot centre-crop {crop}x{crop} from a {nw}x{nh} image; "
                             f"use a larger resize or a smaller crop")
        top, left = int(round((nh - crop) / 2.0)), int(round((nw - crop) / 2.0))
        image = image[top:top + crop, left:left + crop]
    if box is None:
        return np.ascontiguousarray(image), None, 1.0
    sx, sy = nw / w, nh / h
    fx0, fx1 = box[0] * sx - left, box[2] * sx - left
    fy0, fy1 = box[1] * sy - top, box[3] * sy - top
    ch, cw = image.shape[:2]
    cx0, cx1 = min(max(fx0, 0.0), cw), min(max(fx1, 0.0), cw)
    cy0, cy1 = min(max(fy0, 0.0), ch), min(max(fy1, 0.0), ch)
    area = (fx1 - fx0) * (fy1 - fy0)
    kept = max(cx1 - cx0, 0.0) * max(cy1 - cy0, 0.0)
    new_box = (int(round(cx0)), int(round(cy0)), int(round(cx1)), int(round(cy1)))
    if new_box[2] <= new_box[0] or new_box[3] <= new_box[1]:
        new_box = None
    return np.ascontiguousarray(image), new_box, float(kept / area) if area > 0 else 0.0


# --------------------------------------------------------------------------------------------- GrabCut
def grabcut_mask(image: np.ndarray, box: Sequence[int], iterations: int = 5, retries: int = 3,
                 min_box_fraction: float = 0.1, seed: int = 0) -> np.ndarray | None:
    """Foreground mask (uint8 0/1, H x W) from OpenCV GrabCut initialised with ``box`` as the rectangle.

    Foreground = definite + probable foreground after ``iterations`` iterations. A mask covering less than
    ``min_box_fraction`` of the box is rejected; GrabCut is then retried with RNG seeds ``seed + 1`` ...
    ``seed + retries`` (its GMMs start from k-means); if every try is rejected, returns None.
    Deterministic for a given ``seed``. A box that touches all four borders leaves GrabCut no background
    to learn from, so the rectangle is shrunk by one pixel on each side where the image allows it.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise AdvbgError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    x0, y0, x1, y1 = _check_box(box, image.shape)
    if x0 == 0 and y0 == 0 and x1 == w and y1 == h:
        x0, y0, x1, y1 = min(1, w - 1), min(1, h - 1), max(w - 1, x0 + 1), max(h - 1, y0 + 1)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    box_area = (x1 - x0) * (y1 - y0)
    for attempt in range(retries + 1):
        cv2.setRNGSeed((int(seed) + attempt) % 2**31)   # cv2 takes a 32-bit int
        gc = np.zeros((h, w), np.uint8)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(bgr, gc, (x0, y0, x1 - x0, y1 - y0), bgd, fgd, int(iterations), cv2.GC_INIT_WITH_RECT)
        except cv2.error:
            continue  # e.g. a degenerate colour model (too few distinct pixels); counts as a rejected try
        mask = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
        if np.count_nonzero(mask) >= min_box_fraction * box_area:
            return mask
    return None


# --------------------------------------------------------------------------------------------- backgrounds
def only_bg_b(image: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """Only-BG-B: a copy of the image with the box filled black."""
    x0, y0, x1, y1 = _check_box(box, np.shape(image))
    out = np.array(image, copy=True)
    out[y0:y1, x0:x1] = 0
    return out


def only_bg_t(image: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """Only-BG-T: the box filled with tiles of the largest strip of the image outside it.

    The candidate strips are the full-height strips left (columns < x0) and right (columns >= x1) of the box
    and the full-width strips above (rows < y0) and below (rows >= y1); the largest by area wins (ties: left,
    right, top, bottom). The strip tiles the whole canvas starting at the canvas origin (0, 0), i.e. the
    tile pixel at (y, x) is ``strip[y % strip_h, x % strip_w]``, and only the pixels inside the box are
    replaced. A box touching all four borders leaves no strip: the box (the whole image) is then filled with
    the image's mean colour.
    """
    image = np.asarray(image)
    x0, y0, x1, y1 = _check_box(box, image.shape)
    h, w = image.shape[:2]
    strips = [image[:, :x0], image[:, x1:], image[:y0, :], image[y1:, :]]
    strip = max(strips, key=lambda s: s.shape[0] * s.shape[1])  # max() keeps the first of equal areas
    out = image.copy()
    if strip.size == 0:
        out[y0:y1, x0:x1] = np.round(image.reshape(-1, image.shape[2]).mean(axis=0)).astype(image.dtype)
        return out
    sh, sw = strip.shape[:2]
    tiled = np.tile(strip, (-(-h // sh), -(-w // sw), 1))[:h, :w]
    out[y0:y1, x0:x1] = tiled[y0:y1, x0:x1]
    return out
