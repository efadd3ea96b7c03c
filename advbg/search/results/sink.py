"""The only writer of search results: a running search commits each finished unit to the journal
(``advbg.search.journal``: append-only, safe against a kill at any byte); ``finish`` assembles the rows and merges the
finished journal into ``<store>.d/results/<name>.h5`` (built under a temporary name and renamed into place by
``Store.write_derived``), then removes the journal. A kill at any point leaves the old results file (or none) and
the journal, and a rerun continues from the committed units (``advbg search`` resumes by default).

Life cycle: ``sink = ResultsSink.open(store, name, run_id, ranks, ...)`` decides on rank 0 what is already done (a
stored identical result, committed units to keep) -> ``sink.commit(unit, rows, outcome)`` per finished unit ->
``sink.finish(run) -> SearchResult``. Under torchrun every rank commits its own units; rank 0 writes the file.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace

from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from advbg.data.sidecar import sidecar_folder
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.files import now
from advbg.search.distributed import Ranks
from advbg.search.journal import Journal, JournalWriter, journal_folder, remove_obsolete
from advbg.search.results.read import load_search
from advbg.search.results.schema import (
    ADDED_COLUMNS,
    COLUMNS,
    FIELDS,
    OUTCOME_MISSING,
    RunRecord,
    SearchResult,
    check_name,
    empty_columns,
)

Unit = tuple[int, int]          # rows start..stop-1 of the searched foregrounds


@dataclass(frozen=True)
class RunId:
    """What identifies a search's output: its fingerprint (what must match to resume), its rows and pool,
    and the attributes its file carries."""

    fingerprint: str
    fg_id: np.ndarray
    bg_pool: np.ndarray
    true_class: np.ndarray
    attrs: dict                 # results file attributes (``schema.group_attrs``)
    record_outcomes: bool
    fg_block: int


class ResultsSink:
    """Commits a search's units and writes its results file; see the module docstring."""

    def __init__(self, store: Store, name: str, run_id: RunId, ranks: Ranks, journal: Journal | None,
                 write: bool, plan: dict):
        self.store, self.name, self.id, self.ranks = store, name, run_id, ranks
        self.journal, self.write = journal, write
        self.stored: bool = bool(plan.get("stored"))
        self.fg_block: int = int(plan.get("fg_block", run_id.fg_block))
        self.done: np.ndarray = plan.get("done", np.zeros(0, bool))
        self._mem: dict[Unit, dict] = {}
        self._writer: JournalWriter | None = None

    # -- open / plan ---------------------------------------------------------------------------------------
    @classmethod
    def open(cls, store: Store, name: str, run_id: RunId, ranks: Ranks, *, write: bool = True,
             resume: bool = True, recompute: bool = False, journal_dir: str | None = None,
             echo: Callable[[str], None] | None = None) -> "ResultsSink":
        """Rank 0 decides what is already done, so that every rank works from the same plan (the rerun rules):
        a complete results file of the same run (fingerprint) is reused unless ``recompute``; an interrupted run
        of the same settings is continued unless ``resume`` is False (then its units are dropped, said on
        ``echo``); a results file or an interrupted run of other settings under this name is refused in one line
        (``recompute`` replaces such a file once the new run is complete; ``resume=False`` drops such a run)."""
        check_name(name)
        if write and not ranks.active:
            store.require_writable()
        journal = Journal(journal_folder(store.path, name, journal_dir)) if (write or ranks.active) else None
        plan = None
        if ranks.main:
            try:
                plan = _plan(store, name, run_id, _Rerun(write, resume, recompute), journal, echo or _quiet)
            except AdvbgError as e:
                plan = dict(error=str(e))
        plan = ranks.broadcast(plan)
        if "error" in plan:
            raise AdvbgError(plan["error"])
        return cls(store, name, run_id, ranks, journal, write, plan)

    def stored_result(self) -> SearchResult:
        """The complete identical result already stored (when ``stored``)."""
        return load_search(self.store, self.name)

    def units(self) -> list[Unit]:
        """Every unit of the search, in order."""
        n = len(self.id.fg_id)
        return [(s, min(s + self.fg_block, n)) for s in range(0, n, self.fg_block)]

    def todo(self) -> list[Unit]:
        """Units no earlier run committed."""
        return [u for u in self.units() if not self.done[u[0]:u[1]].all()]

    # -- commit --------------------------------------------------------------------------------------------
    def commit(self, unit: Unit, rows: dict[str, np.ndarray], outcome: np.ndarray | None, batch_size: int) -> None:
        """Keep one finished unit: its rows (the ``COLUMNS``) and its outcome rows (n, B) when recorded."""
        if set(rows) != set(COLUMNS):
            raise AdvbgError(f"internal error: a unit's rows are {sorted(rows)}, not the columns {list(COLUMNS)}")
        s, e = unit
        if self.journal is None:
            self._mem[unit] = rows
            return
        if self._writer is None:
            self._writer = self.journal.writer(self.ranks.rank)
        rec = dict(rows, start=np.int64(s), stop=np.int64(e), batch_size=np.int64(batch_size))
        if outcome is not None:
            rec["outcome"] = outcome
        self._writer.append(rec)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def batch_size_used(self) -> int:
        """The largest batch size the committed units were computed with (0: none recorded)."""
        if self.journal is None:
            return 0
        return max((int(r["batch_size"]) for r in self.journal.records() if "batch_size" in r), default=0)

    # -- finish --------------------------------------------------------------------------------------------
    def finish(self, run: RunRecord) -> SearchResult:
        """Every rank's units are in: assemble the result, write the results file (rank 0), remove the journal."""
        self.close()
        self.ranks.barrier()            # every unit of every rank is committed
        cols = self._assemble()
        self.ranks.barrier()            # every rank has read the journal
        if self.journal is not None and self.ranks.main:
            self.journal.write_run(asdict(run))
            if not self.write:
                self.journal.remove()
        if self.write:
            self._merge()
        i = self.id
        return SearchResult(run=run, fg_id=i.fg_id, true_class=i.true_class, class_names=tuple(self.store.class_names),
                            results_name=self.name if self.write else None, **cols)

    def _assemble(self) -> dict[str, np.ndarray]:
        n = len(self.id.fg_id)
        cols, have = empty_columns(n), np.zeros(n, bool)
        recs = self.journal.records(("start", "stop") + FIELDS) if self.journal else (
            dict(rows, start=s, stop=e) for (s, e), rows in self._mem.items())
        for r in recs:
            s, e = int(r["start"]), int(r["stop"])
            for k in FIELDS:
                if k in r or k not in ADDED_COLUMNS:   # a unit journalled before a column existed keeps its fill
                    cols[k][s:e] = r[k]
            have[s:e] = True
        if not have.all():
            where = f" in {self.journal.folder}" if self.journal else ""
            raise AdvbgError(f"{int((~have).sum())} foregrounds have no committed result{where} (under torchrun on "
                             f"several nodes the journal must be on a filesystem every node sees: --journal-dir); "
                             f"rerun the search (it resumes)")
        return cols

    def _merge(self) -> None:
        """Single process: write the file now. Under torchrun every rank holds the store read-only; rank 0 takes
        the store's lock and writes the results file beside it (the store file itself is never written)."""
        if self.store.writable:
            merge_journal(self.store, self.journal, self.name)
            return
        self.ranks.barrier()
        if self.ranks.main:
            with Store(self.store.path, mode="r+") as w:
                merge_journal(w, self.journal, self.name)
        self.ranks.barrier()


