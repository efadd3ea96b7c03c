"""advbg.search.refine: background-only refinement under a budget, checked against the README's definitions.

Oracles: tests/reference.py's composite and margin (plain numpy, sharing only the model's forward), central finite
differences for the gradient, one-foreground-at-a-time runs for batching, and a hand-built model whose margin is an
explicit function of the background change (so the EPS at which it flips is known)."""
from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import torch
from conftest import make_tiny_classifier
from torch import nn

from advbg.data.labels import IN9_CLASSES
from advbg.errors import AdvbgError
from advbg.models.classifier import Classifier, ClassifierConfig
from advbg.models.label_map import identity_map
from advbg.search.refine import (
    PHOTOMETRIC_RANGES,
    LinfBudget,
    MinEpsBudget,
    PhotometricBudget,
    apply_photometric,
    masked_margin,
    median_interval,
    parse_budgets,
    photometric_params,
    refine,
)

SIZE = 32
BUDGETS = [LinfBudget(2 / 255, steps=8), LinfBudget(2.5 / 255, steps=8), PhotometricBudget(steps=8),
           MinEpsBudget((1 / 255, 2 / 255, 4 / 255, 8 / 255), steps=6)]


def _inputs(n: int = 6, seed: int = 0, soft: bool = False):
    rng = np.random.default_rng(seed)
    fg = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((n, SIZE, SIZE), np.float64 if soft else np.uint8)
    for i in range(n):
        y, x = rng.integers(2, SIZE // 2, 2)
        mask[i, y:y + 12, x:x + 12] = 1
        if soft:   # a feathered edge of soft values around the full-mask core
            mask[i, y - 2:y + 14, x - 2:x + 14] = np.maximum(mask[i, y - 2:y + 14, x - 2:x + 14],
                                                             rng.uniform(0.05, 0.95, (16, 16)))
    with torch.no_grad():   # the true class is the start's prediction: every start is correct, refining has work
        true = make_tiny_classifier()(_ref_composite(fg, mask, bg)).argmax(1).numpy()
    return fg, mask, bg, true


def _ref_composite(fg, mask, bg) -> torch.Tensor:
    """(N, 3, H, W) float32: mask * fg + (1 - mask) * bg (reference.composite for 0/1 masks; the formula for soft)."""
    if set(np.unique(mask)) <= {0, 1}:
        return torch.cat([ref.composite(f, m, b) for f, m, b in zip(fg, mask, bg)])
    m = mask[..., None]
    x = (m * fg + (1 - m) * bg.astype(np.float64)) / 255.0
    return torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2).contiguous()


def _ref_margins(clf, fg, mask, bg, true) -> np.ndarray:
    table = ref.table_for("identity", 9)
    with torch.no_grad():
        logits = clf(_ref_composite(fg, mask, bg)).numpy()
    return np.array([ref.margin(row, int(t), table) for row, t in zip(logits, true)], np.float64)


@pytest.fixture(scope="module")
def clf():
    return make_tiny_classifier()


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("budget", BUDGETS, ids=repr)
def test_foreground_pixels_bit_identical_and_margins_true(clf, budget, soft):
    fg, mask, bg, true = _inputs(soft=soft)
    r = refine(clf, fg, mask, bg, true, budget)
    full = mask == 1
    assert (r.background[full] == bg[full]).all(), "a background pixel under a full mask changed"
    before, after = _ref_composite(fg, mask, bg), _ref_composite(fg, mask, r.background)
    where = torch.from_numpy(np.broadcast_to(full[:, None], before.shape).copy())
    assert torch.equal(after[where], before[where])
    assert torch.equal(after[where], torch.from_numpy(fg).permute(0, 3, 1, 2)[where].float() / 255)
    # the reported margins are those of the uint8 composites actually returned, and the start is a candidate
    np.testing.assert_allclose(r.margin_before, _ref_margins(clf, fg, mask, bg, true), atol=1e-4)
    np.testing.assert_allclose(r.margin_after, _ref_margins(clf, fg, mask, r.background, true), atol=1e-4)
    assert (r.margin_after <= r.margin_before).all()
    assert (r.fooled_after == (r.pred_after != true)).all()
    assert (r.background != bg).any(), "nothing was refined: the test would pass with a no-op"


