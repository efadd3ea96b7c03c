"""Worst-case background search: every foreground against a pool of backgrounds, in large batches.

``search(store, classifier, SearchConfig(...))`` does the bookkeeping (validation, units, resumable journal,
sharding over torchrun ranks, result assembly); ``_Engine`` does the work of one unit on the device. Modes differ
only in which backgrounds each foreground is tried on, in which order, and whether it stops at its first fooling
background:
  - exhaustive: every background of the pool (exact worst case; also records the fg x bg outcome matrix),
  - early-exit: stops a foreground at its first fooling background (fooling rate and first fooling bg only),
  - pruned: a candidate list per foreground from ``advbg.index`` (``SearchConfig.candidates``).

How a unit runs (``fg_block`` foregrounds): their uint8 images go to the device; the background pool is there
already (resident when it fits the memory budget, else streamed in blocks, see ``advbg.pool``). Every pair
(foreground a, trial position p) has a flat index k = a * L + p; a batch is a tensor of such k, from which the
device derives foreground, background and labels arithmetically, composites in uint8, and runs the model (bf16
autocast on CUDA, channels_last, optionally torch.compile'd). Margins, predictions and decisions land in (a, p)
matrices on the device; the per-foreground outcome (worst background, first fooling one, counts) is reduced from
them once per unit, the only device->host sync of an exhaustive unit. Early exit decides the next batch on the
host from the previous batches' decisions (one batch behind on CUDA, so the GPU never waits), mixing all the
unit's live foregrounds so that batches stay full. Results never depend on how pairs were batched: every pair up
to a foreground's first fooling one is evaluated, later ones are ignored, ties go to the earliest trial position
— exactly what a plain loop computes.

Units are committed to a journal beside the store as they finish, and written into the store once at the end
(``advbg.journal``, ``advbg.results``): a run killed at any point resumes with ``resume=True``, redoing at most
the units in flight. SIGINT/SIGTERM stop cleanly after the current unit. Under ``torchrun`` units are shared
round-robin by rank (``advbg.distributed``); rank 0 writes the store.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Iterator

import numpy as np
import torch

from . import __version__, distributed
from .compositor import composite_pairs, select_mask
from .criteria import Criterion
from .errors import AdvbgError
from .models import Classifier
from .pool import BackgroundPool, default_threads, read_items, upload
from .store import Store, _now

OUTCOME_NONE = 254          # mapped prediction "none" (unmapped top-1)
OUTCOME_MISSING = 255       # pair not evaluated (early exit, pruning)
MODES = ("exhaustive", "early-exit")
AMPS = ("auto", "off", "bf16", "fp16")
CPU_BATCH = 64              # CPU throughput is flat beyond this; larger batches only cost memory
MAX_AUTO_BATCH = 1024       # GPUs gain little past this for ImageNet-sized models
CPU_BUDGET_GB = 2.0         # default host memory for a CPU search's resident pool and batches

# fg_ids (unit) -> one array of bg pool positions per foreground, in the order to try them.
CandidateFn = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class SearchConfig:
    """How a search runs. Saved with its results."""

    criterion: str = "any"
    mode: str = "exhaustive"
    batch_size: int | None = None  # composites per forward; None = auto (64 on CPU, sized to free memory on CUDA)
    fg_block: int = 32             # foregrounds per committed unit: the most work a crash can lose
    amp: str = "auto"              # auto = bf16 on CUDA, fp32 on CPU (CPU bf16 convs are slower and less exact)
    device: str | None = None      # None = the classifier's device
    foregrounds: tuple[int, ...] | None = None   # fg_ids to search (None = all)
    backgrounds: tuple[int, ...] | None = None   # the background pool as bg_ids (None = all)
    record_outcomes: bool = True   # keep the fg x bg matrix of mapped predictions (for `universal`)
    prune: str | None = None       # description of the candidate rule when `candidates` is set
    candidates: CandidateFn | None = field(default=None, compare=False, repr=False)
    channels_last: bool = True     # NHWC activations (the composites are NHWC already)
    compile: bool = False          # torch.compile compositing + model (fuses composite, resize, normalisation)
    cuda_graphs: bool = False      # with compile on CUDA: replay CUDA graphs (mode reduce-overhead)
    memory_gb: float | None = None  # device memory this search may use (CPU: host memory); None = 90% of free
    verify_close: float = 0.0      # recompute in fp32 every pair whose decision is this close (0 = never)

    def validate(self) -> None:
        Criterion(self.criterion)
        if self.mode not in MODES:
            raise AdvbgError(f"unknown mode {self.mode!r}; use one of: {', '.join(MODES)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise AdvbgError(f"batch size must be at least 1 (got {self.batch_size}); leave it unset for automatic")
        if self.fg_block < 1:
            raise AdvbgError(f"fg_block must be at least 1 (got {self.fg_block})")
        if self.amp not in AMPS:
            raise AdvbgError(f"amp must be auto, off, bf16 or fp16 (got {self.amp!r})")
        if self.memory_gb is not None and not self.memory_gb > 0:
            raise AdvbgError(f"the memory budget must be positive (got {self.memory_gb} GB)")
        if not (self.verify_close >= 0 and math.isfinite(self.verify_close)):
            raise AdvbgError(f"verify_close must be a finite margin >= 0 (got {self.verify_close})")

    def to_dict(self) -> dict:
        d = asdict(replace(self, candidates=None))
        d.pop("candidates")
        for k in ("foregrounds", "backgrounds"):
            if d[k] is not None:
                d[k] = f"{len(d[k])} ids"
        return d


@dataclass(frozen=True)
class RunRecord:
    """What produced a result: stored as JSON in the results group and written to every summary."""

    advbg_version: str
    classifier: dict
    store: str
    store_digest: str
    criterion: str
    mode: str
    pruning: str | None
    config: dict
    device: str
    started: str
    seconds: float
    forwards: int
    batch_size: int = 0            # composites per forward actually used (after auto-sizing / OOM retries)
    world_size: int = 1            # processes that shared the work (torchrun)
    amp: str = "off"               # precision the forwards ran in
    verified: int = 0              # close pairs recomputed in fp32 (verify_close)
    resumed_units: int = 0         # units taken from an earlier, interrupted run

    @property
    def composites_per_s(self) -> float:
        return self.forwards / self.seconds if self.seconds > 0 else float("nan")

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class ForegroundResult:
    """The outcome for one foreground."""

    fg_id: int
    true_class: int
    worst_bg: int              # bg_id with the lowest true-class margin (-1: none evaluated)
    worst_margin: float
    worst_pred: int            # mapped prediction on the worst background (-1: "none")
    first_fooling_bg: int      # first fooling bg_id in trial order (-1: not fooled)
    n_fooling: int
    n_evaluated: int
    fooled: bool


@dataclass(frozen=True)
class SearchResult:
    """Per-foreground arrays (index k = the k-th searched foreground) plus the run record."""

    run: RunRecord
    fg_id: np.ndarray
    true_class: np.ndarray
    worst_bg: np.ndarray
    worst_margin: np.ndarray
    worst_pred: np.ndarray
    first_fooling_bg: np.ndarray
    n_fooling: np.ndarray
    n_evaluated: np.ndarray
    n_invalid: np.ndarray      # composites with NaN/inf logits: reported, never counted as fooled
    class_names: tuple[str, ...]
    results_name: str | None = None
    journal: str | None = None  # under torchrun: the finished journal that rank 0 merges into the store

    @property
    def fooled(self) -> np.ndarray:
        return self.first_fooling_bg >= 0

    @property
    def fooling_rate(self) -> float:
        """Percent of foregrounds with at least one fooling background."""
        return 100.0 * float(self.fooled.mean()) if len(self.fg_id) else float("nan")

    @property
    def challenge_accuracy(self) -> float:
        return 100.0 - self.fooling_rate

    def __len__(self) -> int:
        return len(self.fg_id)

    def __getitem__(self, k: int) -> ForegroundResult:
        return ForegroundResult(int(self.fg_id[k]), int(self.true_class[k]), int(self.worst_bg[k]),
                                float(self.worst_margin[k]), int(self.worst_pred[k]), int(self.first_fooling_bg[k]),
                                int(self.n_fooling[k]), int(self.n_evaluated[k]), bool(self.fooled[k]))

    def summary(self) -> dict:
        """JSON-ready summary: headline numbers, run record, per-foreground rows."""
        return dict(
            fooling_rate=self.fooling_rate, challenge_accuracy=self.challenge_accuracy,
            criterion=self.run.criterion, mode=self.run.mode, model=self.run.classifier["name"],
            model_tag=f"{self.run.classifier['architecture']}.{self.run.classifier['weight_tag']}",
            label_map=self.run.classifier["label_map"], n_foregrounds=len(self), forwards=self.run.forwards,
            seconds=self.run.seconds, composites_per_s=self.run.composites_per_s,
            invalid_composites=int(self.n_invalid.sum()), results_name=self.results_name,
            run=asdict(self.run), class_names=list(self.class_names),
            foregrounds=[asdict(self[k]) for k in range(len(self))],
        )


FIELDS = ("worst_bg", "worst_margin", "worst_pred", "first_fooling_bg", "n_fooling", "n_evaluated", "n_invalid")
_NEVER = np.iinfo(np.int64).max


# --------------------------------------------------------------------------------------------- forward
def resolve_amp(device: torch.device, amp: str) -> str:
    """'auto' -> bf16 on CUDA, off elsewhere."""
    if amp == "auto":
        return "bf16" if device.type == "cuda" else "off"
    return amp


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and ("out of memory" in str(e) or "can't allocate memory" in str(e))


class _Step:
    """One forward: composites of the pairs -> (margin, pred, fooled, closeness) on the device."""

    def __init__(self, classifier: Classifier, criterion: Criterion, device: torch.device, config: SearchConfig):
        self.classifier, self.criterion, self.device = classifier, criterion, device
        self.amp = resolve_amp(device, config.amp)
        self.low_precision = self.amp != "off"
        lp = torch.bfloat16 if self.amp == "bf16" else torch.float16
        self.autocast_dtype = lp
        # CPU autocast runs convolutions in low precision but wants fp32 input; CUDA takes the composite as is.
        self.comp_dtype = lp if (self.low_precision and device.type == "cuda") else torch.float32
        self.channels_last = config.channels_last
        self.any = criterion.name == "any"
        kind = type(classifier)
        self._direct = kind.forward is Classifier.forward and kind.preprocess is Classifier.preprocess
        self._input_hw = tuple(classifier.config.input_size[1:])
        self._fn = self._logits
        if config.compile:
            mode = "reduce-overhead" if (config.cuda_graphs and device.type == "cuda") else "default"
            self._fn = torch.compile(self._logits, mode=mode, dynamic=False)

    def _logits(self, fg, sel, bg, fi, bj, dtype: torch.dtype) -> torch.Tensor:
        x = composite_pairs(fg, sel, bg, fi, bj, dtype)
        if not self.channels_last:
            x = x.contiguous()
        if self._direct and tuple(x.shape[-2:]) == self._input_hw:
            # Classifier.preprocess without a resize, in place: the same arithmetic, no float temporaries.
            x.sub_(self.classifier.mean.to(x.dtype)).div_(self.classifier.std.to(x.dtype))
            return self.classifier.model(x)
        return self.classifier(x)

    def __call__(self, fg, mask, bg, fi, bj, true, bg_label, fp32: bool = False, eager: bool = False):
        fn = self._logits if (fp32 or eager) else self._fn
        with torch.inference_mode():
            if fp32 or not self.low_precision:
                logits = fn(fg, mask, bg, fi, bj, torch.float32).float()
            else:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    logits = fn(fg, mask, bg, fi, bj, self.comp_dtype).float()
            lm = self.classifier.label_map
            pred = lm.predict(logits)
            margin = lm.margin(logits, true)
            fooled = self.criterion.fooled(pred, true, bg_label)
            if self.any:  # the decision flips only where the margin crosses 0
                close = margin.abs()
            else:  # bg-class: the prediction itself can flip where the top two scores are close
                top2 = lm.reduce(logits).float().topk(2, dim=1).values
                close = top2[:, 0] - top2[:, 1]
        return margin, pred, fooled, close


class _Batcher:
    """Runs the step on any number of pairs in chunks of ``size``; on out-of-memory halves ``size`` for good
    and retries. With ``pad`` every chunk is padded to ``size`` (one compiled graph, no recompiles)."""

    def __init__(self, step: _Step, size: int, pad: bool, echo: Callable[[str], None]):
        self.step, self.size, self.pad, self.echo = step, size, pad, echo
        self.retries = 0

    def __call__(self, fg, mask, bg, fi, bj, true, bgl, fp32: bool = False):
        n, outs, s = fi.numel(), [], 0
        while s < n:
            e = min(n, s + self.size)
            args = [t[s:e] for t in (fi, bj, true, bgl)]
            try:
                outs.append(self._one(fg, mask, bg, *args, fp32=fp32))
            except Exception as err:  # noqa: BLE001 - only out-of-memory is handled; the rest re-raised
                if not _is_oom(err):
                    raise
                self._shrink(err)
                continue
            s = e
        if len(outs) == 1:
            return outs[0]
        return tuple(torch.cat(parts) for parts in zip(*outs))

    def _one(self, fg, mask, bg, fi, bj, true, bgl, fp32: bool):
        p = fi.numel()
        if self.pad and p < self.size and not fp32:
            fi, bj, true, bgl = (torch.cat([t, t[:1].expand(self.size - p)]) for t in (fi, bj, true, bgl))
        out = self.step(fg, mask, bg, fi, bj, true, bgl, fp32=fp32)
        return tuple(t[:p] for t in out) if out[0].shape[0] != p else out

    def _shrink(self, err: BaseException) -> None:
        if self.step.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.size <= 1:
            raise AdvbgError(f"out of memory even at one composite per forward on {self.step.device} ({err}); "
                             f"free device memory or use a smaller model") from None
        self.size = max(1, self.size // 2)
        self.retries += 1
        self.echo(f"advbg: out of memory: retrying with batch size {self.size}")


def budget_bytes(device: torch.device, memory_gb: float | None) -> int:
    """Memory this search may use on ``device`` (the model included)."""
    if memory_gb is not None:
        return int(memory_gb * 2**30)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.9 * (free + torch.cuda.memory_allocated(device)))
    return int(CPU_BUDGET_GB * 2**30)


def auto_batch_size(per_sample_bytes: float, available_bytes: float, cap: int = MAX_AUTO_BATCH) -> int:
    """The batch that fills ~60% of the available memory (activations grow linearly), 16..cap, a multiple
    of 16 when it can be (tensor-core friendly shapes)."""
    b = int(0.6 * max(0.0, available_bytes) / max(1.0, per_sample_bytes))
    b = max(16, min(cap, b))
    return b - b % 16


# --------------------------------------------------------------------------------------------- scheduling
class _Scheduler:
    """Early exit: the next batch of (foreground, trial position) pairs from the live foregrounds, vectorised.

    ``ptr``/``pos``: per foreground a, its trial positions available now are ``pos[ptr[a]:ptr[a+1]]``
    (increasing). ``first`` (shared, per foreground) is the earliest fooling position known; positions past it
    are never scheduled. Live foregrounds share each batch equally, so a fooled one leaves little waste and
    batches stay full while any foreground has pairs left."""

    def __init__(self, ptr: np.ndarray, pos: np.ndarray, first: np.ndarray):
        self.pos, self.first = pos, first
        self.cur, self.end = ptr[:-1].copy(), ptr[1:].copy()

    def next(self, size: int) -> tuple[np.ndarray, np.ndarray] | None:
        avail = self.end - self.cur
        live = avail > 0
        if self.pos.size:
            live &= self.pos[np.minimum(self.cur, self.pos.size - 1)] < self.first
        act = np.flatnonzero(live)
        if act.size == 0:
            return None
        take = _water_fill(avail[act], size)
        keep = take > 0
        act, take = act[keep], take[keep]
        before = np.cumsum(take) - take
        rep = np.repeat(np.arange(act.size), take)
        idx = self.cur[act][rep] + (np.arange(int(take.sum())) - before[rep])
        self.cur[act] += take
        return act[rep], self.pos[idx]

    def fooled(self, a: np.ndarray, p: np.ndarray) -> None:
        np.minimum.at(self.first, a, p)


def _water_fill(avail: np.ndarray, size: int) -> np.ndarray:
    """Split ``size`` slots among foregrounds with ``avail`` pairs left: as equally as possible (level s, one more
    for the first few), none above its ``avail``; fills all ``size`` slots whenever the pairs left allow."""
    if avail.sum() <= size:
        return avail.copy()
    srt = np.sort(avail)
    k = srt.size
    cums = np.cumsum(srt)
    at_break = cums - srt + srt * (k - np.arange(k))   # slots used at level srt[i]
    i = int(np.searchsorted(at_break, size, side="right"))
    base = int(cums[i - 1]) if i else 0
    level = (size - base) // (k - i)
    take = np.minimum(avail, level)
    extra = np.flatnonzero(avail > level)[: size - int(take.sum())]
    take[extra] += 1
    return take


# --------------------------------------------------------------------------------------------- engine
@dataclass
class _UnitState:
    """A unit on the device: inputs and the (foreground, trial position) matrices of results."""

    n: int
    L: int                         # trial positions per foreground (pool size, or longest candidate list)
    BJ: np.ndarray | None          # (n, L) pool position of each trial, -1 = none (None: position = trial)
    BJd: torch.Tensor | None
    fg: torch.Tensor
    mask: torch.Tensor             # (n, H, W, 3) 0/255 select masks
    true: torch.Tensor
    M: torch.Tensor                # (n, L) float32 margin, NaN until evaluated
    P: torch.Tensor                # (n, L) int16 mapped prediction
    Fo: torch.Tensor               # (n, L) bool fooled
    E: torch.Tensor                # (n, L) bool evaluated
    C: torch.Tensor | None         # (n, L) closeness of the decision, +inf once verified (verify_close only)
    first: np.ndarray              # (n,) earliest fooling trial position known (early exit)


class _Engine:
    """Runs units of one search on one device; see the module docstring."""

    def __init__(self, store: Store, classifier: Classifier, criterion: Criterion, config: SearchConfig,
                 device: torch.device, pool: np.ndarray, echo: Callable[[str], None]):
        self.store, self.config, self.device = store, config, device
        self.step = _Step(classifier, criterion, device, config)
        self.budget = budget_bytes(device, config.memory_gb)
        self._fraction_set = False
        if device.type == "cuda" and config.memory_gb is not None:
            # Make the budget binding: allocations beyond it raise OOM, which the batcher answers by halving.
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, self.budget / total), device)
            self._fraction_set = True
        self.executor = ThreadPoolExecutor(default_threads())
        self.pool = BackgroundPool(store.backgrounds.images, pool, device, self.budget, executor=self.executor)
        self.bg_label = torch.as_tensor(store.backgrounds.labels[pool], device=device)
        self.stop = config.mode == "early-exit"
        self.lag = 1 if (self.stop and device.type == "cuda") else 0
        self.verify = config.verify_close if self.step.low_precision else 0.0
        size = config.batch_size or (CPU_BATCH if device.type != "cuda" else 0)
        self.batch = _Batcher(self.step, size, pad=config.compile, echo=echo)
        self.forwards = 0
        self.verified = 0

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        if self._fraction_set:
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)

    # -- one unit ------------------------------------------------------------------------------------------
    def run_unit(self, ids: np.ndarray, cands: list[np.ndarray] | None,
                 on_batch: Callable[[int], None]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """The per-foreground outcome arrays of foregrounds ``ids`` and their (n, B) outcome rows."""
        u = self._prepare(ids, cands)
        for j0, j1, blk in self.pool.blocks():
            if self.batch.size == 0:  # automatic on CUDA: sized once, on the first block
                self._size_batch(u, blk, j0)
            if self.stop:
                self._early_exit(u, j0, j1, blk, on_batch)
            else:
                self._exhaustive(u, j0, j1, blk, on_batch)
        return self._reduce(u)

    def _prepare(self, ids: np.ndarray, cands: list[np.ndarray] | None) -> _UnitState:
        n, dev = len(ids), self.device
        fgs = self.store.foregrounds
        fg = upload(read_items(fgs.images, ids, executor=self.executor), dev)
        mask = select_mask(upload(read_items(fgs.masks, ids, executor=self.executor), dev))
        true = torch.as_tensor(fgs.labels[ids], device=dev)
        BJ = BJd = None
        L = len(self.pool)
        if cands is not None:
            lens = np.array([len(c) for c in cands], np.int64)
            L = max(1, int(lens.max(initial=0)))
            BJ = np.full((n, L), -1, np.int64)
            BJ[np.arange(L)[None, :] < lens[:, None]] = np.concatenate(cands) if lens.sum() else []
            if ((BJ >= len(self.pool)) | (BJ < -1)).any():
                raise AdvbgError(f"candidate lists hold positions outside the pool of {len(self.pool)} backgrounds")
            BJd = torch.as_tensor(BJ, device=dev)
        f32 = dict(device=dev, dtype=torch.float32)
        return _UnitState(
            n, L, BJ, BJd, fg, mask, true,
            M=torch.full((n, L), float("nan"), **f32), P=torch.full((n, L), -2, dtype=torch.int16, device=dev),
            Fo=torch.zeros((n, L), dtype=torch.bool, device=dev), E=torch.zeros((n, L), dtype=torch.bool, device=dev),
            C=torch.full((n, L), float("inf"), **f32) if self.verify else None,
            first=np.full(n, _NEVER, np.int64))

    def _decode(self, u: _UnitState, k: torch.Tensor, j0: int):
        """Flat pair indices -> (fg row, bg row within the block, true label, bg label)."""
        a = torch.div(k, u.L, rounding_mode="floor")
        p = k - a * u.L
        bj = p if u.BJd is None else u.BJd.view(-1)[k]
        return a, bj - j0, u.true[a], self.bg_label[bj]

    def _run(self, u: _UnitState, k: torch.Tensor, blk: torch.Tensor, j0: int, fp32: bool = False):
        a, bj, true, bgl = self._decode(u, k, j0)
        margin, pred, fooled, close = self.batch(u.fg, u.mask, blk, a, bj, true, bgl, fp32=fp32)
        u.M.view(-1).index_copy_(0, k, margin)
        u.P.view(-1).index_copy_(0, k, pred.to(torch.int16))
        u.Fo.view(-1).index_copy_(0, k, fooled)
        u.E.view(-1).index_fill_(0, k, True)
        if u.C is not None:
            u.C.view(-1).index_copy_(0, k, torch.full_like(close, float("inf")) if fp32 else close.float())
        if not fp32:
            self.forwards += k.numel()
        return fooled & torch.isfinite(margin), close

    def _size_batch(self, u: _UnitState, blk: torch.Tensor, j0: int) -> None:
        """CUDA, batch_size 0: measure one small forward's activation memory and fill the budget."""
        probe = 16
        k = self._block_pairs(u, j0, j0 + blk.shape[0])[:probe]
        a, bj, true, bgl = self._decode(u, k, j0)
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.step(u.fg, u.mask, blk, a, bj, true, bgl, eager=True)   # no compile for a throw-away shape
        torch.cuda.synchronize(self.device)
        per = (torch.cuda.max_memory_allocated(self.device) - base) / max(1, k.numel())
        self.batch.size = auto_batch_size(per, self.budget - torch.cuda.memory_allocated(self.device))

    def _block_pairs(self, u: _UnitState, j0: int, j1: int) -> torch.Tensor:
        """Flat indices of the unit's pairs whose background lies in pool positions j0..j1-1, fg-major."""
        if u.BJ is None:
            bl = j1 - j0
            q = torch.arange(u.n * bl, device=self.device)
            if bl == u.L:
                return q
            a = torch.div(q, bl, rounding_mode="floor")
            return a * u.L + j0 + (q - a * bl)
        inside = ((u.BJ >= j0) & (u.BJ < j1)).ravel()
        return torch.as_tensor(np.flatnonzero(inside), device=self.device)

    def _exhaustive(self, u: _UnitState, j0: int, j1: int, blk: torch.Tensor, on_batch) -> None:
        ks = self._block_pairs(u, j0, j1)
        s = 0
        while s < ks.numel():
            e = min(ks.numel(), s + self.batch.size)
            self._run(u, ks[s:e], blk, j0)
            on_batch(e - s)
            s = e
        if self.verify:
            close = torch.nonzero(u.C.view(-1) < self.verify).squeeze(1)   # one sync per block
            if close.numel():
                self._run(u, close, blk, j0, fp32=True)
                self.verified += close.numel()

    def _early_exit(self, u: _UnitState, j0: int, j1: int, blk: torch.Tensor, on_batch) -> None:
        if u.BJ is None:
            bl = j1 - j0
            ptr = np.arange(u.n + 1, dtype=np.int64) * bl
            pos = np.tile(np.arange(j0, j1, dtype=np.int64), u.n)
        else:
            rows, pos = np.nonzero((u.BJ >= j0) & (u.BJ < j1))
            ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=u.n))]).astype(np.int64)
        sched = _Scheduler(ptr, pos, u.first)
        pending: deque = deque()
        cuda = self.device.type == "cuda"
        while True:
            nxt = sched.next(self.batch.size)
            if nxt is None:
                break
            a, p = nxt
            k_np = a * u.L + p
            k = torch.from_numpy(k_np).to(self.device, non_blocking=cuda)
            fv, close = self._run(u, k, blk, j0)
            host = [t.to("cpu", non_blocking=cuda) for t in ((fv, close) if self.verify else (fv,))]
            ev = None
            if cuda:
                ev = torch.cuda.Event()
                ev.record()
            pending.append((a, p, k, host, ev))
            on_batch(len(a))
            while len(pending) > self.lag:
                self._resolve(u, sched, pending.popleft(), blk, j0)
        while pending:
            self._resolve(u, sched, pending.popleft(), blk, j0)

    def _resolve(self, u: _UnitState, sched: _Scheduler, item, blk: torch.Tensor, j0: int) -> None:
        """Fold one batch's decisions into the schedule (verifying close ones in fp32 first)."""
        a, p, k, host, ev = item
        if ev is not None:
            ev.synchronize()
        fv = host[0].numpy().copy()
        if self.verify:
            idx = np.flatnonzero(host[1].numpy() < self.verify)
            if idx.size:
                sel = k[torch.from_numpy(idx).to(k.device)]
                fv2, _ = self._run(u, sel, blk, j0, fp32=True)
                fv[idx] = fv2.cpu().numpy()
                self.verified += idx.size
        sched.fooled(a[fv], p[fv])

    # -- per-foreground outcome --------------------------------------------------------------------------
    def _reduce(self, u: _UnitState) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """What a plain loop over each foreground's trials would report, from the unit's matrices."""
        E, M, P, Fo = u.E, u.M, u.P, u.Fo
        finite = torch.isfinite(M)
        valid = E & finite
        fool = valid & Fo
        has = fool.any(1)
        first = torch.where(has, fool.to(torch.uint8).argmax(1), torch.full_like(has, -1, dtype=torch.int64))
        counted = E
        if self.stop:  # pairs after the first fooling one are not part of a plain early-exit loop
            trial = torch.arange(u.L, device=self.device)[None, :]
            counted = E & (~has[:, None] | (trial <= first[:, None]))
        cv = counted & valid
        Mc = torch.where(cv, M, torch.full_like(M, float("inf")))
        wpos = Mc.argmin(1)                                       # first minimum: earliest trial on ties
        hasw = cv.any(1)
        wmargin = Mc.gather(1, wpos[:, None]).squeeze(1)
        wpred = P.gather(1, wpos[:, None]).squeeze(1).to(torch.int64)
        out = dict(n_evaluated=counted.sum(1), n_invalid=(counted & ~finite).sum(1),
                   n_fooling=(counted & fool).sum(1), first=first, wpos=torch.where(hasw, wpos, -1),
                   wmargin=torch.where(hasw, wmargin.double(), float("nan")), wpred=torch.where(hasw, wpred, -1))
        outcome = None
        if self.config.record_outcomes:
            mapped = torch.where(P < 0, OUTCOME_NONE, P).to(torch.uint8)
            if u.BJ is None:
                outcome = torch.where(counted, mapped, torch.full_like(mapped, OUTCOME_MISSING))
            else:
                outcome = torch.full((u.n, len(self.pool)), OUTCOME_MISSING, dtype=torch.uint8, device=self.device)
                rows = torch.arange(u.n, device=self.device)[:, None].expand_as(u.BJd)
                outcome[rows[counted], u.BJd[counted]] = mapped[counted]
        h = {k: v.cpu().numpy() for k, v in out.items()}          # the unit's one device->host sync
        bg = self.pool.pool

        def bg_id(pos: np.ndarray) -> np.ndarray:
            ok = pos >= 0
            res = np.full(len(pos), -1, np.int64)
            j = pos[ok] if u.BJ is None else u.BJ[np.flatnonzero(ok), pos[ok]]
            res[ok] = bg[j]
            return res

        vals = dict(worst_bg=bg_id(h["wpos"]), worst_margin=h["wmargin"].astype(np.float64),
                    worst_pred=h["wpred"].astype(np.int64), first_fooling_bg=bg_id(h["first"]),
                    n_fooling=h["n_fooling"].astype(np.int64), n_evaluated=h["n_evaluated"].astype(np.int64),
                    n_invalid=h["n_invalid"].astype(np.int64))
        return vals, (outcome.cpu().numpy() if outcome is not None else None)