@dataclass(frozen=True)
class _Rerun:
    write: bool
    resume: bool
    recompute: bool


def _quiet(_msg: str) -> None:
    pass


def _plan(store: Store, name: str, run_id: RunId, how: _Rerun, journal: Journal | None,
          echo: Callable[[str], None]) -> dict:
    """Rank 0: {'stored': True} when the same run's complete results are stored (and may be reused), else the unit
    size and the rows already committed (``done``), creating a fresh journal when nothing is resumed."""
    n, fp = len(run_id.fg_id), run_id.fingerprint
    path = results_path(store, name)
    if how.write:
        _require_file_or_nothing(path)
    g = _readable_group(store, name)
    stored_fp = str(g.attrs.get("fingerprint", "")) if g is not None and g.attrs.get("complete") else None
    if journal is not None:
        remove_obsolete(journal.folder)
    jfp = journal.fingerprint() if journal is not None else None
    if jfp is not None and jfp == stored_fp and _merged(journal, g):
        journal.remove()    # merged into the results file, but its clean-up was cut short: the file holds it all
        jfp = None
    if stored_fp == fp and not how.recompute:
        if jfp == fp:
            echo(f"advbg: an interrupted --recompute of {name!r} ({journal.units()} committed unit(s)) stays in "
                 f"{journal.folder}: --recompute continues it, --restart --recompute starts it afresh")
        return dict(stored=True)
    if how.write:
        _require_replaceable(path, g, fp, how.recompute)
    if journal is None:
        return dict(fg_block=run_id.fg_block, done=np.zeros(n, bool))
    if jfp is not None:
        units = journal.units()
        if jfp == fp and how.resume:
            echo(f"advbg: resuming the interrupted search of {name!r}: {units} committed unit(s) kept from "
                 f"{journal.folder} (--restart discards them)")
            return dict(fg_block=int(journal.meta()["attrs"]["fg_block"]), done=journal.done_rows(n))
        if how.resume:
            raise AdvbgError(f"an interrupted search of results {name!r} with other settings (model, store, "
                             f"criterion, mode, precision or selection; {units} committed unit(s)) is in "
                             f"{journal.folder}: --restart discards it, or choose another --results-name")
        echo(f"advbg: --restart: dropping {units} committed unit(s) of the interrupted search in {journal.folder}")
    attrs = dict(group=run_id.attrs, record_outcomes=run_id.record_outcomes, fg_block=run_id.fg_block,
                 store_digest=store.digest())
    journal.create(fp, dict(fg_id=run_id.fg_id, bg_pool=run_id.bg_pool, true_class=run_id.true_class), attrs)
    return dict(fg_block=run_id.fg_block, done=np.zeros(n, bool))


