"""The composite on numpy arrays: ``x = mask * fg + (1 - mask) * bg``, for uint8 images and 0/1 masks.

With a 0/1 mask the formula picks one pixel or the other, so it is computed as a select: exact, no rounding, the
same bytes as the torch compositor (advbg.search.compositor.composite_pairs) before its division by 255.
"""
from __future__ import annotations

import numpy as np


def composite(fg: np.ndarray, mask: np.ndarray, bg: np.ndarray | int) -> np.ndarray:
    """uint8 composites: the foreground's pixel where the mask is set, else the background's.

    fg:   (..., H, W, 3) uint8 images, or anything that broadcasts against them (e.g. one (3,) colour).
    mask: (..., H, W) 0/1 (any dtype; nonzero counts as the object).
    bg:   (..., H, W, 3) uint8 images, or a value that broadcasts (0 = black, 255 = white, an (n, 1, 1, 3) colour).
    Returns (..., H, W, 3) uint8.
    """
    return np.where(np.asarray(mask).astype(bool)[..., None], fg, np.asarray(bg, np.uint8))
