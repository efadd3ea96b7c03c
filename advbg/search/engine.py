"""The search engine: one unit of foregrounds against the background pool, on one device, tensors in, rows out.

It never opens the store: the runner hands it a unit's foregrounds as uint8 tensors on the device and a pool
object that yields the backgrounds (resident or streamed in blocks, ``advbg.search.pool``), and the classifier,
whose own forward (``Classifier.preprocess`` -> ``normalize_``) makes the model input. Every pair (foreground a, trial position p) has a flat index k = a * L + p;
a batch is a tensor of such k, from which the device derives the foreground, background and labels
arithmetically, composites, and runs the model (``_Step``: autocast, channels_last, optional torch.compile).
Margins, predictions and decisions land in (a, p) matrices on the device and are reduced to the per-foreground
outcome once per unit (``Engine._reduce``) — the only device->host sync of an exhaustive unit. Early exit
schedules the next batch on the host (``_Scheduler``, one batch behind on CUDA) from the decisions so far.
Out-of-memory halves the batch and retries (``_Batcher``). With ``verify_close`` under low precision, decisions
within it are recomputed in fp32, and so are the pairs within it of their foreground's lowest margin
(``_verify_worst``): the rows then equal an fp32 run's. ``advbg.search`` drives units through this.
"""
from __future__ import annotations

import ctypes
import os
import sys
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np
import torch

from advbg.errors import AdvbgError
from advbg.models.classifier import Classifier
from advbg.models.precision import resolve_amp
from advbg.search.compositor import CompositeBuffers, composite_pairs, select_mask
from advbg.search.config import SearchConfig
from advbg.search.criteria import Criterion
from advbg.search.results import OUTCOME_INVALID, OUTCOME_MISSING, OUTCOME_NONE

CPU_BATCH = 64              # CPU throughput is flat beyond this; larger batches only cost memory
MAX_AUTO_BATCH = 1024       # GPUs gain little past this for ImageNet-sized models
CPU_BUDGET_GB = 2.0         # default host memory for a CPU search's resident pool and batches
_NEVER = np.iinfo(np.int64).max


class Backgrounds(Protocol):
    """What the engine needs of a background pool (``advbg.search.pool.BackgroundPool``): the pool's bg_ids and
    classes (on the device), and its images as uint8 blocks (j0, j1, (j1 - j0, H, W, 3) tensor) in pool order."""

    ids: np.ndarray
    labels: torch.Tensor

    def __len__(self) -> int: ...

    def blocks(self) -> Iterator[tuple[int, int, torch.Tensor]]: ...


# --------------------------------------------------------------------------------------------- forward
_MALLOC_TUNED = False


