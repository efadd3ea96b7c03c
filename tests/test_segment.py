"""Pixel operations of the IN-9 protocol (advbg.data.segment)."""
import cv2
import numpy as np
import pytest

from advbg.data.segment import (
    box_fraction,
    grabcut_mask,
    mask_fraction,
    only_bg_b,
    only_bg_t,
    resize_crop,
)
from advbg.errors import AdvbgError


def _scene(seed: int = 0):
    """A noisy reddish ellipse on a noisy green/blue checkerboard, with the ellipse's box and true mask."""
    rng = np.random.default_rng(seed)
    h, w = 96, 128
    yy, xx = np.mgrid[:h, :w]
    bg = np.where(((yy // 8 + xx // 8) % 2)[..., None] == 0, (40, 140, 60), (30, 90, 160))
    fg = np.array((200, 60, 50))
    truth = np.zeros((h, w), np.uint8)
    cv2.ellipse(truth, (60, 50), (30, 22), 20, 0, 360, 1, -1)
    img = np.where(truth[..., None] == 1, fg, bg) + rng.normal(0, 12, (h, w, 3))
    ys, xs = np.nonzero(truth)
    box = (xs.min() - 3, ys.min() - 3, xs.max() + 4, ys.max() + 4)
    return np.clip(img, 0, 255).astype(np.uint8), box, truth


def test_grabcut_recovers_a_drawn_ellipse():
    img, box, truth = _scene()
    mask = grabcut_mask(img, box)
    assert mask is not None and mask.dtype == np.uint8 and mask.shape == truth.shape
    iou = np.logical_and(mask, truth).sum() / np.logical_or(mask, truth).sum()
    assert iou >= 0.8


def test_grabcut_is_deterministic_for_a_seed():
    img, box, _ = _scene(1)
    assert np.array_equal(grabcut_mask(img, box, seed=3), grabcut_mask(img, box, seed=3))


def test_grabcut_returns_none_when_mask_is_under_the_box_fraction():
    img, box, truth = _scene()
    # The object fills ~70% of its tight box; demanding 99% of the box rejects every try.
    assert grabcut_mask(img, box, min_box_fraction=0.99, retries=1) is None
    # A box around plain background: GrabCut finds (almost) nothing that differs from the outside.
    flat = np.full((64, 64, 3), 120, np.uint8)
    assert grabcut_mask(flat, (16, 16, 48, 48), retries=1) is None


def _stripes():
    """6x8 image whose pixel (y, x) holds 10*y + x in every channel: each pixel is identifiable."""
    yy, xx = np.mgrid[:6, :8]
    return np.repeat((10 * yy + xx)[..., None], 3, axis=2).astype(np.uint8)


def test_only_bg_t_tiles_the_largest_strip_from_the_canvas_origin():
    img = _stripes()
    # Box x 2..5, y 1..3 (exclusive ends): strips left 6x2=12, right 6x3=18, top 1x8=8, bottom 3x8=24 px.
    box = (2, 1, 5, 3)
    out = only_bg_t(img, box)
    # Bottom strip = rows 3..5; tiled from (0, 0): canvas row y takes strip row y % 3, i.e. image row 3 + y % 3.
    expected = img.copy()
    for y in range(1, 3):
        for x in range(2, 5):
            expected[y, x] = img[3 + y % 3, x]
    assert np.array_equal(out, expected)
    assert out[1, 2, 0] == 42 and out[2, 4, 0] == 54  # rows 1, 2 of the canvas come from image rows 4, 5


def test_only_bg_t_left_strip_wraps_columns():
    img = _stripes()
    box = (2, 0, 8, 6)  # only the left strip (columns 0, 1) exists
    out = only_bg_t(img, box)
    assert np.array_equal(out[:, :2], img[:, :2])
    for x in range(2, 8):
        assert np.array_equal(out[:, x], img[:, x % 2])


def test_only_bg_t_box_covering_everything_is_the_mean_colour():
    img = _stripes()
    out = only_bg_t(img, (0, 0, 8, 6))
    assert (out == np.round(img[..., 0].mean())).all()


def test_only_bg_b_blackens_only_the_box():
    img = _stripes() + 1
    out = only_bg_b(img, (2, 1, 5, 3))
    assert (out[1:3, 2:5] == 0).all()
    out[1:3, 2:5] = img[1:3, 2:5]
    assert np.array_equal(out, img)


def test_resize_crop_maps_the_box_and_reports_the_surviving_fraction():
    img = np.zeros((200, 400, 3), np.uint8)  # shorter side 200 -> 256: scale 1.28, 512x256, crop offset x 144
    box = (0, 50, 200, 150)  # -> x 0..256, y 64..192 in the resized image; x 144..256 survives the crop
    out, new_box, frac = resize_crop(img, box)
    assert out.shape == (224, 224, 3)
    assert new_box == (0, 48, 112, 176)
    assert frac == pytest.approx(112 / 256)


def test_resize_crop_without_resize_or_crop_is_identity():
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    out, box, frac = resize_crop(img, (1, 1, 3, 4), resize=0, crop=0)
    assert np.array_equal(out, img) and box == (1, 1, 3, 4) and frac == 1.0
    assert resize_crop(img, None, resize=0, crop=0)[1:] == (None, 1.0)


def test_resize_crop_box_outside_the_crop_is_none():
    img = np.zeros((100, 300, 3), np.uint8)
    _, box, frac = resize_crop(img, (0, 0, 40, 100), resize=100, crop=100)
    assert box is None and frac == 0.0


def test_fractions():
    assert box_fraction((0, 0, 4, 3), (6, 8, 3)) == pytest.approx(12 / 48)
    assert mask_fraction(np.array([[0, 1], [1, 1]])) == 0.75


def test_empty_box_is_an_advbg_error():
    with pytest.raises(AdvbgError, match="empty"):
        only_bg_t(_stripes(), (3, 3, 3, 5))


def test_resize_crop_crops_a_mask_like_its_image():
    img = np.zeros((100, 300, 3), np.uint8)
    mask = np.zeros((100, 300), np.uint8)
    mask[:, 150:] = 1
    img[:, 150:] = 255
    crop_img, _, _ = resize_crop(img, None, resize=0, crop=100)
    crop_mask, _, _ = resize_crop(mask, None, resize=0, crop=100)
    assert crop_mask.shape == (100, 100) and np.array_equal(crop_mask, crop_img[..., 0] // 255)
