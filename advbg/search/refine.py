"""Refinement: push a foreground's start background (its worst real one) further, changing background pixels only,
within a stated budget, to lower the true-class margin of the composite.

Budgets (frozen, with a readable repr stored beside every result):

- ``LinfBudget`` (``linf:EPS``): masked PGD on the background. Iterates live on the uint8 lattice (every step is a
  whole number of grey levels and is projected onto ``|bg' - bg| <= floor(EPS * 255)`` levels and [0, 255]), so the
  budget holds for the uint8 background actually returned, and the margin of each step's forward is the margin of
  that uint8 composite. Seeded random start, signed-gradient steps; a foreground stops moving once fooled.
- ``PhotometricBudget`` (``photometric``): global changes of the background with kornia (translation, scale, blur
  strength, brightness, contrast, saturation, hue), each parameter ``centre + half_range * tanh(theta)`` so it can
  never leave its documented range; theta is optimised by Adam from the identity.
- ``MinEpsBudget`` (``min-eps``): per foreground the smallest EPS of a grid at which the L-infinity attack fools,
  by bisection over the grid (assumes fooling is monotone in EPS), every foreground bisecting in the same batch.

In every case the start background is a candidate, so ``margin_after <= margin_before``. The composite is
``mask * fg + (1 - mask) * bg``; the foreground term is computed once and never touched, and background pixels
under a full mask (mask == 1) are never changed.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from advbg.errors import AdvbgError
from advbg.search.criteria import Criterion

DEFAULT_STEPS = 20
MIN_EPS_GRID = tuple(k / 255 for k in (1, 2, 3, 4, 6, 8, 12, 16))


def _eps_text(eps: float) -> str:
    """An EPS as people write it: ``4/255`` when it is a whole number of grey levels, else a decimal."""
    levels = eps * 255
    return f"{round(levels)}/255" if abs(levels - round(levels)) < 1e-6 else f"{eps:.6g}"


def _levels(eps: float) -> int:
    """Whole grey levels a pixel may move within ``eps`` (a float EPS of k/255 counts as k levels)."""
    return math.floor(eps * 255 + 1e-6)


@dataclass(frozen=True)
class LinfBudget:
    """L-infinity change of each background pixel within ``eps`` (in [0, 1] pixel units), ``steps`` PGD steps."""

    eps: float
    steps: int = DEFAULT_STEPS

    def __post_init__(self):
        _check_eps(self.eps)
        if self.steps < 1:
            raise AdvbgError(f"steps must be >= 1 (got {self.steps})")

    @property
    def name(self) -> str:
        return f"linf:{_eps_text(self.eps)}"

    def __repr__(self) -> str:
        return f"LinfBudget({self.name}, {self.steps} steps, seeded random start)"


# Parameter -> (centre, half range): the value is centre + half_range * tanh(theta), so always inside the range.
# Theta starts at the identity (blur: near it, theta = -2, a 1.8% blend, so that its gradient is not zero).
PHOTOMETRIC_RANGES: dict[str, tuple[float, float]] = {
    "translate_x": (0.0, 0.05),     # shift, fraction of the width (reflected border)
    "translate_y": (0.0, 0.05),     # shift, fraction of the height
    "scale": (1.0, 0.05),           # zoom about the centre: 0.95 .. 1.05
    "blur": (0.5, 0.5),             # blend weight 0 .. 1 toward a Gaussian blur of sigma PhotometricBudget.blur_sigma
    "brightness": (0.0, 0.1),       # added to every pixel: -0.1 .. +0.1
    "contrast": (1.0, 0.2),         # factor 0.8 .. 1.2
    "saturation": (1.0, 0.3),       # factor 0.7 .. 1.3
    "hue": (0.0, 0.1),              # hue rotation in radians: -0.1 .. 0.1 (about +-6 degrees)
}


@dataclass(frozen=True)
class PhotometricBudget:
    """Global, differentiable changes of the background, each within ``PHOTOMETRIC_RANGES`` (documented there)."""

    steps: int = DEFAULT_STEPS
    lr: float = 0.3                 # Adam step on theta (tanh-space), large enough to reach a range's end in ~10 steps
    blur_sigma: float = 1.5

    def __post_init__(self):
        if self.steps < 1:
            raise AdvbgError(f"steps must be >= 1 (got {self.steps})")

    @property
    def name(self) -> str:
        return "photometric"

    def __repr__(self) -> str:
        ranges = ", ".join(f"{k} {c - h:g}..{c + h:g}" for k, (c, h) in PHOTOMETRIC_RANGES.items())
        return f"PhotometricBudget({ranges}; blur sigma {self.blur_sigma:g}; {self.steps} Adam steps, lr {self.lr:g})"


@dataclass(frozen=True)
class MinEpsBudget:
    """Smallest EPS of ``grid`` at which the L-infinity attack (``steps`` steps) fools, by bisection."""

    grid: tuple[float, ...] = MIN_EPS_GRID
    steps: int = DEFAULT_STEPS

    def __post_init__(self):
        if not self.grid:
            raise AdvbgError("min-eps needs a non-empty EPS grid")
        for e in self.grid:
            _check_eps(e)
        if list(self.grid) != sorted(set(self.grid)):
            raise AdvbgError(f"the min-eps grid must increase strictly (got {', '.join(map(_eps_text, self.grid))})")
        if self.steps < 1:
            raise AdvbgError(f"steps must be >= 1 (got {self.steps})")

    @property
    def name(self) -> str:
        return "min-eps"

    def __repr__(self) -> str:
        return f"MinEpsBudget(grid {','.join(map(_eps_text, self.grid))}, {self.steps} steps per EPS, bisection)"


Budget = LinfBudget | PhotometricBudget | MinEpsBudget


def require_extra(module: str):
    """``module`` imported on first use (the optional extra ``refine``), or a one-line AdvbgError saying so."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise AdvbgError(f"refine needs {module.split('.')[0]}: pip install 'advbg[refine]'") from None