def _merged(journal: Journal, g: h5py.Group) -> bool:
    """Whether the finished journal's run is the one the results group records (its merge completed)."""
    try:
        run = journal.run()
        return run is not None and "run" in g.attrs and json.loads(g.attrs["run"]) == run
    except (OSError, ValueError, TypeError):
        return False


def results_path(store: Store, name: str) -> Path:
    """Where results ``name`` of ``store`` are written."""
    return sidecar_folder(store.path) / "results" / f"{name}.h5"


def _readable_group(store: Store, name: str) -> h5py.Group | None:
    """Results ``name`` of this store's content whose identity can be read (None: absent, other store content,
    or damaged)."""
    try:
        g = store.results.get(name)
        if g is not None:
            dict(g.attrs.items())       # garbled attributes fail here, not deep in the plan
        return g
    except AdvbgError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError):
        return None


def check_replaceable(store: Store, name: str, fingerprint: str, recompute: bool = False) -> None:
    """Refuse in one line, before any work, a search whose results file ``name`` could not be written or would
    replace another run's (or a damaged) file without ``recompute``; a search of the same run passes."""
    path = results_path(store, name)
    _require_file_or_nothing(path)
    _require_replaceable(path, _readable_group(store, name), fingerprint, recompute)


def _require_file_or_nothing(path: Path) -> None:
    if os.path.lexists(path) and (path.is_symlink() or not path.is_file()):
        raise AdvbgError(f"results path {path} exists and is not a regular file (a folder, link, FIFO or device); "
                         f"choose another --results-name, or move it away")


def _require_replaceable(path: Path, g: h5py.Group | None, fp: str, recompute: bool) -> None:
    """An existing results file is replaced only by a rerun of the same run or with ``recompute``."""
    if not path.is_file() or recompute:
        return
    if g is not None and str(g.attrs.get("fingerprint", "")) == fp:
        return          # the same run's incomplete file (an earlier advbg): finishing it replaces nothing else
    what = ("is damaged or unreadable" if g is None and _unreadable(path) else
            "holds another run (other model, store contents, criterion, mode, precision or selection)")
    raise AdvbgError(f"results file {path} {what}; --recompute replaces it once the new search is complete, "
                     f"or choose another --results-name to keep both")


