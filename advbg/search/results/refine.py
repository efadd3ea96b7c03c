"""What `advbg refine` writes, once: its columns, the sink a refine commits its units to (the search journal, so a
killed refine resumes to the same result), the one writer of a refine results file, its checked reader and the
rules ``advbg verify`` applies to it.

Layout of ``<store>.d/results/<name>.h5`` (attrs and datasets at its root)::

    attrs: kind="refine", complete=True, store_digest, fingerprint (what must match to resume), search (the stored
           search the start came from), start (worst | random | own), criterion, classifier (JSON), run (JSON),
           budgets (JSON list of {name, repr}), params (JSON: the photometric parameter names), completed
    REFINE_COLUMNS (R,)         one row per (budget, foreground), budget-major: R = budgets x foregrounds
    params (R, P) float64       photometric parameter values (NaN for other budgets)
    background (R, H, W, 3) uint8, gzip: the refined background (lossless)

A unit is a block of consecutive foregrounds refined under every budget; its record holds each per-budget array
with a leading budget axis, shape (budgets, rows, ...).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import h5py
import numpy as np

from advbg.data.store import Store
from advbg.errors import AdvbgError, StoreError
from advbg.files import now
from advbg.search.journal import Journal, journal_folder
from advbg.search.results.schema import check_name

# One value per (budget, foreground) row, with its dtype; the first four say which row it is.
REFINE_COLUMNS: dict[str, type] = {
    "fg_id": np.int64, "start_bg": np.int64, "budget": np.int64, "true_class": np.int64,
    "margin_before": np.float64, "margin_after": np.float64, "pred_before": np.int64, "pred_after": np.int64,
    "fooled_before": np.uint8, "fooled_after": np.uint8, "steps": np.int64, "ssim": np.float64, "eps": np.float64,
}
ROW_KEYS = ("fg_id", "start_bg", "budget", "true_class")
PER_BUDGET = tuple(k for k in REFINE_COLUMNS if k not in ROW_KEYS) + ("params", "background")
START_KINDS = ("worst", "random", "own")

Unit = tuple[int, int]          # foreground rows start..stop-1


@dataclass(frozen=True)
class RefineId:
    """What identifies a refine's output: its fingerprint (what must match to resume), its rows, its attributes."""

    fingerprint: str
    fg_id: np.ndarray
    start_bg: np.ndarray
    true_class: np.ndarray
    budgets: tuple[dict, ...]   # {"name", "repr"} per budget, in order
    attrs: dict                 # search, start, criterion, classifier (JSON text), params (JSON text)
    unit: int                   # foregrounds per unit


@dataclass(frozen=True)
class StoredRefine:
    """A refine result read back: per-budget arrays with leading axes (budgets, foregrounds)."""

    name: str
    attrs: dict
    budgets: tuple[dict, ...]
    run: dict
    fg_id: np.ndarray
    start_bg: np.ndarray
    true_class: np.ndarray
    cols: dict[str, np.ndarray]

    def budget_cols(self, b: int) -> dict[str, np.ndarray]:
        """The arrays of budget ``b`` (index into ``budgets``), one row per foreground."""
        return {k: v[b] for k, v in self.cols.items()}

    def budget_index(self, name: str | None = None) -> int:
        """Index of budget ``name``; None: the largest L-infinity EPS, else the first that is not min-eps."""
        names = [b["name"] for b in self.budgets]
        if name is None:
            linf = [k for k, n in enumerate(names) if n.startswith("linf:")]
            if linf:
                return max(linf, key=lambda k: float(np.nanmax(self.cols["eps"][k], initial=0.0)))
            return next((k for k, n in enumerate(names) if n != "min-eps"), 0)
        if name not in names:
            raise AdvbgError(f"refine results {self.name!r} have no budget {name!r}; they have: {', '.join(names)}")
        return names.index(name)


def refine_fingerprint(store: Store, **parts) -> str:
    """What must agree for units of two refine runs to be merged: store content and every setting in ``parts``
    (arrays by their bytes, everything else by its JSON)."""
    h = hashlib.sha256(store.digest().encode() + b"\0")
    for key in sorted(parts):
        v = parts[key]
        h.update(key.encode() + b"=" + (np.asarray(v, np.int64).tobytes() if isinstance(v, np.ndarray)
                                        else json.dumps(v, sort_keys=True, default=str).encode()) + b"\0")
    return h.hexdigest()[:24]


