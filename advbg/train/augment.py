"""Background augmentation for training: foregrounds composited onto drawn backgrounds, on the fly.

Two pieces that plug into a standard ``torch.utils.data.DataLoader``:

- ``PairSampler`` (a Sampler, runs in the main process) decides, per epoch, the order of foregrounds and the
  background each one gets under a ``Policy``; it yields keys ``(fg_row, bg_id)`` with ``bg_id = -1`` for
  "keep the photo's own background". Because every random choice happens here, the sequence depends only on
  (seed, epoch, the weights given so far), never on ``num_workers``.
- ``CompositeDataset`` maps a key to ``(image float (3, H, W) in [0, 1], label)``: the stored foreground
  photo, or ``mask * foreground + (1 - mask) * background`` (``advbg.search.compositor.composite_pairs``). It opens
  its HDF5 files lazily in whichever process reads, so each DataLoader worker has its own handles.

Policies: ``original`` (the stored photos), ``mixed-rand`` (uniformly random backgrounds of any class, the
paper's Mixed-Rand), ``adversarial`` (backgrounds drawn in proportion to their fooling power for the current
model, per foreground class; ``fooling_power`` computes it and ``PairSampler.set_weights`` installs it, e.g.
every N steps). ``Policy.ratio`` mixes: that share of samples is composited, the rest stay original.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.search.compositor import composite_pairs

POLICIES = ("original", "mixed-rand", "adversarial")


@dataclass(frozen=True)
class Policy:
    """How backgrounds are drawn for training."""

    name: str = "mixed-rand"
    ratio: float = 1.0          # share of samples composited onto a drawn background (the rest: original)
    floor: float = 0.1          # adversarial: share of each draw kept uniform, so no background starves

    def validate(self) -> "Policy":
        if self.name not in POLICIES:
            raise AdvbgError(f"unknown policy {self.name!r}; use one of: {', '.join(POLICIES)}")
        if not 0.0 <= self.ratio <= 1.0:
            raise AdvbgError(f"--ratio (policy ratio) must be in [0, 1], got {self.ratio}")
        if not 0.0 <= self.floor <= 1.0:
            raise AdvbgError(f"adversarial floor must be in [0, 1], got {self.floor}")
        return self


# --------------------------------------------------------------------------------------------- dataset
class CompositeDataset(Dataset):
    """Foregrounds of ``store`` on backgrounds of ``backgrounds`` (default: the same store).

    ``backgrounds`` may be any advbg store, e.g. the ``export.h5`` of ``advbg export --format h5``.
    Keys are ``(fg_row, bg_id)`` as yielded by ``PairSampler`` (``fg_row`` indexes ``fg_ids``; ``bg_id`` is a
    background of the backgrounds store, -1 = the photo as stored); a plain int ``fg_row`` means -1.
    """

    def __init__(self, store: str | os.PathLike, *, fg_ids: Sequence[int] | None = None,
                 backgrounds: str | os.PathLike | None = None):
        self.store_path = Path(store)
        self.bg_path = Path(backgrounds) if backgrounds is not None else self.store_path
        with Store(self.store_path) as s:
            n = len(s.foregrounds)
            self.fg_ids = np.arange(n, dtype=np.int64) if fg_ids is None else np.asarray(fg_ids, np.int64)
            if self.fg_ids.size == 0 or (self.fg_ids < 0).any() or (self.fg_ids >= n).any():
                raise AdvbgError(f"foreground ids must be a non-empty selection of 0..{n - 1}")
            self.labels = s.foregrounds.labels[self.fg_ids]
            if (self.labels < 0).any():
                raise AdvbgError(f"{int((self.labels < 0).sum())} selected foregrounds have no class (label -1)")
            self.class_names = s.class_names
            self.image_size = s.image_size
        with Store(self.bg_path) as b:
            if b.image_size != self.image_size:
                raise AdvbgError(f"backgrounds in {self.bg_path} are {b.image_size}, foregrounds {self.image_size}")
            self.bg_labels = b.backgrounds.labels.copy()
        self._open: tuple[int, Store, Store] | None = None

    def __len__(self) -> int:
        return len(self.fg_ids)

    def _stores(self) -> tuple[Store, Store]:
        # Handles opened in the process that reads (a forked worker must not share its parent's HDF5 handle).
        if self._open is None or self._open[0] != os.getpid():
            fg = Store(self.store_path)
            bg = fg if self.bg_path == self.store_path else Store(self.bg_path)
            self._open = (os.getpid(), fg, bg)
        return self._open[1], self._open[2]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = None
        return state

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """(image float (3, H, W) in [0, 1], label) for ``key``."""
        fg_row, bg_id = (int(key), -1) if np.ndim(key) == 0 else (int(key[0]), int(key[1]))
        fg_store, bg_store = self._stores()
        fid = int(self.fg_ids[fg_row])
        image = torch.from_numpy(fg_store.foregrounds.images[fid])[None]                 # (1, H, W, 3)
        if bg_id < 0:
            x = image.permute(0, 3, 1, 2).float().div_(255.0)
        else:
            mask = torch.from_numpy(fg_store.foregrounds.masks[fid])[None]              # (1, H, W)
            bg = torch.from_numpy(bg_store.backgrounds.images[bg_id])[None]            # (1, H, W, 3)
            zero = torch.zeros(1, dtype=torch.int64)
            x = composite_pairs(image, mask, bg, zero, zero)                           # (1, 3, H, W)
        return x[0].contiguous(), int(self.labels[fg_row])

    def close(self) -> None:
        if self._open is not None and self._open[0] == os.getpid():
            self._open[1].close()
            self._open[2].close()
        self._open = None


# --------------------------------------------------------------------------------------------- sampler
class PairSampler(Sampler):
    """Yields ``(fg_row, bg_id)`` keys for one epoch: every foreground once, in a seeded random order.

    For each item two uniforms are drawn, whatever the policy: ``u`` decides composite vs original
    (``u < ratio``) and ``v`` picks the background (uniform for mixed-rand; through the cumulative weights of
    the item's class for adversarial). Weights set with ``set_weights`` apply to items drawn afterwards.
    """

    def __init__(self, labels: Sequence[int], bg_pool: Sequence[int], policy: Policy = Policy(), seed: int = 0,
                 n_classes: int | None = None):
        self.labels = np.asarray(labels, np.int64)
        self.pool = np.asarray(bg_pool, np.int64)
        if self.pool.size == 0 and policy.name != "original":
            raise AdvbgError("the background pool is empty")
        self.policy = policy.validate()
        self.seed, self.epoch = int(seed), 0
        self.n_classes = int(n_classes if n_classes is not None else self.labels.max() + 1)
        self._cdf: np.ndarray | None = None      # (n_classes, B) cumulative draw probabilities
        self.set_weights(np.ones((self.n_classes, len(self.pool))))

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_weights(self, weights: np.ndarray) -> None:
        """Non-negative fooling power per background, (B,) or per foreground class (n_classes, B)."""
        w = np.asarray(weights, np.float64)
        if w.ndim == 1:
            w = np.broadcast_to(w, (self.n_classes, len(self.pool)))
        if w.shape != (self.n_classes, len(self.pool)) or not np.isfinite(w).all() or (w < 0).any():
            raise AdvbgError(f"weights must be finite, non-negative, shape ({len(self.pool)},) or "
                             f"({self.n_classes}, {len(self.pool)}); got {w.shape}")
        total = w.sum(1, keepdims=True)
        p = np.where(total > 0, w / np.where(total > 0, total, 1), 1.0 / max(len(self.pool), 1))
        p = (1 - self.policy.floor) * p + self.policy.floor / max(len(self.pool), 1)
        self._cdf = np.cumsum(p, 1)
        if len(self.pool):
            self._cdf[:, -1] = 1.0 + 1e-12     # v < 1 always lands inside the pool despite rounding

    def probabilities(self) -> np.ndarray:
        """(n_classes, B) current adversarial draw probabilities."""
        return np.diff(self._cdf, axis=1, prepend=0.0).clip(0, 1)

    def _draw(self, label: int, v: float) -> int:
        if self.policy.name == "mixed-rand":
            return int(self.pool[min(int(v * len(self.pool)), len(self.pool) - 1)])
        return int(self.pool[int(np.searchsorted(self._cdf[label], v, side="right"))])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        for row in rng.permutation(len(self.labels)):
            u, v = rng.random(2)
            if self.policy.name == "original" or u >= self.policy.ratio:
                yield int(row), -1
            else:
                yield int(row), self._draw(int(self.labels[row]), float(v))


# --------------------------------------------------------------------------------------------- fooling power
@torch.inference_mode()
def fooling_power(model: Callable[[torch.Tensor], torch.Tensor], fg_u8: torch.Tensor, mask_u8: torch.Tensor,
                  fg_labels: torch.Tensor, bg_u8: torch.Tensor, n_classes: int, *, batch_size: int = 256,
                  autocast=None) -> np.ndarray:
    """(n_classes, B) fooling power of each background for foregrounds of each class.

    The power of background j for class c is the mean, over the probe foregrounds of class c, of the
    probability mass the model puts off the true class on the composite (a smooth fooling rate that still ranks
    backgrounds when none flips a prediction). Classes without probes get the mean over all probes.
    ``model`` maps [0, 1] NCHW images to logits; fg/mask/bg are uint8 on the model's device.
    """
    n_bg = bg_u8.shape[0]
    per_fg = torch.zeros(fg_u8.shape[0], n_bg, dtype=torch.float32, device=bg_u8.device)
    for i in range(fg_u8.shape[0]):
        for s in range(0, n_bg, batch_size):
            bg = bg_u8[s:s + batch_size]
            one = torch.zeros(len(bg), dtype=torch.int64, device=bg.device)
            x = composite_pairs(fg_u8[i:i + 1], mask_u8[i:i + 1], bg, one, torch.arange(len(bg), device=bg.device))
            with autocast or contextlib.nullcontext():
                logits = model(x).float()
            p_true = logits.softmax(1)[:, int(fg_labels[i])]
            per_fg[i, s:s + len(bg)] = 1.0 - p_true
    out = np.empty((n_classes, n_bg), np.float64)
    every = per_fg.mean(0).cpu().numpy()
    labels = fg_labels.cpu().numpy()
    for c in range(n_classes):
        rows = np.flatnonzero(labels == c)
        out[c] = per_fg[rows].mean(0).cpu().numpy() if rows.size else every
    return out


def probe_rows(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``per_class`` random rows of each class (sorted), for one fooling-power refresh."""
    rows = [rng.choice(np.flatnonzero(labels == c), min(per_class, int((labels == c).sum())), replace=False)
            for c in np.unique(labels)]
    return np.sort(np.concatenate(rows)) if rows else np.empty(0, np.int64)