def _unreadable(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            dict(f.attrs.items())
        return False
    except (OSError, KeyError, ValueError, TypeError, RuntimeError):
        return True


# --------------------------------------------------------------------------------------------- the file
class _FileWriter:
    """Fills a results file's root group ``g`` (from ``Store.write_derived``); ``finish`` checks every row is in."""

    def __init__(self, g: h5py.Group, name: str, run_id: RunId):
        self.name, self.group = name, g
        n, b = len(run_id.fg_id), len(run_id.bg_pool)
        g.attrs.update(run_id.attrs)
        g.attrs.update(fingerprint=run_id.fingerprint)
        # fletcher32 on every dataset: a chunk changed on disk fails to read (rules.CHECKSUM, docs/data-safety.md)
        g.create_dataset("fg_id", data=np.asarray(run_id.fg_id, np.int64), fletcher32=True)
        g.create_dataset("bg_pool", data=np.asarray(run_id.bg_pool, np.int64), fletcher32=True)
        g.create_dataset("true_class", data=np.asarray(run_id.true_class, np.int64), fletcher32=True)
        for k, v in empty_columns(n).items():
            g.create_dataset(k, data=v, fletcher32=True)
        g.create_dataset("done", data=np.zeros(n, np.uint8), fletcher32=True)
        if run_id.record_outcomes:
            rows = max(1, min(n, run_id.fg_block))
            g.create_dataset("outcome", (n, b), np.uint8, fillvalue=OUTCOME_MISSING, fletcher32=True,
                             chunks=(rows, max(1, min(b, 4096))), compression="gzip", compression_opts=1)

    def write_rows(self, start: int, stop: int, rows: dict[str, np.ndarray], outcome: np.ndarray | None) -> None:
        g = self.group
        for k in FIELDS:
            if k in rows or k not in ADDED_COLUMNS:
                g[k][start:stop] = rows[k]
        if outcome is not None and "outcome" in g:
            g["outcome"][start:stop] = outcome
        g["done"][start:stop] = 1

    def finish(self, run: dict) -> None:
        if not self.group["done"][()].all():
            missing = int((self.group["done"][()] == 0).sum())
            raise AdvbgError(f"results {self.name!r}: {missing} foregrounds have no committed unit; "
                             f"rerun the search (it resumes)")
        self.group.attrs["run"] = json.dumps(run, default=str)
        self.group.attrs["completed"] = now()


def merge_journal(store: Store, journal: Journal, name: str) -> None:
    """Write a finished journal's units as results ``name`` of ``store`` (opened 'r+'), then remove the journal."""
    meta = journal.meta()
    run = journal.run()
    if run is None:
        raise AdvbgError(f"journal {journal.folder} is not finished (no run.json); resume the search first")
    if str(meta["fingerprint"]) != fingerprint_of_store(store, meta):
        raise AdvbgError(f"journal {journal.folder} was made from other store contents; remove it and search again")
    attrs = meta["attrs"]
    run_id = RunId(str(meta["fingerprint"]), meta["fg_id"], meta["bg_pool"], meta["true_class"], attrs["group"],
                   bool(attrs["record_outcomes"]), int(attrs["fg_block"]))
    with store.write_derived("results", name) as f:
        w = _FileWriter(f, name, run_id)
        for rec in journal.records():
            out = rec.get("outcome")
            w.write_rows(int(rec["start"]), int(rec["stop"]), rec, out if out is not None and out.size else None)
        w.finish(run)
    journal.remove()


def fingerprint_of_store(store: Store, meta: dict) -> str:
    """The journal's fingerprint when its recorded store digest still matches ``store`` (else '')."""
    return str(meta["fingerprint"]) if meta["attrs"].get("store_digest") == store.digest() else ""


def pending_fingerprint(store_path, name: str) -> str | None:
    """The fingerprint of an unfinished search of results ``name`` of the store at ``store_path`` (its journal),
    None when there is none."""
    return Journal(journal_folder(store_path, name)).fingerprint()


def write_result(store: Store, name: str, run_id: RunId, result: SearchResult,
                 outcome: np.ndarray | None = None) -> SearchResult:
    """Store a result computed in memory (e.g. merged stages of a pruned search) as results ``name``, in one go;
    ``outcome``: its (F, B) matrix when ``run_id.record_outcomes``."""
    check_name(name)
    with store.write_derived("results", name) as f:
        w = _FileWriter(f, name, run_id)
        w.write_rows(0, len(result), {k: getattr(result, k) for k in FIELDS}, outcome)
        w.finish(asdict(result.run))
    return replace(result, results_name=name)