def keep_freed_memory() -> bool:
    """CPU, glibc: keep freed memory in the process for the next forward instead of returning it to the OS.

    A forward's activations are fresh tensors of tens of MB each; glibc serves those by mmap and unmaps them on
    free, so every forward page-faults and zero-fills all of them again (270,000 faults per forward of 32
    composites through advbg/lite0; measured in benchmarks/README.md). Raising the mmap and trim thresholds
    keeps that memory for reuse: the same arithmetic, no faults, at the price of the process holding its peak
    heap until it exits. A process-wide setting, so it is opt-in: ``ADVBG_KEEP_FREED_MEMORY=1`` (the `advbg`
    command sets it unless the environment says otherwise; a notebook using the API opts in itself). Once per
    process. True when applied."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED or os.environ.get("ADVBG_KEEP_FREED_MEMORY", "0") != "1" or not sys.platform.startswith("linux"):
        return _MALLOC_TUNED
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        _MALLOC_TUNED = bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 2**31 - 1)
                             and libc.mallopt(m_top_pad, 64 << 20))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        pass
    return _MALLOC_TUNED


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
        # CPU, eager: composites made in reused buffers (same values, no fresh batch tensors)
        self._buffers = CompositeBuffers(config.channels_last) if device.type == "cpu" else None
        self._fn = self._eager
        if config.compile:
            mode = "reduce-overhead" if (config.cuda_graphs and device.type == "cuda") else "default"
            self._fn = torch.compile(self._logits, mode=mode, dynamic=False)

    def _logits(self, fg, sel, bg, fi, bj, dtype: torch.dtype, buffers: CompositeBuffers | None = None):
        x = composite_pairs(fg, sel, bg, fi, bj, dtype, buffers)
        if not self.channels_last:
            x = x.contiguous()
        # The composite is ours: the classifier may normalise it in place (no float temporary per batch).
        return self.classifier(x, inplace=True)

    def _eager(self, fg, sel, bg, fi, bj, dtype: torch.dtype) -> torch.Tensor:
        return self._logits(fg, sel, bg, fi, bj, dtype, self._buffers)

    def __call__(self, fg, mask, bg, fi, bj, true, bg_label, fp32: bool = False, eager: bool = False):
        fn = self._eager if (fp32 or eager) else self._fn
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
        return margin, pred, fooled, close, logits.argmax(1)


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
        free, _ = torch.cuda.mem_get_info(device)          # the driver's view: our cached blocks count as used
        return int(0.9 * (free + torch.cuda.memory_reserved(device)))
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


# --------------------------------------------------------------------------------------------- units
@dataclass
class _UnitState:
    """A unit on the device: inputs and the (foreground, trial position) matrices of results."""

    n: int
    L: int                         # trial positions per foreground (pool size, or longest candidate list)
    BJ: np.ndarray | None          # (n, L) pool position of each trial, -1 = none (None: position = trial)
    BJd: torch.Tensor | None
    pool: "Backgrounds"            # the background pool the unit is tried on
    fg: torch.Tensor
    mask: torch.Tensor             # (n, H, W, 3) 0/255 select masks
    true: torch.Tensor
    M: torch.Tensor                # (n, L) float32 margin, NaN until evaluated
    P: torch.Tensor                # (n, L) int16 mapped prediction
    R: torch.Tensor                # (n, L) int32 the model's own top-1 output (raw, before the label map)
    Fo: torch.Tensor               # (n, L) bool fooled
    E: torch.Tensor                # (n, L) bool evaluated
    C: torch.Tensor | None         # (n, L) closeness of the decision, +inf once verified (verify_close only)
    first: np.ndarray              # (n,) earliest fooling trial position known (early exit)


class Engine:
    """Runs units of one search on one device; see the module docstring."""

    def __init__(self, classifier: Classifier, criterion: Criterion, config: SearchConfig, device: torch.device,
                 echo: Callable[[str], None]):
        self.config, self.device = config, device
        self.step = _Step(classifier, criterion, device, config)
        self.budget = budget_bytes(device, config.memory_gb)
        self._fraction_set = False
        if device.type == "cuda" and config.memory_gb is not None:
            # Make the budget binding: allocations beyond it raise OOM, which the batcher answers by halving.
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, self.budget / total), device)
            self._fraction_set = True
        if device.type == "cpu":
            keep_freed_memory()
        self.stop = config.mode == "early-exit"
        self.lag = 1 if (self.stop and device.type == "cuda") else 0
        self.verify = config.verify_close if self.step.low_precision else 0.0
        size = config.batch_size or (CPU_BATCH if device.type != "cuda" else 0)
        # Static shapes on CUDA (a short batch is padded): one compiled graph / cuDNN plan, CUDA graphs possible.
        self.batch = _Batcher(self.step, size, pad=config.compile or device.type == "cuda", echo=echo)
        self.forwards = 0
        self.verified = 0

    def fall_back_to_fp32(self) -> None:
        """Run every later pair in fp32. The answers do not change (bf16 + verify gives fp32's rows already): only
        the cost of the re-checks goes."""
        self.step.low_precision = False
        self.verify = 0.0

    def close(self) -> None:
        if self._fraction_set:
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)

    # -- one unit ------------------------------------------------------------------------------------------
    def run_unit(self, fg: torch.Tensor, mask: torch.Tensor, true: torch.Tensor, pool: "Backgrounds",
                 cands: list[np.ndarray] | None,
                 on_batch: Callable[[int], None]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """One unit: foregrounds ``fg`` (n, H, W, 3) uint8 with their masks (n, H, W) 0/1 (or ``select_mask``s) and
        classes ``true`` (n,), on the device, against ``pool`` (each foreground's ``cands`` pool positions in trial
        order; None: the whole pool). Returns the rows (``advbg.search.results.COLUMNS``) and the (n, B) outcome
        rows (None unless recorded)."""
        u = self._prepare(fg, mask, true, pool, cands)
        for j0, j1, blk in pool.blocks():
            if self.batch.size == 0:  # automatic on CUDA: sized once, on the first block
                self._size_batch(u, blk, j0)
            if self.stop:
                self._early_exit(u, j0, j1, blk, on_batch)
            else:
                self._exhaustive(u, j0, j1, blk, on_batch)
            if self.verify:
                self._verify_worst(u, j0, j1, blk)
        while self.verify and self._worst_pending(u).any():   # only where a later block moved the window back
            for j0, j1, blk in pool.blocks():
                self._verify_worst(u, j0, j1, blk)
        return self._reduce(u)

    # -- fp32 re-check of each foreground's worst background (verify_close) ---------------------------------
    def _worst_pending(self, u: _UnitState) -> torch.Tensor:
        """(n, L) pairs not yet recomputed in fp32 whose margin lies within ``verify`` of their foreground's lowest
        counted margin: one of them may be fp32's worst background (margins stray at most the bf16 error, which
        the tolerance covers twice over), so their margins and predictions must be fp32's."""
        valid = u.E & torch.isfinite(u.M)
        counted = valid
        if self.stop:   # as _reduce: pairs after the first fooling trial do not count
            fool = valid & u.Fo
            has = fool.any(1, keepdim=True)
            first = fool.to(torch.uint8).argmax(1, keepdim=True)
            counted = valid & (~has | (torch.arange(u.L, device=self.device)[None, :] <= first))
        low = torch.where(counted, u.M, torch.full_like(u.M, float("inf"))).amin(1, keepdim=True)
        return counted & torch.isfinite(u.C) & (u.M < low + self.verify)

    def _verify_worst(self, u: _UnitState, j0: int, j1: int, blk: torch.Tensor) -> None:
        """Recompute in fp32 this block's pairs near their foreground's worst margin until none is left (an fp32
        margin above its bf16 one can bring further pairs into the window)."""
        while True:
            k = self._block_pairs(u, j0, j1)
            k = k[self._worst_pending(u).view(-1)[k]]
            if k.numel() == 0:
                return
            self._run(u, k, blk, j0, fp32=True)
            self.verified += k.numel()

    def _prepare(self, fg, mask, true, pool: "Backgrounds", cands: list[np.ndarray] | None) -> _UnitState:
        n, dev = fg.shape[0], self.device
        mask = mask if mask.dim() == 4 else select_mask(mask)
        BJ = BJd = None
        L = len(pool)
        if cands is not None:
            lens = np.array([len(c) for c in cands], np.int64)
            L = max(1, int(lens.max(initial=0)))
            BJ = np.full((n, L), -1, np.int64)
            BJ[np.arange(L)[None, :] < lens[:, None]] = np.concatenate(cands) if lens.sum() else []
            if ((BJ >= len(pool)) | (BJ < -1)).any():
                raise AdvbgError(f"candidate lists hold positions outside the pool of {len(pool)} backgrounds")
            BJd = torch.as_tensor(BJ, device=dev)
        f32 = dict(device=dev, dtype=torch.float32)
        return _UnitState(
            n, L, BJ, BJd, pool, fg, mask, true,
            M=torch.full((n, L), float("nan"), **f32), P=torch.full((n, L), -2, dtype=torch.int16, device=dev),
            R=torch.full((n, L), -1, dtype=torch.int32, device=dev),
            Fo=torch.zeros((n, L), dtype=torch.bool, device=dev), E=torch.zeros((n, L), dtype=torch.bool, device=dev),
            C=torch.full((n, L), float("inf"), **f32) if self.verify else None,
            first=np.full(n, _NEVER, np.int64))

    def _decode(self, u: _UnitState, k: torch.Tensor, j0: int):
        """Flat pair indices -> (fg row, bg row within the block, true label, bg label)."""
        a = torch.div(k, u.L, rounding_mode="floor")
        p = k - a * u.L
        bj = p if u.BJd is None else u.BJd.view(-1)[k]
        return a, bj - j0, u.true[a], u.pool.labels[bj]

    def _run(self, u: _UnitState, k: torch.Tensor, blk: torch.Tensor, j0: int, fp32: bool = False):
        a, bj, true, bgl = self._decode(u, k, j0)
        margin, pred, fooled, close, raw = self.batch(u.fg, u.mask, blk, a, bj, true, bgl, fp32=fp32)
        u.M.view(-1).index_copy_(0, k, margin)
        u.P.view(-1).index_copy_(0, k, pred.to(torch.int16))
        u.R.view(-1).index_copy_(0, k, raw.to(torch.int32))
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
        wraw = u.R.gather(1, wpos[:, None]).squeeze(1).to(torch.int64)
        out = dict(n_evaluated=counted.sum(1), n_invalid=(counted & ~finite).sum(1),
                   n_fooling=(counted & fool).sum(1), first=first, wpos=torch.where(hasw, wpos, -1),
                   wmargin=torch.where(hasw, wmargin.double(), float("nan")), wpred=torch.where(hasw, wpred, -1),
                   wraw=torch.where(hasw, wraw, -1))
        outcome = None
        if self.config.record_outcomes:
            mapped = torch.where(P < 0, OUTCOME_NONE, P)
            # a NaN/inf composite has no prediction: its argmax must not be read later as one (fooled or not)
            mapped = torch.where(finite, mapped, OUTCOME_INVALID).to(torch.uint8)
            if u.BJ is None:
                outcome = torch.where(counted, mapped, torch.full_like(mapped, OUTCOME_MISSING))
            else:
                outcome = torch.full((u.n, len(u.pool)), OUTCOME_MISSING, dtype=torch.uint8, device=self.device)
                rows = torch.arange(u.n, device=self.device)[:, None].expand_as(u.BJd)
                outcome[rows[counted], u.BJd[counted]] = mapped[counted]
        h = {k: v.cpu().numpy() for k, v in out.items()}          # the unit's one device->host sync
        bg = u.pool.ids

        def bg_id(pos: np.ndarray) -> np.ndarray:
            ok = pos >= 0
            res = np.full(len(pos), -1, np.int64)
            j = pos[ok] if u.BJ is None else u.BJ[np.flatnonzero(ok), pos[ok]]
            res[ok] = bg[j]
            return res

        vals = dict(worst_bg=bg_id(h["wpos"]), worst_margin=h["wmargin"].astype(np.float64),
                    worst_pred=h["wpred"].astype(np.int64), first_fooling_bg=bg_id(h["first"]),
                    n_fooling=h["n_fooling"].astype(np.int64), n_evaluated=h["n_evaluated"].astype(np.int64),
                    n_invalid=h["n_invalid"].astype(np.int64), worst_raw_top1=h["wraw"].astype(np.int64))
        return vals, (outcome.cpu().numpy() if outcome is not None else None)
