"""Search results: ``<store>.d/results/<name>.h5``, one HDF5 file per results name, written once a search has finished.

A running search commits its units to a journal beside the store (``advbg.search.journal``). When every unit is
in, ``merge_journal`` writes the results file under a temporary name and renames it into place
(``Store.write_derived``), then removes the journal: a kill at any point leaves the old results file (or none) and
the journal, and ``--resume`` merges again. The store file itself is never written.

Layout of a results file (plain h5py; attrs and datasets at its root, as a ``/results/<name>`` group of stores
written by earlier advbg builds)::

    attrs: kind="search", complete=True, store_digest, fingerprint (what must match to
           resume), run (JSON of the RunRecord), config (JSON), classifier (JSON), criterion, mode, model,
           label_map, created, completed
    fg_id (F,) int64            searched foregrounds, in order
    bg_pool (B,) int64          the background pool, in trial order of an exhaustive search
    true_class, worst_bg, worst_pred, first_fooling_bg, n_fooling, n_evaluated, n_invalid (F,) int64
    worst_margin (F,) float64   NaN where nothing was evaluated
    done (F,) uint8             1 for every foreground whose unit was merged
    outcome (F, B) uint8        mapped prediction per pair (253 = NaN/inf, 254 = "none", 255 = not evaluated), if recorded
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

import h5py
import numpy as np

from advbg.data.sidecar import check_derived_name
from advbg.data.store import Store
from advbg.errors import AdvbgError, StoreError
from advbg.files import now
from advbg.search.journal import Journal


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


INT_FIELDS = ("worst_bg", "worst_pred", "first_fooling_bg", "n_fooling", "n_evaluated", "n_invalid")
FIELDS = INT_FIELDS[:1] + ("worst_margin",) + INT_FIELDS[1:]


def fingerprint(store: Store, fg_ids: np.ndarray, pool: np.ndarray, classifier, config, amp: str) -> str:
    """What must agree for units of two runs to be merged: store content, classifier, what is searched, how."""
    h = hashlib.sha256()
    c = classifier.config
    for part in (store.digest(), c.identity_key, config.criterion, config.mode, config.prune or "", config.record_outcomes, amp,
                 config.verify_close):
        h.update(str(part).encode() + b"\0")
    h.update(np.asarray(fg_ids, np.int64).tobytes())
    h.update(np.asarray(pool, np.int64).tobytes())
    return h.hexdigest()[:24]


def group_attrs(classifier, config) -> dict:
    """The attributes a results group carries (JSON-able)."""
    return dict(kind="search", criterion=config.criterion, mode=config.mode, model=classifier.config.tag,
                label_map=classifier.config.label_map, config=json.dumps(config.to_dict()),
                classifier=json.dumps(classifier.config.to_dict()))


class SearchWriter:
    """Fills a results file's root group ``g`` (from ``Store.write_derived``); ``finish`` checks every row is in."""

    def __init__(self, g: h5py.Group, name: str, fg_ids: np.ndarray, pool: np.ndarray, true_class: np.ndarray,
                 fingerprint: str, attrs: dict, record_outcomes: bool, fg_block: int = 32):
        self.name = name
        n, b = len(fg_ids), len(pool)
        g.attrs.update(attrs)
        g.attrs.update(fingerprint=fingerprint)
        g.create_dataset("fg_id", data=np.asarray(fg_ids, np.int64))
        g.create_dataset("bg_pool", data=np.asarray(pool, np.int64))
        g.create_dataset("true_class", data=np.asarray(true_class, np.int64))
        for k in INT_FIELDS:
            g.create_dataset(k, data=np.full(n, -1, np.int64))
        g.create_dataset("worst_margin", data=np.full(n, np.nan))
        g.create_dataset("done", data=np.zeros(n, np.uint8))
        if record_outcomes:
            rows = max(1, min(n, fg_block))
            g.create_dataset("outcome", (n, b), np.uint8, fillvalue=255, chunks=(rows, max(1, min(b, 4096))),
                             compression="gzip", compression_opts=1)
        self.group = g

    def write_rows(self, start: int, stop: int, vals: dict[str, np.ndarray], outcome: np.ndarray | None) -> None:
        g = self.group
        for k in FIELDS:
            g[k][start:stop] = vals[k]
        if outcome is not None and "outcome" in g:
            g["outcome"][start:stop] = outcome
        g["done"][start:stop] = 1

    def finish(self, run: dict) -> None:
        if not self.group["done"][()].all():
            missing = int((self.group["done"][()] == 0).sum())
            raise AdvbgError(f"results {self.name!r}: {missing} foregrounds have no committed unit; "
                             f"rerun the search with --resume")
        self.group.attrs["run"] = json.dumps(run, default=str)
        self.group.attrs["completed"] = now()