# --------------------------------------------------------------------------------------------- driver
def default_results_name(classifier: Classifier, config: SearchConfig) -> str:
    name = f"{classifier.config.tag}.{config.criterion}.{config.mode}"
    return name + (f".{config.prune}" if config.prune else "")


def _check_label_space(store: Store, classifier: Classifier) -> None:
    have = [c.lower() for c in classifier.label_map.class_names]
    want = [c.lower() for c in store.class_names]
    if len(have) != len(want):
        raise AdvbgError(f"the classifier's label map {classifier.config.label_map!r} gives {len(have)} classes "
                         f"but the store has {len(want)} ({', '.join(store.class_names)}); choose a label map "
                         f"that fits (--label-map in9 for ImageNet models on IN-9 stores)")
    if have != want and classifier.config.label_map != "identity":
        raise AdvbgError(f"label map classes {tuple(have)} differ from the store's {tuple(want)}")


class _StopRequest:
    """SIGINT / SIGTERM ask the search to stop after the unit in progress; a second SIGINT stops at once."""

    def __init__(self, echo: Callable[[str], None]):
        self.echo, self.requested, self._old = echo, False, {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.echo("advbg: stopping after the current unit (Ctrl-C again to stop at once)")

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def search(store: Store, classifier: Classifier, config: SearchConfig = SearchConfig(), *,
           results_name: str | None = None, write: bool = True, resume: bool = False,
           progress: bool = True, on_unit: Callable[[int], None] | None = None,
           journal_dir: str | None = None, echo: Callable[[str], None] = _stderr) -> SearchResult:
    """Find each foreground's worst-case background; see the module docstring.

    ``write``: commit units to a journal and the finished result into ``/results/<name>`` of the store (opened
    'r+'; under torchrun every rank opens it read-only and the caller merges ``result.journal`` afterwards, as
    ``advbg search`` does). ``resume``: keep the units an interrupted run committed (same settings needed).
    ``journal_dir``: where journals live (default: beside the store; under torchrun a folder all ranks see).
    """
    from .journal import Journal, journal_folder
    from .results import check_name, fingerprint, load_search, merge_journal

    config.validate()
    store.require_nonempty()
    _check_label_space(store, classifier)
    criterion = Criterion(config.criterion)
    fg_ids = _ids(config.foregrounds, len(store.foregrounds), "foreground")
    pool = _ids(config.backgrounds, len(store.backgrounds), "background")
    true_all = store.foregrounds.labels[fg_ids]
    if (true_all < 0).any():
        raise AdvbgError(f"{int((true_all < 0).sum())} foregrounds have no class (label -1); they cannot be searched")
    device = distributed.local_device(torch.device(config.device) if config.device else classifier.device)
    d = distributed.setup(device)
    classifier = classifier.to(device)
    classifier.to(memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
    name = results_name or default_results_name(classifier, config)
    check_name(name)
    amp = resolve_amp(device, config.amp)
    fp = fingerprint(store, fg_ids, pool, classifier, config, amp)
    writable = store.file.mode == "r+"
    if write and not d.active:
        store.require_writable()
    journal = Journal(journal_folder(store.path, name, journal_dir)) if (write or d.active) else None
    started, t0 = _now(), time.perf_counter()

    # Rank 0 decides what is already done, so that every rank works from the same plan.
    plan = None
    if d.main:
        try:
            plan = _plan(store, name, fp, resume, journal, fg_ids, pool, true_all, config, classifier)
        except AdvbgError as e:
            plan = dict(error=str(e))
    plan = distributed.broadcast(plan, d)
    if "error" in plan:
        raise AdvbgError(plan["error"])
    if plan.get("stored"):
        return load_search(store, name)
    fg_block = plan["fg_block"]
    units = [(s, min(s + fg_block, len(fg_ids))) for s in range(0, len(fg_ids), fg_block)]
    done = plan["done"]
    todo = [u for u in units if not done[u[0]:u[1]].all()]
    mine = distributed.shard(todo, d)

    total = sum(e - s for s, e in mine) * len(pool)
    bar = _progress(total, progress and d.main and total > 0, f"search {config.mode}")
    engine = sink = None
    forwards = verified = batch_used = 0
    mem: dict[tuple[int, int], dict] = {}
    try:
        with _StopRequest(echo) as stop:
            if mine:
                engine = _Engine(store, classifier, criterion, config, device, pool, echo)
                sink = journal.writer(d.rank) if journal else None
            for n_done, (s, e) in enumerate(mine, 1):
                ids = fg_ids[s:e]
                cands = ([np.asarray(c, np.int64) for c in config.candidates(ids)]
                         if config.candidates else None)
                vals, outcome = engine.run_unit(ids, cands, bar.update if not engine.stop else _ignore)
                if engine.stop:
                    bar.update((e - s) * len(pool))
                if sink:
                    rec = dict(vals, start=np.int64(s), stop=np.int64(e))
                    if outcome is not None:
                        rec["outcome"] = outcome
                    sink.append(rec)
                else:
                    mem[(s, e)] = vals
                if on_unit:
                    on_unit(int(s))
                if stop.requested and n_done < len(mine):
                    left = len(mine) - n_done
                    echo(f"advbg: stopped with {left} unit(s) of this process left; continue with --resume")
                    raise KeyboardInterrupt
    finally:
        bar.close()
        if sink:
            sink.close()
        if engine:
            forwards, verified, batch_used = engine.forwards, engine.verified, engine.batch.size
            engine.close()
    forwards = distributed.sum_int(forwards, d)
    verified = distributed.sum_int(verified, d)
    distributed.barrier(d)          # every unit of every rank is committed

    v = _assemble(len(fg_ids), journal, mem)
    run = RunRecord(__version__, classifier.config.to_dict(), str(store.path), store.digest(), repr(criterion),
                    config.mode, config.prune, config.to_dict(), str(device), started,
                    time.perf_counter() - t0, forwards, batch_used, d.world, amp, verified,
                    len(units) - len(todo))
    pending = None
    distributed.barrier(d)          # every rank has read the journal
    if journal and d.main:
        journal.write_run(asdict(run))
        if write and writable:
            merge_journal(store, journal, name)
        elif write:
            pending = str(journal.folder)
        else:
            journal.remove()
    pending = distributed.broadcast(pending, d)
    return SearchResult(run=run, fg_id=fg_ids, true_class=true_all, class_names=tuple(store.class_names),
                        results_name=name if write else None, journal=pending, **v)


def _plan(store: Store, name: str, fp: str, resume: bool, journal, fg_ids, pool, true_all, config, classifier) -> dict:
    """Rank 0: {'stored': True} when finished results are in the store already, else the unit size and the
    rows already committed (``done``), creating a fresh journal when nothing is resumed."""
    from .results import group_attrs

    n = len(fg_ids)
    g = store.results.get(name)
    jfp = journal.fingerprint() if journal is not None else None
    if resume and jfp == fp:  # an interrupted run (newer than any stored group): continue it
        return dict(fg_block=int(journal.meta()["attrs"]["fg_block"]), done=journal.done_rows(n))
    if resume and g is not None and g.attrs.get("complete") and g.attrs.get("fingerprint") == fp:
        return dict(stored=True)
    if journal is None:
        return dict(fg_block=config.fg_block, done=np.zeros(n, bool))
    if resume and (jfp is not None or (g is not None and g.attrs.get("fingerprint") != fp)):
        raise AdvbgError(f"results {name!r} of {store.path} come from a different run (model, store, criterion, "
                         f"mode, precision or selection differ); resume needs the same settings, or drop --resume")
    attrs = dict(group=group_attrs(classifier, config), record_outcomes=config.record_outcomes,
                 fg_block=config.fg_block, store_digest=store.digest())
    journal.create(fp, dict(fg_id=fg_ids, bg_pool=pool, true_class=true_all), attrs)
    return dict(fg_block=config.fg_block, done=np.zeros(n, bool))


def _assemble(n: int, journal, mem: dict) -> dict[str, np.ndarray]:
    v = {k: np.full(n, np.nan if k == "worst_margin" else -1, np.float64 if k == "worst_margin" else np.int64)
         for k in FIELDS}
    have = np.zeros(n, bool)
    recs = journal.records(("start", "stop") + FIELDS) if journal else (
        dict(vals, start=s, stop=e) for (s, e), vals in mem.items())
    for r in recs:
        s, e = int(r["start"]), int(r["stop"])
        for k in FIELDS:
            v[k][s:e] = r[k]
        have[s:e] = True
    if not have.all():
        where = f" in {journal.folder}" if journal else ""
        raise AdvbgError(f"{int((~have).sum())} foregrounds have no committed result{where} (under torchrun on "
                         f"several nodes the journal must be on a filesystem every node sees: --journal-dir); "
                         f"rerun with --resume")
    return v


def _ids(ids, n: int, what: str) -> np.ndarray:
    if ids is None:
        return np.arange(n, dtype=np.int64)
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size == 0:
        raise AdvbgError(f"the {what} selection is empty")
    if (arr < 0).any() or (arr >= n).any():
        raise AdvbgError(f"{what} ids must be in 0..{n - 1}")
    return arr


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="comp", unit_scale=True, desc=desc, dynamic_ncols=True)


def summary_json(result: SearchResult) -> str:
    return json.dumps(result.summary(), indent=2, default=_json_default)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def iter_rows(result: SearchResult) -> Iterator[ForegroundResult]:
    return (result[k] for k in range(len(result)))


def _ignore(_n: int) -> None:
    pass