def _check_eps(eps: float) -> None:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and 0 < eps <= 1):
        raise AdvbgError(f"EPS must be in (0, 1] in [0,1] pixel units, e.g. 4/255 (got {eps!r})")


def _parse_eps(text: str) -> float:
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise AdvbgError(f"cannot read EPS {text!r}; write e.g. 4/255 or 0.0157") from None
    _check_eps(value)
    return value


def parse_budgets(text: str, steps: int = DEFAULT_STEPS) -> list[Budget]:
    """``linf:2/255,4/255``, ``photometric``, ``min-eps`` or ``min-eps:1/255,2/255,...``; several separated by
    ``;`` or spaces (e.g. ``linf:2/255,4/255;photometric``). Raises AdvbgError on anything else."""
    out: list[Budget] = []
    for part in text.replace(";", " ").split():
        kind, _, args = part.partition(":")
        kind = kind.strip().lower()
        if kind == "linf":
            if not args:
                raise AdvbgError("linf needs EPS values, e.g. linf:2/255,4/255")
            out += [LinfBudget(_parse_eps(a), steps) for a in args.split(",")]
        elif kind == "photometric" and not args:
            out.append(PhotometricBudget(steps))
        elif kind == "min-eps":
            grid = tuple(_parse_eps(a) for a in args.split(",")) if args else MIN_EPS_GRID
            out.append(MinEpsBudget(grid, steps))
        else:
            raise AdvbgError(f"unknown budget {part!r}; use linf:EPS[,EPS...], photometric or min-eps[:EPS,...]")
    if not out:
        raise AdvbgError("no budget given; use e.g. linf:2/255,4/255 or photometric or min-eps")
    return out


@dataclass(frozen=True)
class Refined:
    """Refinement of N foregrounds under one budget (index k = the k-th foreground given)."""

    budget: Budget
    background: np.ndarray        # (N, H, W, 3) uint8 refined background (the start where nothing better was found)
    margin_before: np.ndarray     # (N,) float64 margin on the start background
    margin_after: np.ndarray      # (N,) float64 margin on the returned background (<= margin_before)
    pred_before: np.ndarray       # (N,) int64 mapped prediction (-1 = "none")
    pred_after: np.ndarray
    fooled_before: np.ndarray     # (N,) bool under the criterion
    fooled_after: np.ndarray
    steps: np.ndarray             # (N,) int64 gradient evaluations spent on the foreground (0: fooled at the start)
    ssim: np.ndarray              # (N,) float64 SSIM of refined vs start background (1 = unchanged)
    eps: np.ndarray               # (N,) float64 L-inf EPS used (min-eps: the smallest fooling one, inf if none)
    params: np.ndarray | None = None   # photometric: (N, len(PHOTOMETRIC_RANGES)) parameter values
    criterion: str = "any"

    def __len__(self) -> int:
        return len(self.margin_before)