def check_name(name: str) -> None:
    try:
        check_derived_name(name)
    except StoreError as e:
        raise AdvbgError(str(e)) from None


def merge_journal(store: Store, journal: Journal, name: str) -> None:
    """Write a finished journal's units as results ``name`` of ``store`` (opened 'r+'), then remove the journal."""
    meta = journal.meta()
    run = journal.run()
    if run is None:
        raise AdvbgError(f"journal {journal.folder} is not finished (no run.json); resume the search first")
    if str(meta["fingerprint"]) != fingerprint_of_store(store, meta):
        raise AdvbgError(f"journal {journal.folder} was made from other store contents; remove it and search again")
    attrs = meta["attrs"]
    with store.write_derived("results", name) as f:
        w = SearchWriter(f, name, meta["fg_id"], meta["bg_pool"], meta["true_class"], str(meta["fingerprint"]),
                         attrs["group"], bool(attrs["record_outcomes"]), int(attrs["fg_block"]))
        for rec in journal.records():
            out = rec.get("outcome")
            w.write_rows(int(rec["start"]), int(rec["stop"]), rec, out if out is not None and out.size else None)
        w.finish(run)
    journal.remove()


def fingerprint_of_store(store: Store, meta: dict) -> str:
    """The journal's fingerprint when its recorded store digest still matches ``store`` (else '')."""
    return str(meta["fingerprint"]) if meta["attrs"].get("store_digest") == store.digest() else ""


def result_names(store: Store, kind: str = "search") -> list[str]:
    return [k for k, g in store.results.items() if g.attrs.get("kind") == kind]


def load_search(store: Store, name: str | None = None, require_complete: bool = True):
    """A stored search as a SearchResult (``name=None``: the only/most recent complete one)."""

    groups = {k: g for k, g in store.results.items() if g.attrs.get("kind") == "search"}
    if name is None:
        complete = [n for n, g in groups.items() if g.attrs.get("complete")]
        if not complete:
            raise AdvbgError(f"{store.path} has no complete search results; run `advbg search` first")
        name = max(complete, key=lambda n: str(groups[n].attrs.get("completed", "")))
    if name not in groups:
        raise AdvbgError(f"{store.path} has no search results named {name!r}; it has: {', '.join(groups) or 'none'}")
    g = groups[name]
    if require_complete and not g.attrs.get("complete"):
        raise AdvbgError(f"results {name!r} are incomplete (interrupted); finish them with `advbg search --resume`")
    run = RunRecord.from_dict(json.loads(g.attrs["run"])) if "run" in g.attrs else None
    return SearchResult(run=run, fg_id=g["fg_id"][()], true_class=g["true_class"][()],
                        worst_margin=g["worst_margin"][()], class_names=store.class_names, results_name=name,
                        **{k: g[k][()] for k in INT_FIELDS})


def load_outcome(store: Store, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(outcome (F, B) uint8, fg_id (F,), bg_pool (B,)) of a stored search that recorded outcomes."""
    g = store.results.get(name)
    if g is None or "outcome" not in g:
        raise AdvbgError(f"results {name!r} in {store.path} hold no outcome matrix (run an exhaustive search)")
    return g["outcome"][()], g["fg_id"][()], g["bg_pool"][()]
