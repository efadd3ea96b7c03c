"""Stored search results as the analyses read them, checked: a results group someone edited, truncated or wrote with
another tool (short arrays, ids outside the store, an outcome matrix of the wrong width, a run record that is not
JSON) is refused in one line (StoreError) instead of failing deep inside an analysis.

The checks are on what ``load_search`` / ``load_outcome`` return, so they hold whatever the storage layout."""
from __future__ import annotations

import numpy as np

from advbg.data.store import Store
from advbg.errors import AdvbgError, StoreError
from advbg.search.results import SearchResult, load_outcome, load_search

PER_FOREGROUND = ("true_class", "worst_bg", "worst_margin", "worst_pred", "first_fooling_bg", "n_fooling",
                  "n_evaluated", "n_invalid")


def _damaged(store: Store, name: str | None, why: str) -> StoreError:
    return StoreError(f"results {name or '(latest)'!r} of {store.path} are damaged ({why}); remove them and run "
                      f"the search again")


def load_search_checked(store: Store, name: str | None = None) -> SearchResult:
    """``load_search`` plus the consistency every reader relies on (StoreError otherwise)."""
    try:
        res = load_search(store, name)
    except AdvbgError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:  # bad JSON, missing or odd datasets
        raise _damaged(store, name, f"{type(e).__name__}: {e}") from None
    name = res.results_name
    n_fg, n_bg = len(store.foregrounds), len(store.backgrounds)
    fg = np.asarray(res.fg_id)
    if fg.ndim != 1:
        raise _damaged(store, name, "fg_id is not a list of ids")
    for k in PER_FOREGROUND:
        v = np.asarray(getattr(res, k))
        if v.shape != fg.shape:
            raise _damaged(store, name, f"{k} has shape {v.shape}, fg_id {fg.shape}")
    _in_range(store, name, "fg_id", fg, 0, n_fg)
    for k in ("worst_bg", "first_fooling_bg"):
        _in_range(store, name, k, np.asarray(getattr(res, k)), -1, n_bg)
    if res.run is not None and not isinstance(res.run.classifier, dict):
        raise _damaged(store, name, "the run record's classifier is not a JSON object")
    return res


def load_outcome_checked(store: Store, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``load_outcome`` with the matrix's shape and ids checked against the store (StoreError otherwise)."""
    try:
        outcome, fg, pool = load_outcome(store, name)
    except AdvbgError:
        raise
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
