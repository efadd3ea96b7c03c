"""Images and masks from elsewhere: converted to uint8 RGB / 0-1 by documented rules, or refused with a reason.

``read_image(path)`` rules (each conversion emits an ``ImageWarning`` naming the file; refusals raise AdvbgError):

- the header is read first; more than ``max_pixels`` pixels (a decompression bomb) -> refused before decoding;
- unreadable, unknown format or truncated -> refused (a truncated JPEG is never padded with grey);
- 16-bit (or 32-bit integer) samples -> 8-bit by keeping the high byte (``v >> 8``, as Pillow does for 16-bit
  RGB PNGs), warning;
- grayscale (``L``, ``1``, 16-bit) -> the gray value replicated to R, G, B, warning;
- alpha (RGBA, LA, palette with transparency): fully opaque -> alpha dropped silently (nothing is lost);
  any transparent pixel -> composited over black (``rgb * alpha / 255``, rounded), warning. Black matches the
  Only-FG convention of IN-9: transparent means "no content";
- CMYK (e.g. a print JPEG) and other colour spaces -> Pillow's conversion to RGB (no colour profile), warning;
- floating-point samples -> refused (no standard 8-bit scale);
- EXIF orientation is not applied (pixels as stored, like the IN-9 reference code).

``check_mask(mask, image_shape)`` rules: shape (H, W) or (H, W, 1) equal to the image's -> else refused;
values other than 0/1 (0/255, soft mattes) -> binarised as ``> 0`` (the store's rule), warning; bool -> 0/1
silently; NaN -> refused; an empty mask (no foreground pixel) or a full mask (no background pixel would show in a
composite) -> refused for foreground use.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from advbg.errors import AdvbgError

# 8192 x 8192: beyond any photo advbg needs (IN-9 photos are ~500 px); a decompression bomb claims far more.
DEFAULT_MAX_PIXELS = 8192 * 8192
_SIXTEEN = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageWarning(UserWarning):
    """An image or mask was converted on reading (bit depth, channels, alpha, colour space, mask values)."""


def _warn(path, what: str) -> None:
    warnings.warn(f"{path}: {what}", ImageWarning, stacklevel=3)


def read_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` to a writable uint8 (H, W, 3) RGB array by the rules in the module docstring.

    ``max_pixels`` is checked on the header, before any pixel is decoded (Pillow's own guard, about 179 M
    pixels, also applies).
    """

    path = Path(path)
    if not path.is_file():
        raise AdvbgError(f"image {path} does not exist or is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            im = Image.open(path)  # lazy: reads the header only
    except Image.DecompressionBombError as e:
        raise AdvbgError(f"refusing {path}: {e}") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise AdvbgError(f"refusing {path}: not a readable image ({type(e).__name__}: {e})") from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise AdvbgError(f"refusing {path}: its header says {w}x{h} = {w * h:,} pixels, more than the limit "
                             f"of {max_pixels:,} (a decompression bomb, or pass a larger max_pixels)")
        if w <= 0 or h <= 0:
            raise AdvbgError(f"refusing {path}: empty image ({w}x{h})")
        deep = any(";16" in str(t.args) for t in (im.tile or []))  # 16-bit RGB(A) PNGs open as 8-bit modes
        try:
            im.load()
        except Exception as e:  # noqa: BLE001 - Pillow's decoders raise many types on corrupt data
            raise AdvbgError(f"refusing {path}: truncated or corrupt image data ({type(e).__name__}: {e})") from None
        return _to_rgb(im, path, deep)


def _to_rgb(im, path: Path, deep: bool) -> np.ndarray:
    mode = im.mode
    if mode in _SIXTEEN:
        return _gray16(np.array(im), path)
    if mode == "F":
        raise AdvbgError(f"refusing {path}: floating-point pixels (mode F) have no standard 8-bit scale; "
                         f"convert the image to 8-bit RGB first")
    if deep:
        _warn(path, "16-bit samples reduced to 8 bits (high byte)")
    if mode == "P":
        im, mode = (im.convert("RGBA"), "RGBA") if "transparency" in im.info else (im.convert("RGB"), "RGB")
    elif mode == "PA":
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("L", "1"):
        _warn(path, "grayscale image replicated to RGB")
        return np.repeat(np.array(im.convert("L"))[..., None], 3, axis=2)
    if mode in ("LA", "La"):
        _warn(path, "grayscale image replicated to RGB")
        la = np.array(im.convert("LA"))
        return _drop_alpha(np.repeat(la[..., :1], 3, axis=2), la[..., 1], path)
    if mode in ("RGBA", "RGBa"):
        rgba = np.array(im.convert("RGBA"))
        return _drop_alpha(rgba[..., :3], rgba[..., 3], path)
    if mode != "RGB":
        _warn(path, f"{mode} image converted to RGB (Pillow's conversion, no colour profile)")
        im = im.convert("RGB")
    return np.array(im, dtype=np.uint8)


def _gray16(a: np.ndarray, path: Path) -> np.ndarray:
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise AdvbgError(f"refusing {path}: integer pixels outside 0..65535 (min {a.min()}, max {a.max()})")
    _warn(path, "16-bit samples reduced to 8 bits (high byte); grayscale image replicated to RGB")
    g = (a >> 8).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _drop_alpha(rgb: np.ndarray, alpha: np.ndarray, path: Path) -> np.ndarray:
    if (alpha == 255).all():
        return np.ascontiguousarray(rgb)
    share = float((alpha < 255).mean())
    _warn(path, f"alpha channel composited over black ({share:.1%} of the pixels not opaque)")
    out = (rgb.astype(np.uint32) * alpha[..., None].astype(np.uint32) + 127) // 255
    return out.astype(np.uint8)


def check_mask(mask: np.ndarray, image_shape: tuple[int, ...], *, name: str = "mask") -> np.ndarray:
    """A foreground mask as uint8 (H, W) of 0/1, by the rules in the module docstring; ``name`` is used in messages."""
    m = np.asarray(mask)
    h, w = (int(v) for v in tuple(image_shape)[:2])
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[..., 0]
    if m.shape != (h, w):
        raise AdvbgError(f"{name} has shape {m.shape}, its image is {h}x{w}; a mask must be (H, W) like its image")
    if m.dtype == bool:
        m = m.astype(np.uint8)
    elif m.dtype.kind not in "uif":
        raise AdvbgError(f"{name} has dtype {m.dtype}; a mask must hold numbers (0/1)")
    elif m.dtype.kind == "f" and not np.isfinite(m).all():
        raise AdvbgError(f"{name} contains NaN or inf values")
    if not np.isin(m, (0, 1)).all():
        values = np.unique(m)
        shown = ", ".join(f"{v:g}" for v in values[:4]) + (", ..." if len(values) > 4 else "")
        _warn(name, f"values {shown} binarised as > 0")
    m = (m > 0).astype(np.uint8)
    n = int(m.sum())
    if n == 0:
        raise AdvbgError(f"{name} is empty (no foreground pixel); a foreground needs at least one")
    if n == m.size:
        raise AdvbgError(f"{name} covers the whole image (no background pixel would show in a composite)")
    return m