# --------------------------------------------------------------------------------------------- the objective
class _Batch:
    """One block on the device: the constant foreground term, the background weight and what may change."""

    def __init__(self, fg: np.ndarray, mask: np.ndarray, bg: np.ndarray, true, bg_class, device, dtype):
        m = torch.as_tensor(np.asarray(mask), device=device).to(dtype)[:, None]          # (N, 1, H, W)
        f = torch.as_tensor(fg, device=device).permute(0, 3, 1, 2).to(dtype) / 255.0     # (N, 3, H, W)
        self.fg_term = m * f                     # mask * fg: computed once, never touched
        self.keep = 1.0 - m                      # weight of the background in the composite
        self.free = (m < 1).expand(-1, 3, -1, -1)                                        # pixels that may change
        self.bg0 = torch.as_tensor(bg, device=device).permute(0, 3, 1, 2).to(dtype)      # (N, 3, H, W) grey levels
        self.true = torch.as_tensor(np.asarray(true, np.int64), device=device)
        self.bg_class = torch.as_tensor(np.asarray(bg_class, np.int64), device=device)

    def composite(self, bg_levels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) composite in [0, 1] of backgrounds given in grey levels 0..255."""
        return self.fg_term + self.keep * (bg_levels / 255.0)


def masked_margin(classifier, fg_term: torch.Tensor, keep: torch.Tensor, bg: torch.Tensor,
                  true: torch.Tensor) -> torch.Tensor:
    """(N,) true-class margin of ``fg_term + keep * bg`` (bg in [0, 1], NCHW): the objective every budget lowers."""
    return classifier.label_map.margin(classifier(fg_term + keep * bg), true)


def _margin_pred(classifier, batch: _Batch, levels: torch.Tensor):
    logits = classifier(batch.composite(levels))
    return classifier.label_map.margin(logits, batch.true), classifier.label_map.predict(logits)


# --------------------------------------------------------------------------------------------- L-infinity
def _random_start(keys: np.ndarray, seed: int, shape: tuple[int, ...], levels: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) integer offsets uniform in [-k, k] per foreground, drawn from (seed, key): the same foreground
    gets the same start whatever else is in its batch."""
    out = np.empty((len(keys),) + shape, np.float64)
    for i, (key, k) in enumerate(zip(keys, levels)):
        out[i] = np.random.default_rng([int(seed), int(key)]).integers(-int(k), int(k) + 1, shape)
    return out


def _pgd(classifier, batch: _Batch, levels: torch.Tensor, steps: int, keys: np.ndarray, seed: int):
    """Masked PGD on the uint8 lattice with per-foreground budgets ``levels`` (N,) in grey levels.
    Returns (best backgrounds in levels, best margin, best prediction, steps run) per foreground."""
    n = batch.bg0.shape[0]
    lv = levels.view(-1, 1, 1, 1).to(batch.bg0.dtype)
    lo, hi = (batch.bg0 - lv).clamp(0, 255), (batch.bg0 + lv).clamp(0, 255)
    step = torch.clamp(torch.round(2.5 * lv / steps), min=1.0)       # whole grey levels per step
    with torch.no_grad():
        best_margin, best_pred = _margin_pred(classifier, batch, batch.bg0)
    best = batch.bg0.clone()
    noise = torch.as_tensor(_random_start(keys, seed, tuple(batch.bg0.shape[1:]), levels.cpu().numpy()),
                            device=best.device, dtype=best.dtype)
    x = torch.where(batch.free, batch.bg0 + noise, batch.bg0).clamp(lo, hi)
    active = (best_margin >= 0) & (levels > 0)
    used = torch.zeros(n, dtype=torch.int64, device=best.device)
    for _ in range(steps + 1):
        if not bool(active.any()):
            break
        x = x.detach().requires_grad_(True)
        logits = classifier(batch.composite(x))
        margin = classifier.label_map.margin(logits, batch.true)
        (grad,) = torch.autograd.grad(margin.sum(), x)
        with torch.no_grad():
            margin, pred = margin.detach(), classifier.label_map.predict(logits.detach())
            better = active & (margin < best_margin)
            best = torch.where(better.view(-1, 1, 1, 1), x.detach(), best)
            best_margin, best_pred = torch.where(better, margin, best_margin), torch.where(better, pred, best_pred)
            active = active & (best_margin >= 0)                      # a fooled foreground stops moving
            move = active.view(-1, 1, 1, 1) & batch.free
            x = torch.where(move, x.detach() - step * grad.sign(), x.detach()).clamp(lo, hi)
            used += active.long()
    return best.detach(), best_margin, best_pred, used


