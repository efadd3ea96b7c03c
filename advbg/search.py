"""Worst-case background search: every foreground against a pool of backgrounds, in large batches.

``search(store, classifier, SearchConfig(...))`` does the bookkeeping — validation, units of ``fg_block``
foregrounds, the resumable journal, sharding over torchrun ranks, result assembly — and hands each unit to
``advbg.engine.Engine``, which does the device work. Modes differ only in which backgrounds each foreground is
tried on, in which order, and whether it stops at its first fooling background:
  - exhaustive: every background of the pool (exact worst case; also records the fg x bg outcome matrix),
  - early-exit: stops a foreground at its first fooling background (fooling rate and first fooling bg only),
  - pruned: a candidate list per foreground from ``advbg.index`` (``SearchConfig.candidates``).
Results never depend on how pairs were batched: every pair up to a foreground's first fooling one is evaluated,
later ones are ignored, ties go to the earliest trial position — exactly what a plain loop computes.

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
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Iterator

import numpy as np
import torch

from . import __version__, distributed
from .criteria import Criterion
from .engine import (OUTCOME_MISSING, OUTCOME_NONE, Engine, auto_batch_size, budget_bytes,  # noqa: F401
                     resolve_amp)
from .errors import AdvbgError
from .models import Classifier
from .store import Store, _now

MODES = ("exhaustive", "early-exit")
AMPS = ("auto", "off", "bf16", "fp16")

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
                engine = Engine(store, classifier, criterion, config, device, pool, echo)
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
