"""Search results inside the store: ``/results/<name>``, written unit by unit, complete only when finished.

Layout of a search results group (plain h5py)::

    attrs: kind="search", complete (bool, True only after the last unit), fingerprint (what must match to
           resume), run (JSON of the RunRecord, set at the end), config (JSON), criterion, mode, model, created
    fg_id (F,) int64            searched foregrounds, in order
    bg_pool (B,) int64          the background pool, in trial order of an exhaustive search
    true_class, worst_bg, worst_pred, first_fooling_bg, n_fooling, n_evaluated, n_invalid (F,) int64
    worst_margin (F,) float64   NaN where nothing was evaluated
    done (F,) uint8             1 once the foreground's unit is committed
    outcome (F, B) uint8        mapped prediction per pair (254 = "none", 255 = not evaluated), if recorded
"""
from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np

from .errors import AdvbgError
from .store import Store, _now

INT_FIELDS = ("worst_bg", "worst_pred", "first_fooling_bg", "n_fooling", "n_evaluated", "n_invalid")


def _fingerprint(store: Store, fg_ids: np.ndarray, pool: np.ndarray, classifier, config) -> str:
    h = hashlib.sha256()
    c = classifier.config
    for part in (store.digest(), c.tag, c.weights_sha256 or "", c.label_map, config.criterion, config.mode,
                 config.prune or "", str(config.record_outcomes)):
        h.update(str(part).encode() + b"\0")
    h.update(fg_ids.tobytes())
    h.update(pool.tobytes())
    return h.hexdigest()[:24]


class SearchWriter:
    """Creates (or, with resume, reopens) ``/results/<name>`` and commits one unit at a time."""

    def __init__(self, store: Store, name: str, fg_ids: np.ndarray, pool: np.ndarray, classifier, config,
                 resume: bool = False):
        store.require_writable()
        if not name or "/" in name:
            raise AdvbgError(f"bad results name {name!r} (non-empty, no '/')")
        self.store, self.name = store, name
        self.fingerprint = _fingerprint(store, fg_ids, pool, classifier, config)
        root = store.file.require_group("results")
        g = root.get(name)
        if g is not None and resume and g.attrs.get("fingerprint") == self.fingerprint:
            self.group = g
            return
        if g is not None and resume:
            raise AdvbgError(f"results {name!r} in {store.path} come from a different run (model, store, criterion, "
                             f"mode or selection differ); resume needs the same settings, or drop --resume")
        if g is not None:
            del root[name]
        self.group = self._create(root, name, fg_ids, pool, store, classifier, config)

    def _create(self, root, name, fg_ids, pool, store, classifier, config) -> h5py.Group:
        g = root.create_group(name)
        n, b = len(fg_ids), len(pool)
        g.attrs.update(kind="search", complete=False, fingerprint=self.fingerprint, created=_now(),
                       criterion=config.criterion, mode=config.mode, model=classifier.config.tag,
                       label_map=classifier.config.label_map, config=json.dumps(config.to_dict()),
                       classifier=json.dumps(classifier.config.to_dict()))
        g.create_dataset("fg_id", data=fg_ids)
        g.create_dataset("bg_pool", data=pool)
        g.create_dataset("true_class", data=store.foregrounds.labels[fg_ids])
        for k in INT_FIELDS:
            g.create_dataset(k, data=np.full(n, -1, np.int64))
        g.create_dataset("worst_margin", data=np.full(n, np.nan))
        g.create_dataset("done", data=np.zeros(n, np.uint8))
        if config.record_outcomes:
            rows = max(1, min(n, config.fg_block))
            g.create_dataset("outcome", (n, b), np.uint8, fillvalue=255, chunks=(rows, min(b, 4096)),
                             compression="gzip", compression_opts=1)
        store.file.flush()
        return g

    def done_units(self, units: list[np.ndarray]) -> list[np.ndarray]:
        done = self.group["done"][()].astype(bool)
        return [u for u in units if done[u].all()]

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        sl = slice(int(rows[0]), int(rows[-1]) + 1)
        out = {k: self.group[k][sl] for k in INT_FIELDS}
        out["worst_margin"] = self.group["worst_margin"][sl]
        return out

    def commit(self, rows: np.ndarray, vals: dict[str, np.ndarray], outcome: np.ndarray | None) -> None:
        """Write one unit's rows, then mark them done, then flush: a crash loses at most this unit."""
        sl = slice(int(rows[0]), int(rows[-1]) + 1)
        g = self.group
        for k, v in vals.items():
            g[k][sl] = v
        if outcome is not None and "outcome" in g:
            g["outcome"][sl] = outcome
        self.store.file.flush()
        g["done"][sl] = 1
        self.store.file.flush()

    def finish(self, run) -> None:
        from dataclasses import asdict

        self.group.attrs["run"] = json.dumps(asdict(run), default=str)
        self.group.attrs["completed"] = _now()
        self.group.attrs["complete"] = True
        self.store.file.flush()


def result_names(store: Store, kind: str = "search") -> list[str]:
    return [k for k, g in store.results.items() if g.attrs.get("kind") == kind]


def load_search(store: Store, name: str | None = None, require_complete: bool = True):
    """A stored search as a SearchResult (``name=None``: the only/most recent complete one)."""
    from .search import RunRecord, SearchResult

    names = result_names(store)
    if name is None:
        complete = [n for n in names if store.results[n].attrs.get("complete")]
        if not complete:
            raise AdvbgError(f"{store.path} has no complete search results; run `advbg search` first")
        name = max(complete, key=lambda n: str(store.results[n].attrs.get("completed", "")))
    if name not in names:
        raise AdvbgError(f"{store.path} has no search results named {name!r}; it has: {', '.join(names) or 'none'}")
    g = store.results[name]
    if require_complete and not g.attrs.get("complete"):
        raise AdvbgError(f"results {name!r} are incomplete (interrupted); finish them with `advbg search --resume`")
    run = RunRecord(**json.loads(g.attrs["run"])) if "run" in g.attrs else None
    return SearchResult(run=run, fg_id=g["fg_id"][()], true_class=g["true_class"][()],
                        worst_margin=g["worst_margin"][()], class_names=store.class_names, results_name=name,
                        **{k: g[k][()] for k in INT_FIELDS})


def load_outcome(store: Store, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(outcome (F, B) uint8, fg_id (F,), bg_pool (B,)) of a stored search that recorded outcomes."""
    g = store.results.get(name)
    if g is None or "outcome" not in g:
        raise AdvbgError(f"results {name!r} in {store.path} hold no outcome matrix (run an exhaustive search)")
    return g["outcome"][()], g["fg_id"][()], g["bg_pool"][()]