class RefineSink:
    """Commits a refine's units to its journal (``<store>.<name>.journal``) and writes its results file."""

    def __init__(self, store: Store, name: str, rid: RefineId, journal: Journal, done: np.ndarray,
                 stored: bool, discarded: int = 0):
        self.store, self.name, self.id, self.journal, self.done, self.stored = store, name, rid, journal, done, stored
        self.discarded = discarded      # committed units of an interrupted run dropped (no resume asked)
        self._writer = None

    @classmethod
    def open(cls, store: Store, name: str, rid: RefineId, *, resume: bool) -> RefineSink:
        """Fresh (an old journal of ``name`` is dropped) or, with ``resume``, continuing the committed units of an
        interrupted run with the same fingerprint (``stored``: a finished identical result is in the store)."""
        check_name(name)
        journal = Journal(journal_folder(store.path, name))
        n = len(rid.fg_id)
        if resume:
            jfp = journal.fingerprint()
            if jfp == rid.fingerprint:
                return cls(store, name, rid, journal, journal.done_rows(n), False)
            g = store.results.get(name)
            if jfp is None and g is not None and g.attrs.get("complete") and g.attrs.get("fingerprint") == rid.fingerprint:
                return cls(store, name, rid, journal, np.ones(n, bool), True)
            if jfp is not None:
                raise AdvbgError(f"refine {name!r} of {store.path} was interrupted with other settings (model, "
                                 f"search, budgets, steps, seed, start or batch size differ); resume needs the same "
                                 f"settings, or drop --resume")
        discarded = sum(1 for _ in journal.records(("start",))) if journal.exists() else 0
        journal.create(rid.fingerprint, dict(fg_id=rid.fg_id, start_bg=rid.start_bg), dict(unit=rid.unit))
        return cls(store, name, rid, journal, np.zeros(n, bool), False, discarded)

    def units(self) -> list[Unit]:
        n, u = len(self.id.fg_id), max(1, self.id.unit)
        return [(i, min(i + u, n)) for i in range(0, n, u)]

    def todo(self) -> list[Unit]:
        """Units not committed yet, in order."""
        return [(a, b) for a, b in self.units() if not self.done[a:b].all()]

    def commit(self, unit: Unit, cols: dict[str, np.ndarray]) -> None:
        """Record a finished unit: every PER_BUDGET array with shape (budgets, rows, ...)."""
        a, b = unit
        want = (len(self.id.budgets), b - a)
        for k in PER_BUDGET:
            if np.shape(cols[k])[:2] != want:
                raise AdvbgError(f"refine unit {a}..{b}: {k} has shape {np.shape(cols[k])}, want (budgets, rows) = "
                                 f"{want} + ...")
        if self._writer is None:
            self._writer = self.journal.writer(0)
        self._writer.append(dict({k: np.asarray(cols[k]) for k in PER_BUDGET}, start=np.int64(a), stop=np.int64(b)))
        self.done[a:b] = True

    def finish(self, run: dict) -> StoredRefine:
        """Write the results file from the committed units, remove the journal; the result read back, checked."""
        if self._writer is not None:
            self._writer.close()
        if not self.stored:
            cols = self._assemble()
            write_refine(self.store, self.name, self.id, cols, run)
            self.journal.remove()
        return load_refine(self.store, self.name)

    def _assemble(self) -> dict[str, np.ndarray]:
        n = len(self.id.fg_id)
        parts: dict[int, dict] = {}
        for rec in self.journal.records():
            parts[int(rec["start"])] = rec                 # a unit redone after a torn tail: the last one counts
        got = np.zeros(n, bool)
        for a, rec in parts.items():
            got[a:int(rec["stop"])] = True
        if not got.all():
            raise AdvbgError(f"refine {self.name!r}: {int((~got).sum())} foregrounds have no committed unit; "
                             f"rerun with --resume")
        order = sorted(parts)
        return {k: np.concatenate([parts[a][k] for a in order], axis=1) for k in PER_BUDGET}


def write_refine(store: Store, name: str, rid: RefineId, cols: dict[str, np.ndarray], run: dict) -> None:
    """The one writer of refine results: ``<store>.d/results/<name>.h5`` (layout in the module docstring) from
    per-budget arrays of shape (budgets, foregrounds, ...)."""
    nb, n = len(rid.budgets), len(rid.fg_id)
    rows = dict(fg_id=np.tile(rid.fg_id, nb), start_bg=np.tile(rid.start_bg, nb),
                budget=np.repeat(np.arange(nb, dtype=np.int64), n), true_class=np.tile(rid.true_class, nb))
    with store.write_derived("results", name) as f:
        f.attrs.update(rid.attrs)
        f.attrs.update(kind="refine", fingerprint=rid.fingerprint, run=json.dumps(run, default=str),
                       budgets=json.dumps(list(rid.budgets)), completed=now())
        for k, dtype in REFINE_COLUMNS.items():
            v = rows[k] if k in rows else np.asarray(cols[k]).reshape(nb * n)
            f.create_dataset(k, data=np.asarray(v).astype(dtype))
        f.create_dataset("params", data=np.asarray(cols["params"], np.float64).reshape(nb * n, -1))
        bg = np.asarray(cols["background"], np.uint8).reshape((nb * n,) + np.shape(cols["background"])[2:])
        f.create_dataset("background", data=bg, chunks=(1,) + bg.shape[1:] if len(bg) else None, compression="gzip")