# --------------------------------------------------------------------------------------------- photometric
IDENTITY_PARAMS = (0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0)   # no change: recorded where the start stays best
_THETA0 = (0.0, 0.0, 0.0, -2.0, 0.0, 0.0, 0.0, 0.0)


def photometric_params(theta: torch.Tensor) -> torch.Tensor:
    """(N, P) unconstrained theta -> (N, P) parameter values, each inside its PHOTOMETRIC_RANGES entry."""
    centre = theta.new_tensor([c for c, _ in PHOTOMETRIC_RANGES.values()])
    half = theta.new_tensor([h for _, h in PHOTOMETRIC_RANGES.values()])
    return centre + half * torch.tanh(theta)


def apply_photometric(bg: torch.Tensor, params: torch.Tensor, blur_sigma: float = 1.5) -> torch.Tensor:
    """(N, 3, H, W) backgrounds in [0, 1] changed by (N, P) parameters (order of PHOTOMETRIC_RANGES), in [0, 1]."""
    kornia = require_extra("kornia")
    enhance, geometry = kornia.enhance, kornia.geometry.transform
    tx, ty, scale, blur, bright, contrast, sat, hue = params.unbind(1)
    n, _, h, w = bg.shape
    centre = bg.new_tensor([(w - 1) / 2, (h - 1) / 2]).expand(n, 2)
    matrix = geometry.get_affine_matrix2d(torch.stack([tx * w, ty * h], 1), centre, torch.stack([scale, scale], 1),
                                 torch.zeros_like(scale))
    x = geometry.warp_affine(bg, matrix[:, :2], (h, w), padding_mode="reflection", align_corners=True)
    k = 2 * math.ceil(3 * blur_sigma) + 1
    blurred = kornia.filters.gaussian_blur2d(x, (k, k), (blur_sigma, blur_sigma), border_type="reflect")
    x = x + blur.view(-1, 1, 1, 1) * (blurred - x)
    x = enhance.adjust_brightness(x, bright)
    x = enhance.adjust_contrast(x, contrast)
    x = enhance.adjust_saturation(x, sat)
    return enhance.adjust_hue(x, hue).clamp(0, 1)


def _photometric(classifier, batch: _Batch, budget: PhotometricBudget):
    """Adam on theta; each step's uint8-rounded background is evaluated. Returns best levels, margin, pred,
    steps, params."""
    n = batch.bg0.shape[0]
    theta = batch.bg0.new_tensor(_THETA0).repeat(n, 1).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=budget.lr)
    with torch.no_grad():
        best_margin, best_pred = _margin_pred(classifier, batch, batch.bg0)
        best_params = batch.bg0.new_tensor(IDENTITY_PARAMS).repeat(n, 1)
    best = batch.bg0.clone()
    active = best_margin >= 0
    used = torch.zeros(n, dtype=torch.int64, device=best.device)
    for _ in range(budget.steps):
        if not bool(active.any()):
            break
        params = photometric_params(theta)
        changed = apply_photometric(batch.bg0 / 255.0, params, budget.blur_sigma) * 255.0
        x = torch.where(batch.free, changed, batch.bg0)
        # Straight-through rounding: the forward sees the uint8 background that would be returned.
        x = x + (torch.round(x) - x).detach()
        logits = classifier(batch.composite(x))
        margin = classifier.label_map.margin(logits, batch.true)
        opt.zero_grad()
        (margin * active).sum().backward()
        with torch.no_grad():
            margin, pred = margin.detach(), classifier.label_map.predict(logits.detach())
            better = active & (margin < best_margin)
            best = torch.where(better.view(-1, 1, 1, 1), x.detach(), best)
            best_margin, best_pred = torch.where(better, margin, best_margin), torch.where(better, pred, best_pred)
            best_params = torch.where(better.view(-1, 1), params.detach(), best_params)
            used += active.long()
            active = active & (best_margin >= 0)
        opt.step()
    return best.detach(), best_margin, best_pred, used, best_params


