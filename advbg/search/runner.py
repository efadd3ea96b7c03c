"""Worst-case background search: every foreground against a pool of backgrounds, in large batches.

``search(store, classifier, SearchConfig(...))`` is a straight loop: check the selection, open the results sink
(``advbg.search.results``: it plans the units, keeps the resumable journal and writes the results file), then for
each of this process's units read its foregrounds (``advbg.search.pool``), let the engine
(``advbg.search.engine``) run it on the device and commit its rows to the sink, and finally ``sink.finish``.
Modes differ only in which backgrounds each foreground is tried on, in which order, and whether it stops at its
first fooling background:
  - exhaustive: every background of the pool (exact worst case; also records the fg x bg outcome matrix),
  - early-exit: stops a foreground at its first fooling background (fooling rate and first fooling bg only),
  - pruned: a candidate list per foreground (``candidates``, made by ``advbg.search.strategies``).
Results never depend on how pairs were batched: every pair up to a foreground's first fooling one is evaluated,
later ones are ignored, ties go to the earliest trial position — exactly what a plain loop computes.

A run killed at any point resumes when run again (``resume=True``, the default), redoing at most the units in
flight; the same run's complete results are reused (``recompute=True`` computes them again). SIGINT/SIGTERM stop
cleanly after the current unit. Under ``torchrun`` units are shared round-robin by rank (``distributed.Ranks``);
rank 0 writes the results file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from advbg._version import __version__
from advbg.data.sidecar import require_sidecar_folder
from advbg.data.store import Store
from advbg.data.verify import check_labels
from advbg.errors import AdvbgError
from advbg.files import check_file_name, now
from advbg.models.classifier import Classifier, results_tag
from advbg.models.precision import FORCE_ENV, PrecisionChoice, choose_precision, resolve_amp
from advbg.progress import progress as progress_bar
from advbg.search import distributed
from advbg.search.config import Candidates, SearchConfig
from advbg.search.compositor import composite_pairs
from advbg.search.criteria import Criterion
from advbg.search.engine import Engine
from advbg.search.pool import StoreReader
from advbg.search.results import ResultsSink, RunId, RunRecord, SearchResult, check_name, fingerprint, group_attrs


# --------------------------------------------------------------------------------------------- driver
def default_results_name(classifier: Classifier, config: SearchConfig) -> str:
    """``<results tag>.<criterion>.<mode>``, or for a pruned run ``<results tag>.<criterion>[.early-exit].pruned-
    <rule>-k<K>``; the results tag (models.classifier.results_tag) carries the weights' SHA-256 prefix for weights
    read from a file."""
    name = f"{results_tag(classifier.config.to_dict())}.{config.criterion}"
    if not config.prune:
        return f"{name}.{config.mode}"
    mode = "" if config.mode == "exhaustive" else f".{config.mode}"   # a pruned run is not exhaustive: never say so
    return f"{name}{mode}.pruned-{config.prune}"


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


@dataclass(frozen=True)
class _Search:
    """One search's inputs, checked: what the loop needs besides the sink."""

    store: Store
    classifier: Classifier
    config: SearchConfig
    device: torch.device
    fg_ids: np.ndarray
    pool: np.ndarray
    candidates: Candidates | None
    echo: Callable[[str], None]
    precision: dict | None = None      # the record of --amp auto's choice (the bf16 guard adds to it)


