"""Hazard: foreground masks that are not clean 0/1. Binarised with a warning, or refused with a reason."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from advbg.data.imageio import ImageWarning, check_mask
from advbg.errors import AdvbgError

SHAPE = (6, 8, 3)
BASE = np.zeros(SHAPE[:2], np.uint8)
BASE[1:4, 2:6] = 1


def _quiet(mask, shape=SHAPE):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageWarning)
        return check_mask(mask, shape)


def test_clean_masks_pass_unchanged_and_bool_is_silent():
    for m in (BASE, BASE.astype(bool), BASE.astype(np.float32), BASE[..., None]):
        out = _quiet(m)
        assert out.dtype == np.uint8 and out.shape == SHAPE[:2] and np.array_equal(out, BASE)


@pytest.mark.parametrize("mask", [BASE * 255, BASE * 0.7, BASE.astype(np.int16) * 3 - (1 - BASE.astype(np.int16))],
                         ids=["0-255", "soft-float", "negative-background"])
def test_other_values_are_binarised_above_zero_with_warning(mask):
    with pytest.warns(ImageWarning, match="binarised as > 0"):
        out = check_mask(mask, SHAPE)
    assert np.array_equal(out, BASE)


def test_empty_mask_is_refused():
    with pytest.raises(AdvbgError, match="is empty .no foreground pixel"):
        check_mask(np.zeros(SHAPE[:2]), SHAPE)


def test_whole_image_mask_is_refused():
    with pytest.raises(AdvbgError, match="covers the whole image"):
        check_mask(np.ones(SHAPE[:2], np.uint8), SHAPE)


@pytest.mark.parametrize("shape", [(6, 9), (8, 6), (6, 8, 3), (48,)])
def test_shape_mismatch_is_refused(shape):
    with pytest.raises(AdvbgError, match=r"mask has shape .* its image is 6x8"):
        check_mask(np.ones(shape, np.uint8), SHAPE)


def test_nan_and_non_numeric_masks_are_refused():
    m = BASE.astype(np.float32)
    m[0, 0] = np.nan
    with pytest.raises(AdvbgError, match="NaN or inf"):
        check_mask(m, SHAPE)
    with pytest.raises(AdvbgError, match="dtype <U1"):
        check_mask(np.full(SHAPE[:2], "a"), SHAPE)


def test_name_appears_in_messages():
    with pytest.raises(AdvbgError, match="^mask of photo7 is empty"):
        check_mask(np.zeros(SHAPE[:2]), SHAPE, name="mask of photo7")


def test_store_writer_applies_the_same_binarisation(tmp_path):
    """The store's own rule (values > 0 are foreground) agrees with check_mask, so both paths store the same bits."""
    from advbg.data.store import Store
    from advbg.data.writer import write_store

    soft = BASE * 0.4
    write_store(tmp_path / "s.h5", class_names=["a"], fg_images=np.zeros((1,) + SHAPE, np.uint8),
                fg_masks=soft[None], fg_labels=[0], bg_images=np.zeros((0,) + SHAPE, np.uint8), bg_labels=[])
    with Store(tmp_path / "s.h5") as s:
        with pytest.warns(ImageWarning):
            assert np.array_equal(s.foregrounds.read_masks([0])[0], check_mask(soft, SHAPE))