@pytest.mark.parametrize("eps", [1 / 255, 2.5 / 255, 4 / 255, 8 / 255])
def test_linf_budget_holds_for_every_pixel_after_rounding(clf, eps):
    fg, mask, bg, true = _inputs(n=8, seed=3)
    r = refine(clf, fg, mask, bg, true, LinfBudget(eps, steps=10))
    change = np.abs(r.background.astype(np.int64) - bg.astype(np.int64))
    assert r.background.dtype == np.uint8
    assert change.max() <= eps * 255 + 1e-9
    assert change.max() == int(np.floor(eps * 255 + 1e-6)) or r.fooled_before.all()


def test_photometric_parameters_stay_in_their_ranges_and_reproduce_the_background(clf):
    extreme = photometric_params(torch.tensor([[-50.0] * 8, [50.0] * 8, [0.3] * 8]))
    lo = torch.tensor([c - h for c, h in PHOTOMETRIC_RANGES.values()])
    hi = torch.tensor([c + h for c, h in PHOTOMETRIC_RANGES.values()])
    assert ((extreme >= lo) & (extreme <= hi)).all()
    fg, mask, bg, true = _inputs(n=8, seed=5)
    budget = PhotometricBudget(steps=10)
    r = refine(clf, fg, mask, bg, true, budget)
    assert ((r.params >= lo.numpy() - 1e-12) & (r.params <= hi.numpy() + 1e-12)).all()
    changed = np.flatnonzero((r.background != bg).any(axis=(1, 2, 3)))
    assert changed.size
    # the stored parameters are the ones that made the stored background
    x = torch.from_numpy(bg[changed]).permute(0, 3, 1, 2).float()
    again = apply_photometric(x / 255, torch.from_numpy(r.params[changed]).float(), budget.blur_sigma) * 255
    free = torch.from_numpy(mask[changed] < 1)[:, None].expand_as(x)
    again = torch.where(free, again, x).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(again.astype(int) - r.background[changed].astype(int)).max() <= 1


def test_gradient_of_the_masked_objective_equals_finite_differences():
    clf = make_tiny_classifier().double()
    fg, mask, bg, true = _inputs(n=2, seed=7, soft=True)
    m = torch.from_numpy(mask)[:, None]
    fg_term = m * torch.from_numpy(fg).permute(0, 3, 1, 2).double() / 255
    keep = 1 - m
    x = (torch.from_numpy(bg).permute(0, 3, 1, 2).double() / 255).requires_grad_(True)
    t = torch.from_numpy(true)
    (grad,) = torch.autograd.grad(masked_margin(clf, fg_term, keep, x, t).sum(), x)
    rng = np.random.default_rng(0)
    h = 1e-3   # the label map reduces in float32 (LabelMap.margin), so a smaller step drowns in its rounding
    nonzero = 0
    with torch.no_grad():
        for _ in range(40):
            idx = (int(rng.integers(2)), int(rng.integers(3)), int(rng.integers(SIZE)), int(rng.integers(SIZE)))
            up, down = x.detach().clone(), x.detach().clone()
            up[idx] += h
            down[idx] -= h
            fd = (masked_margin(clf, fg_term, keep, up, t).sum() - masked_margin(clf, fg_term, keep, down, t).sum())
            assert float(grad[idx]) == pytest.approx(float(fd) / (2 * h), rel=2e-3, abs=2e-3)
            nonzero += abs(float(fd)) > 1e-2 * h
    assert nonzero >= 20, "too few sampled pixels move the margin for the check to mean anything"
    assert (grad * (m == 1)).abs().max() == 0, "foreground pixels must get no gradient"