def search(store: Store, classifier: Classifier, config: SearchConfig = SearchConfig(), *,
           candidates: Candidates | None = None, results_name: str | None = None, write: bool = True,
           resume: bool = True, recompute: bool = False, progress: bool = True,
           on_unit: Callable[[int], None] | None = None, journal_dir: str | None = None,
           echo: Callable[[str], None] = _stderr) -> SearchResult:
    """Find each foreground's worst-case background; see the module docstring.

    ``write``: commit units to a journal and the finished result to the store's results file ``name`` (store
    opened 'r+'; under torchrun every rank opens it read-only and rank 0 takes the lock to write the file).
    Reruns (``advbg.search.results.sink``): the same run's complete results are reused without a forward pass
    unless ``recompute`` (which replaces the file only once the new run is complete); an interrupted run of the
    same settings continues unless ``resume`` is False (its units are then dropped). ``journal_dir``: where
    journals live (default: beside the store; under torchrun a folder all ranks see). ``candidates``: which
    backgrounds each foreground is tried on (None: the whole pool; ``config.prune`` names the rule). The
    caller's classifier is left on its device and memory format.
    """
    name, run_id, device, amp = plan_run(store, classifier, config, results_name, journal_dir, write)
    ranks = distributed.setup(device)
    started, t0 = now(), time.perf_counter()
    with _on_device(classifier, device, config.channels_last):
        sink = ResultsSink.open(store, name, run_id, ranks, write=write, resume=resume, recompute=recompute,
                                journal_dir=journal_dir, echo=echo if ranks.main else None)
        if sink.stored:
            stored = sink.stored_result()       # a checked read: a damaged file is refused, never reused
            if ranks.main:
                echo(f"advbg: reusing the complete results {name!r} of this store with the same model, criterion, "
                     f"mode and settings (no composite evaluated; --recompute computes them again)")
            return stored
        todo = sink.todo()
        fg_ids, pool = run_id.fg_id, run_id.bg_pool
        run_config, precision = _precision(store, classifier, config, device, fg_ids, pool, candidates)
        if precision is not None and precision.get("timings") and ranks.main:   # a run too small to calibrate
            echo(f"advbg: --amp auto: {precision['reason']}")                  # stays fp32 quietly (recorded)
        amp = resolve_amp(device, run_config.amp)
        run = _Search(store, classifier, run_config, device, fg_ids, pool, candidates, echo, precision)
        forwards, verified, batch = _run_units(run, sink, ranks.shard(todo), progress and ranks.main, on_unit)
        record = RunRecord(__version__, classifier.config.to_dict(), str(store.path), store.digest(),
                           repr(Criterion(config.criterion)), config.mode, config.prune, config.to_dict(),
                           str(device), started, time.perf_counter() - t0, ranks.sum_int(forwards), batch,
                           ranks.world, amp, ranks.sum_int(verified), len(sink.units()) - len(todo), precision)
        return sink.finish(record)


CALIBRATION_BATCH = 32      # composites per calibration forward (at most; fewer where the run has fewer)
CALIBRATION_PAYS = 10       # calibrate only for runs of at least this x the calibration's own composites


def _precision(store: Store, classifier: Classifier, config: SearchConfig, device: torch.device,
               fg_ids: np.ndarray, pool: np.ndarray,
               candidates: Candidates | None) -> tuple[SearchConfig, dict | None]:
    """The config the engine runs (``--amp auto`` on a CPU decided by ``choose_precision`` on a batch of this
    search's composites; under bf16 the calibrated ``verify_close`` unless one was given) and the record of the
    choice (None where nothing was chosen: an explicit --amp, or CUDA)."""
    if config.amp != "auto" or device.type != "cpu":
        return config, None
    pairs = (sum(len(candidates.lists.get(int(f), ())) for f in fg_ids) if candidates is not None
             else len(fg_ids) * len(pool))
    n = max(1, min(CALIBRATION_BATCH, config.batch_size or CALIBRATION_BATCH, pairs))
    cost = 8 * n                                  # warm-up + 3 timed rounds, of each precision
    if pairs < CALIBRATION_PAYS * cost and not os.environ.get(FORCE_ENV):
        choice = PrecisionChoice("off", f"fp32: this run's {pairs} composites are too few for the calibration "
                                        f"(about {cost} composites of forwards) to pay off", 0.0, None)
    else:
        choice = choose_precision(classifier, _calibration_batch(store, fg_ids, pool, n),
                                  channels_last=config.channels_last)
    verify = (config.verify_close or choice.tolerance) if choice.amp == "bf16" else config.verify_close
    record = dict(choice.to_record(), verify_close=verify, calibration_batch=n)
    return dataclasses.replace(config, amp=choice.amp, verify_close=verify), record


