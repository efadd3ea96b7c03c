"""Reading stored search results back, checked: a results file someone edited, truncated or wrote with another tool
(short arrays, ids outside the store, an outcome matrix of the wrong width, a run record that is not JSON) is
refused in one line (StoreError) instead of failing deep inside an analysis. Every reader goes through here."""
from __future__ import annotations

import json

import numpy as np

from advbg.data.sidecar import sidecar_folder
from advbg.data.store import Store
from advbg.errors import AdvbgError, StoreError
from advbg.search.results.schema import FIELDS, PER_FOREGROUND, RunRecord, SearchResult


def result_names(store: Store, kind: str = "search") -> list[str]:
    """Names of the store's results of ``kind``."""
    return [k for k, g in store.results.items() if g.attrs.get("kind") == kind]


def _damaged(store: Store, name: str | None, why: str) -> StoreError:
    file = sidecar_folder(store.path) / "results" / f"{name}.h5"
    where = file if name and file.is_file() else store.path
    return StoreError(f"results {name or '(latest)'!r} in {where} are damaged ({why}); `advbg search --recompute` "
                      f"with the same settings writes them again")


def load_search(store: Store, name: str | None = None, require_complete: bool = True) -> SearchResult:
    """A stored search as a SearchResult (``name=None``: the most recent complete one), checked against the
    store (StoreError when damaged)."""
    try:
        res = _load_search(store, name, require_complete)
    except AdvbgError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:  # bad JSON, missing or odd datasets
        raise _damaged(store, name, f"{type(e).__name__}: {e}") from None
    _check_rows(store, res)
    return res


def _load_search(store: Store, name: str | None, require_complete: bool) -> SearchResult:
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
                        class_names=store.class_names, results_name=name, **{k: g[k][()] for k in FIELDS})


def _check_rows(store: Store, res: SearchResult) -> None:
    name = res.results_name
    fg = np.asarray(res.fg_id)
    if fg.ndim != 1:
        raise _damaged(store, name, "fg_id is not a list of ids")
    for k in PER_FOREGROUND:
        v = np.asarray(getattr(res, k))
        if v.shape != fg.shape:
            raise _damaged(store, name, f"{k} has shape {v.shape}, fg_id {fg.shape}")
    _in_range(store, name, "fg_id", fg, 0, len(store.foregrounds))
    for k in ("worst_bg", "first_fooling_bg"):
        _in_range(store, name, k, np.asarray(getattr(res, k)), -1, len(store.backgrounds))
    if res.run is not None and not isinstance(res.run.classifier, dict):
        raise _damaged(store, name, "the run record's classifier is not a JSON object")


def load_outcome(store: Store, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(outcome (F, B) uint8, fg_id (F,), bg_pool (B,)) of a stored search that recorded outcomes, checked
    against the store (StoreError otherwise)."""
    g = store.results.get(name)
    if g is None or "outcome" not in g:
        raise AdvbgError(f"results {name!r} in {store.path} hold no outcome matrix (run an exhaustive search)")
    try:
        outcome, fg, pool = g["outcome"][()], g["fg_id"][()], g["bg_pool"][()]
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise _damaged(store, name, f"{type(e).__name__}: {e}") from None
    outcome_problem(store, outcome, fg, pool, name)
    return outcome, fg, pool


def outcome_problem(store: Store, outcome: np.ndarray, fg: np.ndarray, pool: np.ndarray, name: str,
                    raise_: bool = True) -> str | None:
    """Why an outcome matrix does not fit its ids and the store (None when it does); raises StoreError if asked."""
    why = None
    if fg.ndim != 1 or pool.ndim != 1:
        why = "fg_id / bg_pool are not lists of ids"
    elif outcome.dtype != np.uint8 or outcome.shape != (len(fg), len(pool)):
        why = f"outcome matrix {outcome.dtype} {outcome.shape} does not fit {len(fg)} foregrounds x {len(pool)} backgrounds"
    elif fg.size and (fg.min() < 0 or fg.max() >= len(store.foregrounds)):
        why = f"fg_id outside 0..{len(store.foregrounds) - 1}"
    elif pool.size and (pool.min() < 0 or pool.max() >= len(store.backgrounds)):
        why = f"bg_pool outside 0..{len(store.backgrounds) - 1}"
    if why and raise_:
        raise _damaged(store, name, why)
    return why


def _in_range(store: Store, name: str, what: str, v: np.ndarray, lo: int, hi: int) -> None:
    if v.size and (v.min() < lo or v.max() >= hi):
        raise _damaged(store, name, f"{what} outside {lo}..{hi - 1}")