@pytest.mark.parametrize("budget", BUDGETS, ids=repr)
def test_batched_equals_one_foreground_at_a_time(clf, budget):
    fg, mask, bg, true = _inputs(n=6, seed=11)
    keys = np.arange(100, 106)
    whole = refine(clf, fg, mask, bg, true, budget, keys=keys, batch_size=6)
    single = [refine(clf, fg[i:i + 1], mask[i:i + 1], bg[i:i + 1], true[i:i + 1], budget, keys=keys[i:i + 1])
              for i in range(6)]
    assert np.array_equal(whole.background, np.concatenate([s.background for s in single]))
    np.testing.assert_allclose(whole.margin_after, [s.margin_after[0] for s in single], atol=1e-4)
    assert np.array_equal(whole.steps, [s.steps[0] for s in single])
    np.testing.assert_array_equal(whole.eps, [s.eps[0] for s in single])


@pytest.mark.parametrize("budget", [BUDGETS[0], BUDGETS[3]], ids=repr)
def test_seeded_runs_repeat_exactly(clf, budget):
    fg, mask, bg, true = _inputs(n=5, seed=13)
    a, b = (refine(clf, fg, mask, bg, true, budget, seed=4) for _ in range(2))
    for k in ("background", "margin_after", "steps", "eps", "ssim"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    other = refine(clf, fg, mask, bg, true, LinfBudget(8 / 255, steps=1), seed=5)
    first = refine(clf, fg, mask, bg, true, LinfBudget(8 / 255, steps=1), seed=4)
    assert not np.array_equal(other.background, first.background), "the seed must change the random start"


class _MeanRedNet(nn.Module):
    """Logit 0 = theta - gain * mean(red channel of the input); the others 0. With the true class 0, the margin is
    theta - gain * mean(red), a known function of how far the background's red rises."""

    def __init__(self, theta: float, gain: float = 100.0):
        super().__init__()
        self.theta, self.gain = theta, gain

    def forward(self, x):
        # x arrives normalised with mean 0, std 1 (the config below), i.e. as the [0, 1] composite itself
        out = torch.zeros(x.shape[0], 9, dtype=x.dtype)
        out[:, 0] = self.theta - self.gain * x[:, 0].mean((1, 2))
        return out


def _hand_built(theta: float) -> Classifier:
    lm = identity_map(IN9_CLASSES)
    cfg = ClassifierConfig(name="meanred", architecture="meanred", weight_tag="hand", source="test",
                           weights_file=None, weights_sha256=None, input_size=(3, SIZE, SIZE), mean=(0.0,) * 3,
                           std=(1.0,) * 3, interpolation="bilinear", num_outputs=9, label_map="identity",
                           class_names=lm.class_names)
    return Classifier(_MeanRedNet(theta), cfg, lm)


@pytest.mark.parametrize("flip_levels, expected", [(5, 6), (2.5, 3), (0.5, 1), (11, 12), (13, 16), (20, None)])
def test_min_eps_bisection_returns_the_grid_value_where_a_hand_built_model_flips(flip_levels, expected):
    n = 3
    fg = np.full((n, SIZE, SIZE, 3), 128, np.uint8)
    bg = np.full((n, SIZE, SIZE, 3), 128, np.uint8)
    mask = np.zeros((n, SIZE, SIZE), np.uint8)
    mask[:, 8:16, 8:16] = 1                       # 1/16 of the pixels are foreground
    free_share = 1 - mask[0].mean()
    # margin = theta - gain * (128 + free_share * d) / 255 when the free red pixels rise by d levels: zero at d = flip
    theta = 100.0 * (128 + free_share * flip_levels) / 255
    grid = tuple(k / 255 for k in (1, 2, 3, 4, 6, 8, 12, 16))
    r = refine(_hand_built(theta), fg, mask, bg, np.zeros(n, np.int64), MinEpsBudget(grid, steps=40))
    want = np.inf if expected is None else expected / 255
    np.testing.assert_array_equal(r.eps, np.full(n, want))
    assert (r.fooled_after == (expected is not None)).all()


def test_min_eps_is_zero_when_the_start_already_fools():
    n = 2
    img = np.full((n, SIZE, SIZE, 3), 128, np.uint8)
    mask = np.zeros((n, SIZE, SIZE), np.uint8)
    r = refine(_hand_built(theta=0.0), img, mask, img, np.zeros(n, np.int64), MinEpsBudget())
    assert (r.eps == 0).all() and (r.steps == 0).all() and np.array_equal(r.background, img)


def test_budgets_parse_and_read_well():
    got = parse_budgets("linf:2/255,4/255;photometric min-eps:1/255,3/255")
    assert [b.name for b in got] == ["linf:2/255", "linf:4/255", "photometric", "min-eps"]
    assert got[0].eps == 2 / 255 and got[3].grid == (1 / 255, 3 / 255)
    assert "linf:2/255" in repr(got[0]) and "brightness -0.1..0.1" in repr(got[2])
    assert parse_budgets("linf:0.01")[0].eps == 0.01


@pytest.mark.parametrize("text, pattern", [
    ("lp:2/255", "unknown budget"), ("linf:0", r"EPS must be in \(0, 1\]"), ("linf:-1/255", "EPS must be"),
    ("linf:2", "EPS must be"), ("linf:abc", "cannot read EPS"), ("linf", "needs EPS"), ("", "no budget"),
    ("min-eps:4/255,2/255", "increase"), ("photometric:3", "unknown budget"), ("linf:nan", "cannot read EPS"),
])
def test_bad_budgets_are_refused_with_the_reason(text, pattern):
    with pytest.raises(AdvbgError, match=pattern):
        parse_budgets(text)


def test_median_interval_is_the_order_statistic_interval():
    med, lo, hi = median_interval(np.arange(20.0)[::-1])
    # n = 20: P(Binom(20, 1/2) <= 5) = 0.0207 (x2 <= 0.05), P(<= 6) = 0.0577: ranks 6 and 15 (1-based)
    assert (med, lo, hi) == (9.5, 5.0, 14.0)
    med, lo, hi = median_interval(np.r_[np.ones(6), np.full(5, np.inf)])
    assert med == 1.0 and hi == np.inf


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: not checked: refine on CUDA keeps foreground "
                    "pixels bit-identical and the budget, with margins equal to the CPU reference's")