def _keep_bf16_worth_it(run: _Search, engine: Engine) -> None:
    """--amp auto chose bf16 on the calibration's forward times, which cannot know how many pairs will need the fp32
    re-check. After each unit: when bf16 + the re-checks measured so far cost at least an fp32 forward per pair
    (t_bf16 + share * t_fp32 >= t_fp32), the rest runs in fp32, so auto is never slower than fp32; said on stderr
    and in the run record."""
    rec = run.precision
    if rec is None or rec.get("amp") != "bf16" or not engine.step.low_precision or engine.forwards == 0:
        return
    t = rec.get("timings") or {}
    if not (t.get("fp32") and t.get("bf16")):
        return
    t32, t16 = statistics.median(t["fp32"]), statistics.median(t["bf16"])
    share = engine.verified / engine.forwards
    if t16 + share * t32 < t32:
        return
    engine.fall_back_to_fp32()
    rec["fallback"] = (f"fp32 from here: {100 * share:.0f}% of {engine.forwards} bf16 composites needed the fp32 "
                       f"re-check, so bf16 + verify cost {(t16 + share * t32) / t32:.2f}x an fp32 forward")
    run.echo(f"advbg: --amp auto: {rec['fallback']}")


def _calibration_batch(store: Store, fg_ids: np.ndarray, pool: np.ndarray, n: int) -> torch.Tensor:
    """``n`` composites of this search's own foregrounds and backgrounds (spread over both), float in [0, 1]."""
    fi = np.unique(fg_ids[np.linspace(0, len(fg_ids) - 1, min(n, len(fg_ids))).astype(np.int64)])
    bj = np.unique(pool[np.linspace(0, len(pool) - 1, min(n, len(pool))).astype(np.int64)])
    fg = torch.from_numpy(store.foregrounds.read(fi))
    mask = torch.from_numpy(store.foregrounds.read_masks(fi))
    bg = torch.from_numpy(store.backgrounds.read(bj))
    k = torch.arange(n)
    return composite_pairs(fg, mask, bg, k % len(fi), (k * 7 + k // len(fi)) % len(bj))


def plan_run(store: Store, classifier: Classifier, config: SearchConfig, results_name: str | None = None,
             journal_dir: str | None = None, write: bool = True) -> tuple[str, RunId, torch.device, str]:
    """(results name, run identity, device, resolved amp) of a search, checked before any work: the selection,
    the results name, and the store's sidecar folders (when ``write``)."""
    fg_ids, pool, true_all = _selection(store, classifier, config)
    device = distributed.local_device(torch.device(config.device) if config.device else classifier.device)
    name = results_name or default_results_name(classifier, config)
    check_name(name)
    _check_results_name(name, store, journal_dir)
    if write:
        require_sidecar_folder(store.path, "results")
    # --amp auto on a CPU keeps fp32's answers (bf16 only with the fp32 re-check), so it resumes as fp32 would
    amp = resolve_amp(device, config.amp)
    run_id = RunId(fingerprint(store, fg_ids, pool, classifier, config, amp), fg_ids, pool, true_all,
                   group_attrs(classifier, config), config.record_outcomes, config.fg_block)
    return name, run_id, device, amp


def _selection(store: Store, classifier: Classifier, config: SearchConfig) -> tuple[np.ndarray, ...]:
    """(fg_ids, background pool, their classes), checked against the store and the classifier's label space."""
    store.require_nonempty()
    classifier.label_map.require_store_classes(store.class_names, classifier.config.name)
    fg_ids = _ids(config.foregrounds, len(store.foregrounds), "foreground")
    pool = _ids(config.backgrounds, len(store.backgrounds), "background")
    true_all = store.foregrounds.labels[fg_ids]
    if (true_all < 0).any():
        raise AdvbgError(f"{int((true_all < 0).sum())} foregrounds have no class (label -1); they cannot be searched")
    check_labels(store, fg_ids, pool)
    return fg_ids, pool, true_all


def _run_units(run: _Search, sink: ResultsSink, units: list[tuple[int, int]], show: bool,
               on_unit: Callable[[int], None] | None) -> tuple[int, int, int]:
    """The loop: each unit's foregrounds -> the engine -> the sink. Returns (forwards, verified, batch size)."""
    planned = _planned(run, units)
    desc = f"search {run.config.mode}" if run.candidates is None else f"search pruned {run.config.prune}"
    bar = progress_bar(total=sum(planned), enabled=show and bool(units), desc=desc, unit="comp", unit_scale=True)
    if not units:   # every unit came from an earlier run: report the batch size it used
        bar.close()
        return 0, 0, sink.batch_size_used()
    engine = Engine(run.classifier, Criterion(run.config.criterion), run.config, run.device, run.echo)
    try:
        with StoreReader(run.store, run.device) as reader, _StopRequest(run.echo) as stop:
            backgrounds = reader.backgrounds(run.pool, engine.budget)
            for n_done, (s, e) in enumerate(units, 1):
                ids = run.fg_ids[s:e]
                cands = run.candidates.for_foregrounds(ids) if run.candidates is not None else None
                rows, outcome = engine.run_unit(*reader.foregrounds(ids), backgrounds, cands,
                                                _ignore if engine.stop else bar.update)
                if engine.stop:
                    bar.update(planned[n_done - 1])
                sink.commit((s, e), rows, outcome, engine.batch.size)
                _keep_bf16_worth_it(run, engine)
                if on_unit:
                    on_unit(int(s))
                if stop.requested and n_done < len(units):
                    run.echo(f"advbg: stopped with {len(units) - n_done} unit(s) of this process left; "
                             f"run the same command again to continue")
                    raise KeyboardInterrupt
    finally:
        bar.close()
        sink.close()
        engine.close()
    return engine.forwards, engine.verified, engine.batch.size


def _planned(run: _Search, units: list[tuple[int, int]]) -> list[int]:
    """Composites each unit plans: its foregrounds x the pool, or their candidate lists (pruned)."""
    if run.candidates is None:
        return [(e - s) * len(run.pool) for s, e in units]
    return [sum(len(c) for c in run.candidates.for_foregrounds(run.fg_ids[s:e])) for s, e in units]


@contextlib.contextmanager
def _on_device(classifier: Classifier, device: torch.device, channels_last: bool):
    """Move the classifier for the search and put it back where and how the caller had it."""
    before_device = classifier.device
    was_cl = all(p.is_contiguous(memory_format=torch.channels_last) for p in classifier.parameters() if p.dim() == 4)
    classifier.to(device)
    classifier.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    try:
        yield
    finally:
        classifier.to(before_device)
        classifier.to(memory_format=torch.channels_last if was_cl else torch.contiguous_format)


def _check_results_name(name: str, store: Store, journal_dir) -> None:
    """A results name is also part of file names (journal, grid): no '.'/'..', no control characters, short."""
    if name in (".", "..") or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise AdvbgError(f"bad results name {name!r}: not '.' or '..', and no control characters (newlines, tabs)")
    if journal_dir is not None and Path(journal_dir).exists() and not Path(journal_dir).is_dir():
        raise AdvbgError(f"--journal-dir {journal_dir} is not a folder")
    folder = journal_dir if journal_dir is not None and Path(journal_dir).is_dir() else Path(store.path).parent
    check_file_name(f"{Path(store.path).name}.{name}.worst.png", folder, "results name (in file names)")


def _ids(ids, n: int, what: str) -> np.ndarray:
    if ids is None:
        return np.arange(n, dtype=np.int64)
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size == 0:
        raise AdvbgError(f"the {what} selection is empty")
    if (arr < 0).any() or (arr >= n).any():
        raise AdvbgError(f"{what} ids must be in 0..{n - 1}")
    return arr


def _ignore(_n: int) -> None:
    pass