def refine_names(store: Store) -> list[str]:
    """Names of the store's refine results."""
    return [k for k, g in store.results.items() if g.attrs.get("kind") == "refine"]


def load_refine(store: Store, name: str | None = None) -> StoredRefine:
    """Refine results ``name`` (None: the latest complete), checked against the store (StoreError when damaged)."""
    names = refine_names(store)
    if name is None:
        done = [n for n in names if store.results[n].attrs.get("complete")]
        if not done:
            raise AdvbgError(f"{store.path} has no complete refine results; run `advbg refine` first")
        name = max(done, key=lambda n: str(store.results[n].attrs.get("completed", "")))
    if name not in names:
        raise AdvbgError(f"{store.path} has no refine results named {name!r}; it has: {', '.join(names) or 'none'}")
    g = store.results[name]
    if not g.attrs.get("complete"):
        raise AdvbgError(f"refine results {name!r} are incomplete; finish them with `advbg refine --resume`")
    try:
        why = refine_problem(store, g)
        if why is None:
            return _read(name, g)
    except (ValueError, KeyError, TypeError, OSError) as e:
        why = f"{type(e).__name__}: {e}"
    raise StoreError(f"refine results {name!r} of {store.path} are damaged ({why}); remove them and run "
                     f"`advbg refine` again")


def _read(name: str, g) -> StoredRefine:
    budgets = tuple(json.loads(g.attrs["budgets"]))
    nb = len(budgets)
    fg = g["fg_id"][()]
    n = len(fg) // nb
    cols = {k: g[k][()].reshape((nb, n) + g[k].shape[1:]) for k in PER_BUDGET}
    for k in ("fooled_before", "fooled_after"):
        cols[k] = cols[k].astype(bool)
    attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in g.attrs.items()}
    return StoredRefine(name=name, attrs=attrs, budgets=budgets, run=json.loads(g.attrs["run"]), fg_id=fg[:n],
                        start_bg=g["start_bg"][:n], true_class=g["true_class"][:n], cols=cols)


def refine_problem(store: Store, g: h5py.Group) -> str | None:
    """Why a refine results group does not fit its layout or the store (None when it does). Reads every row."""
    missing = [k for k in tuple(REFINE_COLUMNS) + ("params", "background") if not isinstance(g.get(k), h5py.Dataset)]
    if missing:
        return f"lacks {', '.join(missing)}"
    try:
        budgets = json.loads(g.attrs["budgets"])
        json.loads(g.attrs["run"])
    except (KeyError, TypeError, ValueError):
        return "its budgets or run record are not readable JSON"
    nb = len(budgets) if isinstance(budgets, list) else 0
    r = g["fg_id"].shape[0] if g["fg_id"].ndim == 1 else -1
    if not nb or r < 0 or r % nb:
        return f"{r} rows do not split into {nb} budgets"
    for k in tuple(REFINE_COLUMNS) + ("params", "background"):
        if g[k].shape[:1] != (r,):
            return f"{k} has shape {g[k].shape} for {r} rows"
    n = r // nb
    fg, start, budget = g["fg_id"][()], g["start_bg"][()], g["budget"][()]
    if not np.array_equal(budget, np.repeat(np.arange(nb), n)):
        return "the budget column is not budget-major 0..budgets-1"
    if any(not np.array_equal(x.reshape(nb, n), np.tile(x[:n], (nb, 1))) for x in (fg, start)):
        return "fg_id / start_bg differ between budgets"
    if fg.size and (fg.min() < 0 or fg.max() >= len(store.foregrounds)):
        return f"fg_id outside 0..{len(store.foregrounds) - 1}"
    if start.size and (start.min() < 0 or start.max() >= len(store.backgrounds)):
        return f"start_bg outside 0..{len(store.backgrounds) - 1}"
    if not np.array_equal(g["true_class"][()], store.foregrounds.labels[fg]):
        return "true_class differs from the store's labels of its foregrounds"
    bg = g["background"]
    if bg.dtype != np.uint8 or bg.shape[1:] != store.image_size + (3,):
        return f"background is {bg.dtype} {bg.shape}, not (rows, H, W, 3) uint8 of the store's image size"
    for k in ("fooled_before", "fooled_after"):
        if not np.isin(g[k][()], (0, 1)).all():
            return f"{k} holds values other than 0/1"
    before, after = g["margin_before"][()], g["margin_after"][()]
    if (after > before + 1e-9).any():
        return "a margin after refinement exceeds its margin before (the start is always a candidate)"
    for k in ("pred_before", "pred_after"):
        p = g[k][()]
        if p.size and (p.min() < -1 or p.max() >= len(store.class_names)):
            return f"{k} outside -1..{len(store.class_names) - 1}"
    for start_at in range(0, r, 256):       # every byte of the refined backgrounds readable
        bg[start_at:start_at + 256]
    return None
