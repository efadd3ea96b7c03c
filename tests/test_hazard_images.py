"""Hazard: images from elsewhere. Each kind is converted with an ImageWarning or refused with a reason."""
from __future__ import annotations

import struct
import time
import warnings
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from advbg.data.imageio import ImageWarning, read_image
from advbg.errors import AdvbgError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)


def _no_warning(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageWarning)
        return read_image(path, **kw)


def png_header_only(path, width: int, height: int):
    """A PNG whose header claims width x height pixels but holds a few bytes of data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_plain_rgb_png_reads_exactly_without_warning(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    out = _no_warning(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.flags.writeable and np.array_equal(out, RGB)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_refused_not_padded(tmp_path, fmt):
    big = RNG.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "full", format=fmt)
    data = (tmp_path / "full").read_bytes()
    (tmp_path / "cut").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdvbgError, match="truncated or corrupt"):
        read_image(tmp_path / "cut")


def test_not_an_image_and_missing_file_are_refused(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"GIF89a but not really" * 3)
    with pytest.raises(AdvbgError, match="not a readable image"):
        read_image(tmp_path / "x.jpg")
    with pytest.raises(AdvbgError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(AdvbgError, match="not a file"):
        read_image(tmp_path)


def test_16bit_gray_png_keeps_high_byte_with_warning(tmp_path):
    gray = RNG.integers(0, 256, (24, 32)).astype(np.uint16)
    Image.fromarray(gray * 257).save(tmp_path / "g16.png")  # v * 257: high byte is v exactly
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    with pytest.warns(ImageWarning, match="16-bit samples reduced to 8 bits.*grayscale"):
        out = read_image(tmp_path / "g16.png")
    assert out.shape == (24, 32, 3) and np.array_equal(out, np.repeat(gray[..., None], 3, 2).astype(np.uint8))


def test_16bit_rgb_png_keeps_high_byte_with_warning(tmp_path):
    rgb16 = RNG.integers(0, 65536, (24, 32, 3)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])  # Pillow cannot write 48-bit PNGs; cv2 is BGR
    with pytest.warns(ImageWarning, match="16-bit samples reduced to 8 bits"):
        out = read_image(tmp_path / "c16.png")
    assert np.array_equal(out, (rgb16 >> 8).astype(np.uint8))


def test_grayscale_is_replicated_with_warning(tmp_path):
    Image.fromarray(RGB[..., 0]).save(tmp_path / "l.png")
    with pytest.warns(ImageWarning, match="grayscale image replicated to RGB"):
        out = read_image(tmp_path / "l.png")
    assert np.array_equal(out, np.repeat(RGB[..., :1], 3, 2))


def test_opaque_rgba_drops_alpha_silently(tmp_path):
    Image.fromarray(np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])).save(tmp_path / "o.png")
    assert np.array_equal(_no_warning(tmp_path / "o.png"), RGB)


def test_translucent_rgba_is_composited_over_black_with_warning(tmp_path):
    alpha = RNG.integers(0, 256, RGB.shape[:2], dtype=np.uint8)
    Image.fromarray(np.dstack([RGB, alpha])).save(tmp_path / "t.png")
    with pytest.warns(ImageWarning, match="alpha channel composited over black"):
        out = read_image(tmp_path / "t.png")
    want = np.rint(RGB.astype(np.float64) * alpha[..., None] / 255)
    assert np.abs(out.astype(np.float64) - want).max() <= 0.5 + 1e-9


def test_gray_with_alpha_is_replicated_and_composited_with_both_warnings(tmp_path):
    gray, alpha = RGB[..., 0], np.where(RGB[..., 1] > 127, 255, 0).astype(np.uint8)
    Image.fromarray(np.dstack([gray, alpha])).save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    with pytest.warns(ImageWarning) as record:
        out = read_image(tmp_path / "la.png")
    messages = " ".join(str(w.message) for w in record)
    assert "grayscale image replicated" in messages and "alpha channel composited over black" in messages
    assert np.array_equal(out, np.repeat(np.where(alpha == 255, gray, 0)[..., None], 3, 2))


def test_palette_with_transparency_goes_through_the_alpha_rule(tmp_path):
    p = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    with pytest.warns(ImageWarning, match="alpha channel composited over black"):
        out = read_image(tmp_path / "p.png")
    idx = np.array(Image.open(tmp_path / "p.png"))
    assert out.shape == RGB.shape and (out[idx == 0] == 0).all()


def test_cmyk_jpeg_is_converted_to_rgb_with_warning(tmp_path):
    smooth = cv2.GaussianBlur(RGB, (9, 9), 3)
    Image.fromarray(smooth).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    with pytest.warns(ImageWarning, match="CMYK image converted to RGB"):
        out = read_image(tmp_path / "c.jpg")
    assert out.shape == RGB.shape and np.abs(out.astype(int) - smooth).mean() < 4


def test_float_tiff_is_refused(tmp_path):
    Image.fromarray(RNG.random((8, 8)).astype(np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(AdvbgError, match="floating-point pixels"):
        read_image(tmp_path / "f.tif")


def test_decompression_bomb_is_refused_from_its_header_before_decoding(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 12_000, 12_000)  # 144 M pixels = 432 MB decoded
    t0 = time.perf_counter()
    with pytest.raises(AdvbgError, match=r"header says 12000x12000 = 144,000,000 pixels.*decompression bomb"):
        read_image(bomb)
    assert time.perf_counter() - t0 < 1.0
    giant = png_header_only(tmp_path / "giant.png", 60_000, 60_000)  # 3.6 G pixels: past Pillow's own guard too
    with pytest.raises(AdvbgError, match="refusing .*giant.png.*decompression bomb"):
        read_image(giant, max_pixels=10**12)


def test_max_pixels_applies_to_ordinary_images(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    with pytest.raises(AdvbgError, match="more than the limit of 100"):
        read_image(tmp_path / "a.png", max_pixels=100)


# --------------------------------------------------------------------------------------------- via ingest
def _released_with(tmp_path, replace):
    from fixtures_data import make_released

    from advbg.data.labels import IN9_FOLDERS

    rel = make_released(tmp_path, per_class=1)
    target = rel.root / "original" / "val" / IN9_FOLDERS[0] / f"{rel.stems[0]}.JPEG"
    replace(target)
    return rel


def test_ingest_refuses_a_decompression_bomb_with_a_reason(tmp_path):
    from advbg.data.ingest import ingest_in9

    def bomb(p):
        png_header_only(p.with_suffix(".png"), 60_000, 60_000)
        p.unlink()

    rel = _released_with(tmp_path, bomb)
    problems = []
    with pytest.raises(AdvbgError, match="1 problem"):
        ingest_in9(rel.root, tmp_path / "s.h5", progress=False, on_problem=problems.append)
    assert len(problems) == 1 and "decompression bomb" in problems[0] and rel.stems[0] in problems[0]
    assert not (tmp_path / "s.h5").exists()


def test_ingest_converts_16bit_gray_without_clipping(tmp_path):
    from advbg.data.ingest import ingest_in9
    from advbg.data.store import Store

    gray = np.full((32, 32), 100, np.uint16)

    def deep(p):
        Image.fromarray(gray * 257).save(p.with_suffix(".png"))
        p.unlink()

    rel = _released_with(tmp_path, deep)
    with pytest.warns(ImageWarning, match="16-bit samples reduced"):
        ingest_in9(rel.root, tmp_path / "s.h5", progress=False, on_problem=pytest.fail)
    with Store(tmp_path / "s.h5") as s:
        k = s.foregrounds.source_ids.index(rel.stems[0])
        assert np.abs(s.foregrounds.read([k])[0].astype(int) - 100).max() <= 1