# --------------------------------------------------------------------------------------------- min-EPS
def _min_eps(classifier, fg, mask, bg, true, bg_class, budget: MinEpsBudget, crit: Criterion, keys, seed,
             device, dtype):
    """Bisection over the grid, all foregrounds together: lo = largest index known not to fool, hi = smallest
    index known to fool (len(grid): none). Returns best levels, margin, pred, steps, eps (inf: none fools)."""
    grid = np.asarray(budget.grid)
    n = len(true)
    lo, hi = np.full(n, -1), np.full(n, len(grid))
    found, tried = {}, {}                      # foreground -> (levels, margin, pred) at hi / at the largest lo
    used = np.zeros(n, np.int64)
    start = _Batch(fg, mask, bg, true, bg_class, device, dtype)
    with torch.no_grad():
        m0, p0 = _margin_pred(classifier, start, start.bg0)
    fooled0 = crit.fooled(p0, start.true, start.bg_class).cpu().numpy()
    hi[fooled0] = -1                           # fooled at the start: EPS 0
    while True:
        todo = np.flatnonzero(hi - lo > 1)
        if not todo.size:
            break
        mid = (lo[todo] + hi[todo]) // 2
        b = _Batch(fg[todo], mask[todo], bg[todo], true[todo], bg_class[todo], device, dtype)
        levels = torch.as_tensor([_levels(grid[k]) for k in mid], device=device)
        lv, mg, pr, st = _pgd(classifier, b, levels, budget.steps, keys[todo], seed)
        fooled = crit.fooled(pr, b.true, b.bg_class).cpu().numpy()
        used[todo] += st.cpu().numpy()
        for j, i in enumerate(todo):           # bookkeeping only: the attacks above ran as one batch
            (found if fooled[j] else tried)[i] = (lv[j], mg[j], pr[j])
        hi[todo[fooled]], lo[todo[~fooled]] = mid[fooled], mid[~fooled]
    eps = np.where(hi < 0, 0.0, np.where(hi >= len(grid), np.inf, grid[np.clip(hi, 0, len(grid) - 1)]))
    levels = start.bg0.clone()
    margin, pred = m0.clone(), p0.clone()
    for i in range(n):
        got = found.get(i) if hi[i] >= 0 else None
        got = got if got is not None else tried.get(i)
        if got is not None and got[1] < margin[i]:
            levels[i], margin[i], pred[i] = got
    return levels, margin, pred, torch.as_tensor(used), eps


