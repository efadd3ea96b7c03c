"""The batched compositor equals the plain per-pair formula, bit for bit."""
import numpy as np
import pytest
import torch

from advbg.search.compositor import CompositeBuffers, composite_pairs


def grid_pairs(F: int, B: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground-major (fi, bj) index pairs of the F x B grid."""
    return torch.arange(F).repeat_interleave(B), torch.arange(B).repeat(F)


def composite_grid(fg, mask, bg, dtype=torch.float32, buffers=None):
    """All F x B composites, foreground-major, through the one composite function."""
    fi, bj = grid_pairs(fg.shape[0], bg.shape[0])
    return composite_pairs(fg, mask, bg, fi, bj, dtype, buffers)


def naive(fg, mask, bg):
    """x = mask * fg + (1 - mask) * bg for one pair, in [0, 1], CHW."""
    m = mask[..., None].astype(np.float32)
    x = m * fg.astype(np.float32) + (1 - m) * bg.astype(np.float32)
    return torch.from_numpy(x).permute(2, 0, 1) / 255.0


@pytest.mark.parametrize("F,B,H,W", [(3, 5, 7, 9), (1, 1, 4, 4), (5, 2, 16, 3)])
def test_grid_equals_per_pair_loop(F, B, H, W):
    rng = np.random.default_rng(F * 100 + B)
    fg = rng.integers(0, 256, (F, H, W, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (B, H, W, 3), dtype=np.uint8)
    mask = rng.integers(0, 2, (F, H, W), dtype=np.uint8)
    out = composite_grid(torch.from_numpy(fg), torch.from_numpy(mask), torch.from_numpy(bg))
    assert out.shape == (F * B, 3, H, W)
    assert out.is_contiguous(memory_format=torch.channels_last)
    for i in range(F):
        for j in range(B):
            assert torch.equal(out[i * B + j], naive(fg[i], mask[i], bg[j]))


def test_pairs_equal_loop_with_odd_blocks_and_partial_last_block():
    rng = np.random.default_rng(1)
    F, B, H, W = 7, 13, 6, 5
    fg = torch.from_numpy(rng.integers(0, 256, (F, H, W, 3), dtype=np.uint8))
    bg = torch.from_numpy(rng.integers(0, 256, (B, H, W, 3), dtype=np.uint8))
    mask = torch.from_numpy(rng.integers(0, 2, (F, H, W), dtype=np.uint8))
    fi, bj = grid_pairs(F, B)
    block = 10  # 91 pairs: nine full blocks and a partial last one
    parts = [composite_pairs(fg, mask, bg, fi[s:s + block], bj[s:s + block]) for s in range(0, len(fi), block)]
    out = torch.cat(parts)
    for k in range(len(fi)):
        i, j = int(fi[k]), int(bj[k])
        assert torch.equal(out[k], naive(fg[i].numpy(), mask[i].numpy(), bg[j].numpy()))
    assert torch.equal(out, composite_grid(fg, mask, bg))


def test_random_pair_order_and_repeats():
    rng = np.random.default_rng(2)
    fg = torch.from_numpy(rng.integers(0, 256, (4, 3, 3, 3), dtype=np.uint8))
    bg = torch.from_numpy(rng.integers(0, 256, (6, 3, 3, 3), dtype=np.uint8))
    mask = torch.from_numpy(rng.integers(0, 2, (4, 3, 3), dtype=np.uint8))
    fi = torch.from_numpy(rng.integers(0, 4, 25))
    bj = torch.from_numpy(rng.integers(0, 6, 25))
    out = composite_pairs(fg, mask, bg, fi, bj)
    for k in range(25):
        assert torch.equal(out[k], naive(fg[fi[k]].numpy(), mask[fi[k]].numpy(), bg[bj[k]].numpy()))


def test_bf16_output_is_the_rounded_fp32_composite():
    rng = np.random.default_rng(3)
    fg = torch.from_numpy(rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8))
    bg = torch.from_numpy(rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8))
    mask = torch.from_numpy(rng.integers(0, 2, (2, 4, 4), dtype=np.uint8))
    lo = composite_grid(fg, mask, bg, torch.bfloat16)
    hi = composite_grid(fg, mask, bg)
    assert lo.dtype == torch.bfloat16
    assert torch.allclose(lo.float(), hi, atol=1 / 255)


@pytest.mark.parametrize("channels_last", [True, False])
def test_reused_buffers_give_the_fresh_composites_batch_after_batch(channels_last):
    rng = np.random.default_rng(4)
    fg = torch.from_numpy(rng.integers(0, 256, (5, 6, 4, 3), dtype=np.uint8))
    bg = torch.from_numpy(rng.integers(0, 256, (7, 6, 4, 3), dtype=np.uint8))
    mask = torch.from_numpy(rng.integers(0, 2, (5, 6, 4), dtype=np.uint8))
    buffers = CompositeBuffers(channels_last)
    for n in (9, 3, 12):                        # shorter and longer batches than the buffers hold
        fi, bj = torch.from_numpy(rng.integers(0, 5, n)), torch.from_numpy(rng.integers(0, 7, n))
        got = composite_pairs(fg, mask, bg, fi, bj, buffers=buffers)
        for k in range(n):
            assert torch.equal(got[k], naive(fg[fi[k]].numpy(), mask[fi[k]].numpy(), bg[bj[k]].numpy()))
