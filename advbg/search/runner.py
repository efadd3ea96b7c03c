"""Worst-case background search: every foreground against a pool of backgrounds, in large batches.

``search(store, classifier, SearchConfig(...))`` does the bookkeeping — validation, units of ``fg_block``
foregrounds, the resumable journal, sharding over torchrun ranks, result assembly — and hands each unit to
``advbg.search.engine.Engine``, which does the device work. Modes differ only in which backgrounds each foreground is
tried on, in which order, and whether it stops at its first fooling background:
  - exhaustive: every background of the pool (exact worst case; also records the fg x bg outcome matrix),
  - early-exit: stops a foreground at its first fooling background (fooling rate and first fooling bg only),
  - pruned: a candidate list per foreground from ``advbg.search.index`` (``SearchConfig.candidates``).
Results never depend on how pairs were batched: every pair up to a foreground's first fooling one is evaluated,
later ones are ignored, ties go to the earliest trial position — exactly what a plain loop computes.

Units are committed to a journal beside the store as they finish, and written as one results file beside the store
at the end (``advbg.search.journal``, ``advbg.search.results``): a run killed at any point resumes with ``resume=True``, redoing at most
the units in flight. SIGINT/SIGTERM stop cleanly after the current unit. Under ``torchrun`` units are shared
round-robin by rank (``advbg.search.distributed``); rank 0 writes the results file.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from pathlib import Path
from dataclasses import asdict
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from advbg._version import __version__
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.files import check_file_name, now
from advbg.models.classifier import Classifier
from advbg.models.precision import resolve_amp
from advbg.search import distributed
from advbg.search.config import CandidateStrategy, SearchConfig
from advbg.search.criteria import Criterion
from advbg.search.engine import Engine
from advbg.search.journal import Journal, journal_folder
from advbg.search.results import (
    RunRecord,
    SearchResult,
    check_name,
    fingerprint,
    group_attrs,
    load_search,
    merge_journal,
)

FIELDS = ("worst_bg", "worst_margin", "worst_pred", "first_fooling_bg", "n_fooling", "n_evaluated", "n_invalid")


# --------------------------------------------------------------------------------------------- driver
def default_results_name(classifier: Classifier, config: SearchConfig) -> str:
    """``<architecture>.<weight tag>.<criterion>.<mode>[.<pruning>]``; for weights read from a file (a checkpoint,
    --weights) the tag carries the first 8 hex digits of their SHA-256, so two checkpoints of one architecture
    never share (and overwrite) a results group."""
    c = classifier.config
    tag = c.tag
    if c.weights_sha256 and c.source in ("checkpoint", "timm"):
        tag += f"-{c.weights_sha256[:8]}"
    name = f"{tag}.{config.criterion}.{config.mode}"
    return name + (f".{config.prune}" if config.prune else "")


def _check_label_space(store: Store, classifier: Classifier) -> None:
    classifier.label_map.require_store_classes(store.class_names, classifier.config.name)


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
           strategy: "CandidateStrategy | None" = None, results_name: str | None = None, write: bool = True,
           resume: bool = False, progress: bool = True, on_unit: Callable[[int], None] | None = None,
           journal_dir: str | None = None, echo: Callable[[str], None] = _stderr) -> SearchResult:
    """Find each foreground's worst-case background; see the module docstring.

    ``write``: commit units to a journal and the finished result to the store's results file ``name`` (store
    opened 'r+'; under torchrun every rank opens it read-only and rank 0 takes the lock to write the file). ``resume``: keep the units an interrupted run committed (same settings needed).
    ``journal_dir``: where journals live (default: beside the store; under torchrun a folder all ranks see).
    ``strategy``: which backgrounds each foreground is tried on (None: the whole pool; see
    advbg.search.strategies for FAISS-pruned and random candidates). The caller's classifier is left on its
    device and memory format.
    """
    if strategy is not None:
        return strategy.run(store, classifier, config, _search, results_name=results_name, write=write,
                            resume=resume, progress=progress, journal_dir=journal_dir)
    return _search(store, classifier, config, results_name=results_name, write=write, resume=resume,
                   progress=progress, on_unit=on_unit, journal_dir=journal_dir, echo=echo)


def _search(store: Store, classifier: Classifier, config: SearchConfig, *, results_name: str | None = None,
            write: bool = True, resume: bool = False, progress: bool = True,
            on_unit: Callable[[int], None] | None = None, journal_dir: str | None = None,
            echo: Callable[[str], None] = _stderr) -> SearchResult:
    """One pass over the candidates ``config`` names (all of the pool when ``config.candidates`` is None)."""
    store.require_nonempty()
    _check_label_space(store, classifier)
    criterion = Criterion(config.criterion)
    fg_ids = _ids(config.foregrounds, len(store.foregrounds), "foreground")
    pool = _ids(config.backgrounds, len(store.backgrounds), "background")
    true_all = store.foregrounds.labels[fg_ids]
    if (true_all < 0).any():
        raise AdvbgError(f"{int((true_all < 0).sum())} foregrounds have no class (label -1); they cannot be searched")
    n_cls = len(store.class_names)
    for what, labels in (("foreground", true_all), ("background", store.backgrounds.labels[pool])):
        bad = (labels >= n_cls) | (labels < -1)
        if bad.any():
            raise AdvbgError(f"{int(bad.sum())} {what} labels of {store.path} are outside 0..{n_cls - 1} (e.g. "
                             f"{int(labels[bad][0])}); the store is inconsistent: check it with `advbg verify`")
    device = distributed.local_device(torch.device(config.device) if config.device else classifier.device)
    d = distributed.setup(device)
    with _on_device(classifier, device, config.channels_last):
        return _run(store, classifier, config, criterion, fg_ids, pool, true_all, device, d, results_name, write,
                    resume, progress, on_unit, journal_dir, echo)


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


def _run(store, classifier, config, criterion, fg_ids, pool, true_all, device, d, results_name, write, resume,
         progress, on_unit, journal_dir, echo) -> SearchResult:
    name = results_name or default_results_name(classifier, config)
    check_name(name)
    _check_results_name(name, store, journal_dir)
    amp = resolve_amp(device, config.amp)
    fp = fingerprint(store, fg_ids, pool, classifier, config, amp)
    writable = store.writable
    if write and not d.active:
        store.require_writable()
    journal = Journal(journal_folder(store.path, name, journal_dir)) if (write or d.active) else None
    started, t0 = now(), time.perf_counter()

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
                    rec = dict(vals, start=np.int64(s), stop=np.int64(e), batch_size=np.int64(engine.batch.size))
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
        elif journal is not None:  # every unit came from an earlier run: report the batch size it used
            batch_used = _journal_batch_size(journal)
    forwards = distributed.sum_int(forwards, d)
    verified = distributed.sum_int(verified, d)
    distributed.barrier(d)          # every unit of every rank is committed

    v = _assemble(len(fg_ids), journal, mem)
    run = RunRecord(__version__, classifier.config.to_dict(), str(store.path), store.digest(), repr(criterion),
                    config.mode, config.prune, config.to_dict(), str(device), started,
                    time.perf_counter() - t0, forwards, batch_used, d.world, amp, verified,
                    len(units) - len(todo))
    distributed.barrier(d)          # every rank has read the journal
    if journal and d.main:
        journal.write_run(asdict(run))
        if not write:
            journal.remove()
    if write and writable:
        merge_journal(store, journal, name)
    elif write:
        _merge_when_released(store, journal, name, d)
    return SearchResult(run=run, fg_id=fg_ids, true_class=true_all, class_names=tuple(store.class_names),
                        results_name=name if write else None, **v)


def _merge_when_released(store: Store, journal, name: str, d) -> None:
    """Under torchrun every rank holds the store read-only; rank 0 takes the store's lock and writes the results
    file beside it (the store file is never written, so the other ranks keep their handles)."""
    distributed.barrier(d)
    if d.main:
        with Store(store.path, mode="r+") as w:
            merge_journal(w, journal, name)
    distributed.barrier(d)


def _plan(store: Store, name: str, fp: str, resume: bool, journal, fg_ids, pool, true_all, config, classifier) -> dict:
    """Rank 0: {'stored': True} when finished results are in the store already, else the unit size and the
    rows already committed (``done``), creating a fresh journal when nothing is resumed."""

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


def _check_results_name(name: str, store: Store, journal_dir) -> None:
    """A results name is also part of file names (journal, grid): no '.'/'..', no control characters, short."""
    if name in (".", "..") or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise AdvbgError(f"bad results name {name!r}: not '.' or '..', and no control characters (newlines, tabs)")
    if journal_dir is not None and Path(journal_dir).exists() and not Path(journal_dir).is_dir():
        raise AdvbgError(f"--journal-dir {journal_dir} is not a folder")
    folder = journal_dir if journal_dir is not None and Path(journal_dir).is_dir() else Path(store.path).parent
    check_file_name(f"{Path(store.path).name}.{name}.worst.png", folder, "results name (in file names)")


def _journal_batch_size(journal) -> int:
    """The largest batch size the journal's committed units were computed with (0: none recorded)."""
    sizes = [int(r["batch_size"]) for r in journal.records() if "batch_size" in r]
    return max(sizes, default=0)


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

    return tqdm(total=total, disable=not enabled, unit="comp", unit_scale=True, desc=desc, dynamic_ncols=True)


def _ignore(_n: int) -> None:
    pass