# --------------------------------------------------------------------------------------------- entry point
def refine(classifier, foregrounds: np.ndarray, masks: np.ndarray, backgrounds: np.ndarray,
           true_class: Sequence[int], budget: Budget, *, bg_class: Sequence[int] | None = None,
           criterion: str | Criterion = "any", seed: int = 0, keys: Sequence[int] | None = None,
           batch_size: int = 32) -> Refined:
    """Refine each foreground's start background under ``budget``.

    foregrounds (N, H, W, 3) uint8, masks (N, H, W) 0/1 (or soft, float in [0, 1]), backgrounds (N, H, W, 3)
    uint8 (the start, one per foreground), true_class (N,), bg_class (N,) class of each start background (-1:
    none; needed for the ``bg-class`` criterion). The objective is the true-class margin whatever the criterion;
    the criterion decides ``fooled``. ``keys`` (default 0..N-1, e.g. fg_ids) seed each foreground's random start,
    so a foreground's result does not depend on its batch. Blocks of ``batch_size`` foregrounds run as one
    batched optimisation each."""
    crit = criterion if isinstance(criterion, Criterion) else Criterion(criterion)
    fg, mask, bg = _check_inputs(foregrounds, masks, backgrounds)
    n = len(fg)
    true = np.asarray(true_class, np.int64).reshape(-1)
    bgc = np.full(n, -1, np.int64) if bg_class is None else np.asarray(bg_class, np.int64).reshape(-1)
    keys = np.arange(n) if keys is None else np.asarray(keys, np.int64)
    if not (len(true) == len(bgc) == len(keys) == n):
        raise AdvbgError(f"{n} foregrounds but {len(true)} true classes, {len(bgc)} background classes, "
                         f"{len(keys)} keys")
    if not n:
        raise AdvbgError("nothing to refine: no foregrounds given")
    size = max(1, batch_size)
    blocks = [_refine_block(classifier, fg[s], mask[s], bg[s], true[s], bgc[s], budget, crit, keys[s], seed)
              for s in (slice(i, i + size) for i in range(0, n, size))]
    cols = {k: None if blocks[0][k] is None else np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    return Refined(budget=budget, criterion=crit.name, **cols)


def _check_inputs(fg, mask, bg):
    fg, bg, mask = np.asarray(fg), np.asarray(bg), np.asarray(mask)
    if fg.dtype != np.uint8 or bg.dtype != np.uint8:
        raise AdvbgError(f"foregrounds and backgrounds must be uint8 (got {fg.dtype}, {bg.dtype})")
    if fg.ndim != 4 or fg.shape[-1] != 3 or bg.shape != fg.shape or mask.shape != fg.shape[:3]:
        raise AdvbgError(f"shapes do not fit: foregrounds {fg.shape}, masks {mask.shape}, backgrounds {bg.shape}; "
                         f"want (N, H, W, 3), (N, H, W), (N, H, W, 3)")
    if mask.size and (not np.isfinite(mask.astype(np.float64)).all() or mask.min() < 0 or mask.max() > 1):
        raise AdvbgError("masks must lie in [0, 1]")
    return fg, mask, bg


def _refine_block(classifier, fg, mask, bg, true, bgc, budget: Budget, crit: Criterion, keys, seed) -> dict:
    device = classifier.device
    dtype = next((b.dtype for b in classifier.buffers() if b.is_floating_point()), torch.float32)
    batch = _Batch(fg, mask, bg, true, bgc, device, dtype)
    with torch.no_grad():
        m0, p0 = _margin_pred(classifier, batch, batch.bg0)
    params, eps = None, None
    if isinstance(budget, LinfBudget):
        levels = torch.full((len(fg),), _levels(budget.eps), device=device)
        lv, mg, pr, st = _pgd(classifier, batch, levels, budget.steps, keys, seed)
        eps = np.full(len(fg), budget.eps)
    elif isinstance(budget, PhotometricBudget):
        lv, mg, pr, st, params = _photometric(classifier, batch, budget)
        params = params.cpu().numpy().astype(np.float64)
        eps = np.full(len(fg), np.nan)
    elif isinstance(budget, MinEpsBudget):
        lv, mg, pr, st, eps = _min_eps(classifier, fg, mask, bg, true, bgc, budget, crit, keys, seed, device, dtype)
    else:
        raise AdvbgError(f"unknown budget {budget!r}")
    refined = lv.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def fooled(pred):
        return crit.fooled(pred, batch.true, batch.bg_class).cpu().numpy()

    return dict(background=refined, margin_before=m0.double().cpu().numpy(), margin_after=mg.double().cpu().numpy(),
                pred_before=p0.cpu().numpy(), pred_after=pr.cpu().numpy(), fooled_before=fooled(p0),
                fooled_after=fooled(pr), steps=st.cpu().numpy().astype(np.int64),
                ssim=background_ssim(bg, refined), eps=np.asarray(eps, np.float64), params=params)


def background_ssim(start: np.ndarray, refined: np.ndarray) -> np.ndarray:
    """(N,) SSIM (pytorch_msssim, Gaussian window, data range 255) of refined vs start backgrounds, (N, H, W, 3)."""
    ssim = require_extra("pytorch_msssim").ssim
    if not len(start):
        return np.empty(0)
    a, b = (torch.as_tensor(np.asarray(x)).permute(0, 3, 1, 2).double() for x in (start, refined))
    win = min(11, min(a.shape[-2:]) - (1 - min(a.shape[-2:]) % 2))    # odd, at most the image side
    return ssim(a, b, data_range=255, size_average=False, win_size=max(win, 1)).cpu().numpy()


def median_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """(median, low, high): the median and a distribution-free interval for it from order statistics, with exact
    binomial coverage >= ``confidence`` (for n <= 5 no such interval exists: then the range, with less). Values may
    be inf (censored: larger than any finite one). NaNs for no values."""
    binom = require_extra("scipy.stats").binom
    v = np.sort(np.asarray(values, np.float64))
    n = len(v)
    if not n:
        return float("nan"), float("nan"), float("nan")
    # [v_(r), v_(n-r+1)] (1-based) misses the median with probability 2 * P(Binom(n, 1/2) <= r - 1).
    r = max(1, int(np.count_nonzero(2 * binom.cdf(np.arange(n), n, 0.5) <= 1 - confidence)))
    return float(np.median(v)), float(v[r - 1]), float(v[n - r])