@pytest.mark.parametrize("budget", BUDGETS, ids=repr)
def test_refinement_on_cuda_keeps_every_guarantee(budget):
    """The GPU path: same guarantees, margins of the returned backgrounds as the CPU reference computes them."""
    cpu = make_tiny_classifier()
    fg, mask, bg, true = _inputs(n=6, seed=17)
    r = refine(make_tiny_classifier().cuda(), fg, mask, bg, true, budget)
    assert (r.background[mask == 1] == bg[mask == 1]).all()
    assert np.abs(r.background.astype(int) - bg.astype(int)).max() <= (
        int(np.floor(budget.eps * 255 + 1e-6)) if isinstance(budget, LinfBudget) else 255)
    np.testing.assert_allclose(r.margin_after, _ref_margins(cpu, fg, mask, r.background, true), atol=1e-3)
    assert (r.margin_after <= r.margin_before).all()


class _ChangeHurtsNet(nn.Module):
    """Logit 0 = 1 + gain * mean |x - x0|, the others 0: every change of the given composites x0 raises the
    true-class margin, so the only right answer of a refinement is the start itself."""

    def __init__(self, x0: torch.Tensor, gain: float = 100.0):
        super().__init__()
        self.register_buffer("x0", x0)
        self.gain = gain

    def forward(self, x):
        out = torch.zeros(x.shape[0], 9, dtype=x.dtype)
        out[:, 0] = 1 + self.gain * (x - self.x0).abs().mean((1, 2, 3))
        return out


@pytest.mark.parametrize("budget", [LinfBudget(8 / 255, steps=1), LinfBudget(2 / 255, steps=3),
                                    PhotometricBudget(steps=2)], ids=repr)
def test_the_start_is_a_candidate_when_every_change_hurts(budget):
    fg, mask, bg, _ = _inputs(n=4, seed=19)
    clf = _hand_built(0.0)
    clf.model = _ChangeHurtsNet(_ref_composite(fg, mask, bg))
    r = refine(clf, fg, mask, bg, np.zeros(4, np.int64), budget, batch_size=4)
    assert np.array_equal(r.background, bg)
    np.testing.assert_array_equal(r.margin_after, r.margin_before)
    assert (r.ssim == 1).all() and not r.fooled_after.any()
