"""Worst-case background search: every foreground against a pool of backgrounds, in large batches.

``search(store, classifier, SearchConfig(...))`` does the bookkeeping (validation, batching, timing, resumable
writing, result assembly). What differs between modes is only which backgrounds each foreground is tried on,
in which order, and whether it stops at its first fooling background:
  - exhaustive: every background of the pool (exact worst case; also records the fg x bg outcome matrix),
  - early-exit: stops a foreground at its first fooling background (fooling rate and first fooling bg only),
  - pruned: a candidate list per foreground from ``advbg.index`` (``SearchConfig.candidates``).
Batches mix foregrounds freely (one forward = ``batch_size`` composites), so early exit never starves a batch.
Progress is committed to the store one unit of ``fg_block`` foregrounds at a time; ``resume=True`` skips units
already done.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterator

import numpy as np
import torch

from . import __version__
from .compositor import composite_pairs, to_device_u8
from .criteria import Criterion
from .errors import AdvbgError
from .models import Classifier
from .store import Store, _now

OUTCOME_NONE = 254          # mapped prediction "none" (unmapped top-1)
OUTCOME_MISSING = 255       # pair not evaluated (early exit, pruning)
MODES = ("exhaustive", "early-exit")

# fg_ids (unit) -> one array of bg pool positions per foreground, in the order to try them.
CandidateFn = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class SearchConfig:
    """How a search runs. Saved with its results."""

    criterion: str = "any"
    mode: str = "exhaustive"
    batch_size: int = 64           # composites per forward pass; CPU saturates early, GPUs want 256-1024
    fg_block: int = 32             # foregrounds per committed unit: the most work a crash can lose
    amp: str = "auto"              # auto = bf16 on CUDA, fp32 on CPU (CPU bf16 convs are slower and less exact)
    device: str | None = None      # None = the classifier's device
    foregrounds: tuple[int, ...] | None = None   # fg_ids to search (None = all)
    backgrounds: tuple[int, ...] | None = None   # the background pool as bg_ids (None = all)
    record_outcomes: bool = True   # keep the fg x bg matrix of mapped predictions (for `universal`)
    prune: str | None = None       # description of the candidate rule when `candidates` is set
    candidates: CandidateFn | None = field(default=None, compare=False, repr=False)

    def validate(self) -> None:
        Criterion(self.criterion)
        if self.mode not in MODES:
            raise AdvbgError(f"unknown mode {self.mode!r}; use one of: {', '.join(MODES)}")
        if self.batch_size < 1:
            raise AdvbgError(f"batch size must be at least 1 (got {self.batch_size})")
        if self.fg_block < 1:
            raise AdvbgError(f"fg_block must be at least 1 (got {self.fg_block})")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise AdvbgError(f"amp must be auto, off, bf16 or fp16 (got {self.amp!r})")

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

    @property
    def composites_per_s(self) -> float:
        return self.forwards / self.seconds if self.seconds > 0 else float("nan")


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


# --------------------------------------------------------------------------------------------- engine
class _Unit:
    """Running per-foreground state of one unit: the accumulators a naive loop would keep."""

    def __init__(self, fg_ids: np.ndarray, candidates: list[np.ndarray], stop_on_fool: bool):
        n = len(fg_ids)
        self.fg_ids, self.candidates, self.stop = fg_ids, candidates, stop_on_fool
        self.cursor = np.zeros(n, np.int64)
        self.worst_margin = np.full(n, np.inf, np.float64)
        self.worst_pos = np.full(n, -1, np.int64)
        self.worst_pred = np.full(n, -1, np.int64)
        self.first_fool_pos = np.full(n, -1, np.int64)
        self.n_fooling = np.zeros(n, np.int64)
        self.n_evaluated = np.zeros(n, np.int64)
        self.n_invalid = np.zeros(n, np.int64)

    def active(self) -> np.ndarray:
        left = self.cursor < np.array([len(c) for c in self.candidates])
        if self.stop:
            left &= self.first_fool_pos < 0
        return np.flatnonzero(left)

    def next_batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(local fg index, candidate position) pairs for the next forward, in trial order per foreground."""
        act = self.active()
        if act.size == 0:
            return None
        # Early exit: give each active foreground a share so one fooled foreground wastes little of a batch.
        share = max(1, -(-batch_size // act.size)) if self.stop else batch_size
        ls, ps, room = [], [], batch_size
        for a in act:
            take = min(share, room, len(self.candidates[a]) - self.cursor[a])
            ls.append(np.full(take, a)), ps.append(np.arange(self.cursor[a], self.cursor[a] + take))
            self.cursor[a] += take
            room -= take
            if room == 0:
                break
        return np.concatenate(ls), np.concatenate(ps)

    def update(self, loc: np.ndarray, pos: np.ndarray, margin: np.ndarray, pred: np.ndarray,
               fooled: np.ndarray) -> np.ndarray:
        """Fold one batch's outcomes in; returns the mask of pairs that count (early exit drops later ones)."""
        valid = np.isfinite(margin)
        np.add.at(self.n_invalid, loc[~valid], 1)
        fooled = fooled & valid
        keep = np.ones(len(loc), bool)
        if self.stop:  # only pairs up to a foreground's first fooling background count, as in a plain loop
            first = np.full(len(self.fg_ids), np.iinfo(np.int64).max)
            np.minimum.at(first, loc[fooled], pos[fooled])
            keep = pos <= first[loc]
        use = keep & valid
        np.add.at(self.n_evaluated, loc[keep], 1)
        np.add.at(self.n_fooling, loc[use & fooled], 1)
        fl = use & fooled
        if fl.any():
            first = np.full(len(self.fg_ids), np.iinfo(np.int64).max)
            np.minimum.at(first, loc[fl], pos[fl])
            new = (self.first_fool_pos < 0) & (first < np.iinfo(np.int64).max)
            self.first_fool_pos[new] = first[new]
        idx = np.flatnonzero(use)
        if idx.size:
            # Lowest margin per foreground; ties go to the earliest position (strict < in a plain loop).
            order = idx[np.lexsort((pos[idx], margin[idx], loc[idx]))]
            lead = np.ones(order.size, bool)
            lead[1:] = loc[order][1:] != loc[order][:-1]
            best = order[lead]
            better = margin[best] < self.worst_margin[loc[best]]
            b = best[better]
            self.worst_margin[loc[b]] = margin[b]
            self.worst_pos[loc[b]] = pos[b]
            self.worst_pred[loc[b]] = pred[b]
        return keep


def _autocast(device: torch.device, amp: str):
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "off"
    if amp == "off":
        return contextlib.nullcontext(), torch.float32
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype), dtype if device.type == "cuda" else torch.float32


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


def search(store: Store, classifier: Classifier, config: SearchConfig = SearchConfig(), *,
           results_name: str | None = None, write: bool = True, resume: bool = False,
           progress: bool = True, on_unit: Callable[[int], None] | None = None) -> SearchResult:
    """Find each foreground's worst-case background; see the module docstring."""
    config.validate()
    store.require_nonempty()
    _check_label_space(store, classifier)
    criterion = Criterion(config.criterion)
    fg_ids = _ids(config.foregrounds, len(store.foregrounds), "foreground")
    pool = _ids(config.backgrounds, len(store.backgrounds), "background")
    device = torch.device(config.device) if config.device else classifier.device
    classifier = classifier.to(device)
    name = results_name or default_results_name(classifier, config)
    writer = None
    if write:
        from .results import SearchWriter

        writer = SearchWriter(store, name, fg_ids, pool, classifier, config, resume=resume)

    started, t0 = _now(), time.perf_counter()
    bg_u8 = to_device_u8(store.backgrounds.read(pool), device)                      # (B, H, W, 3) resident
    bg_label = torch.as_tensor(store.backgrounds.labels[pool], device=device)
    true_all = store.foregrounds.labels[fg_ids]
    if (true_all < 0).any():
        raise AdvbgError(f"{int((true_all < 0).sum())} foregrounds have no class (label -1); they cannot be searched")
    autocast, comp_dtype = _autocast(device, config.amp)
    full = [np.arange(len(pool))]
    forwards = 0
    units = [np.arange(s, min(s + config.fg_block, len(fg_ids))) for s in range(0, len(fg_ids), config.fg_block)]
    acc = _Accumulated(len(fg_ids))
    if writer:
        for rows in writer.done_units(units):
            acc.load(rows, writer.read(rows))
    todo = [u for u in units if not acc.have(u)]
    total = sum(len(u) for u in todo) * len(pool)
    bar = _progress(total, progress and total > 0, f"search {config.mode}")
    try:
        for rows in todo:
            ids = fg_ids[rows]
            cands = config.candidates(ids) if config.candidates else full * len(ids)
            unit = _Unit(ids, [np.asarray(c, np.int64) for c in cands], config.mode == "early-exit")
            fg_u8 = to_device_u8(store.foregrounds.read(ids), device)
            mask_u8 = to_device_u8(store.foregrounds.read_masks(ids), device)
            true = torch.as_tensor(true_all[rows], device=device)
            outcome = (np.full((len(ids), len(pool)), OUTCOME_MISSING, np.uint8)
                       if config.record_outcomes else None)
            for loc, pos in iter(lambda: unit.next_batch(config.batch_size), None):
                bj_np = np.fromiter((unit.candidates[a][p] for a, p in zip(loc, pos)), np.int64, len(loc))
                fi, bj = torch.as_tensor(loc, device=device), torch.as_tensor(bj_np, device=device)
                with torch.inference_mode(), autocast:
                    logits = classifier(composite_pairs(fg_u8, mask_u8, bg_u8, fi, bj, comp_dtype)).float()
                    pred = classifier.label_map.predict(logits)
                    margin = classifier.label_map.margin(logits, true[fi])
                    fooled = criterion.fooled(pred, true[fi], bg_label[bj])
                keep = unit.update(loc, pos, margin.cpu().numpy(), pred.cpu().numpy(), fooled.cpu().numpy())
                forwards += len(loc)
                if outcome is not None:
                    p = pred.cpu().numpy()
                    outcome[loc[keep], bj_np[keep]] = np.where(p[keep] < 0, OUTCOME_NONE, p[keep])
                bar.update(len(loc) if not unit.stop else 0)
            if unit.stop:
                bar.update(len(ids) * len(pool))
            vals = acc.store(rows, unit, pool)
            if writer:
                writer.commit(rows, vals, outcome)
            if on_unit:
                on_unit(int(rows[0]))
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    run = RunRecord(__version__, classifier.config.to_dict(), str(store.path), store.digest(), repr(criterion),
                    config.mode, config.prune, config.to_dict(), str(device), started, seconds, forwards)
    result = acc.result(run, fg_ids, true_all, store.class_names, name if write else None)
    if writer:
        writer.finish(run)
    return result


def _ids(ids, n: int, what: str) -> np.ndarray:
    if ids is None:
        return np.arange(n, dtype=np.int64)
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size == 0:
        raise AdvbgError(f"the {what} selection is empty")
    if (arr < 0).any() or (arr >= n).any():
        raise AdvbgError(f"{what} ids must be in 0..{n - 1}")
    return arr


FIELDS = ("worst_bg", "worst_margin", "worst_pred", "first_fooling_bg", "n_fooling", "n_evaluated", "n_invalid")


class _Accumulated:
    """Per-foreground outcome arrays for the whole run, filled unit by unit."""

    def __init__(self, n: int):
        self.v = {k: np.full(n, np.nan if k == "worst_margin" else -1,
                             np.float64 if k == "worst_margin" else np.int64) for k in FIELDS}
        self.done = np.zeros(n, bool)

    def have(self, rows: np.ndarray) -> bool:
        return bool(self.done[rows].all())

    def load(self, rows: np.ndarray, vals: dict[str, np.ndarray]) -> None:
        for k in FIELDS:
            self.v[k][rows] = vals[k]
        self.done[rows] = True

    def store(self, rows: np.ndarray, u: _Unit, pool: np.ndarray) -> dict[str, np.ndarray]:
        def bg_at(pos: np.ndarray) -> np.ndarray:
            out = np.full(len(pos), -1, np.int64)
            ok = pos >= 0
            out[ok] = [pool[u.candidates[a][p]] for a, p in zip(np.flatnonzero(ok), pos[ok])]
            return out

        vals = dict(worst_bg=bg_at(u.worst_pos), worst_margin=np.where(u.worst_pos >= 0, u.worst_margin, np.nan),
                    worst_pred=u.worst_pred, first_fooling_bg=bg_at(u.first_fool_pos), n_fooling=u.n_fooling,
                    n_evaluated=u.n_evaluated, n_invalid=u.n_invalid)
        self.load(rows, vals)
        return vals

    def result(self, run: RunRecord, fg_ids, true, class_names, name) -> SearchResult:
        return SearchResult(run=run, fg_id=fg_ids, true_class=true, class_names=tuple(class_names),
                            results_name=name, **{k: self.v[k].copy() for k in FIELDS})


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
