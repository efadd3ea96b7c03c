"""The numpy composite (advbg.data.composite) equals the README's formula, the test reference and the torch
compositor, byte for byte, on seeded random inputs."""
import numpy as np
import pytest
import torch
from reference import composite as reference_composite

from advbg.data.composite import composite
from advbg.search.compositor import composite_pairs


def _inputs(seed: int, n: int = 4, h: int = 9, w: int = 7):
    rng = np.random.default_rng(seed)
    fg = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    mask = rng.integers(0, 2, (n, h, w), dtype=np.uint8)
    return fg, mask, bg


def _formula(fg, mask, bg) -> np.ndarray:
    """x = mask * fg + (1 - mask) * bg in integer arithmetic (exact for a 0/1 mask)."""
    m = mask[..., None].astype(np.int64)
    return (m * fg.astype(np.int64) + (1 - m) * bg.astype(np.int64)).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_equals_the_formula_and_the_reference(seed):
    fg, mask, bg = _inputs(seed)
    out = composite(fg, mask, bg)
    assert out.dtype == np.uint8 and out.shape == fg.shape
    assert np.array_equal(out, _formula(fg, mask, bg))
    for i in range(len(fg)):                                     # the reference is one image, float in [0, 1]
        ref = reference_composite(fg[i], mask[i], bg[i])[0].permute(1, 2, 0).numpy()
        assert np.array_equal(out[i].astype(np.float32) / np.float32(255), ref)


@pytest.mark.parametrize("seed", [3, 4])
def test_equals_the_torch_compositor_before_its_scaling(seed):
    fg, mask, bg = _inputs(seed, n=3)
    idx = torch.arange(len(fg))
    x = composite_pairs(torch.from_numpy(fg), torch.from_numpy(mask), torch.from_numpy(bg), idx, idx)
    assert torch.equal(x, torch.from_numpy(composite(fg, mask, bg)).permute(0, 3, 1, 2).float() / 255.0)


@pytest.mark.parametrize("seed", [5, 6])
def test_one_image_a_flat_fill_and_a_colour_broadcast(seed):
    fg, mask, bg = _inputs(seed, n=2)
    assert np.array_equal(composite(fg[0], mask[0], bg[0]), _formula(fg[0], mask[0], bg[0]))
    for value in (0, 255):
        assert np.array_equal(composite(fg, mask, value), _formula(fg, mask, np.full_like(bg, value)))
    colour = np.array([10, 200, 30], np.uint8)
    assert np.array_equal(composite(colour, mask[0], bg[0]), _formula(np.broadcast_to(colour, fg[0].shape),
                                                                       mask[0], bg[0]))
    colours = np.random.default_rng(seed).integers(0, 256, (2, 1, 1, 3), dtype=np.uint8)
    assert np.array_equal(composite(fg, mask, colours), _formula(fg, mask, np.broadcast_to(colours, bg.shape)))


def test_a_bool_mask_gives_the_same_bytes_and_inputs_are_not_changed():
    fg, mask, bg = _inputs(7)
    copies = [a.copy() for a in (fg, mask, bg)]
    assert np.array_equal(composite(fg, mask.astype(bool), bg), composite(fg, mask, bg))
    assert all(np.array_equal(a, c) for a, c in zip((fg, mask, bg), copies))
