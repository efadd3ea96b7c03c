"""Reading stored search results back, checked: a results file someone edited, truncated, damaged on disk (a failed
fletcher32 checksum) or wrote with another tool is refused in one line (StoreError) instead of failing deep inside an
analysis. The checks are ``advbg verify``'s own rules (``rules.search_problems``): a read refuses exactly what verify
reports. Every reader goes through here, listings (``listing``) included."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import h5py
import numpy as np

from advbg.data.sidecar import sidecar_folder
from advbg.data.store import Store
from advbg.errors import AdvbgError, StoreError
from advbg.search.results.rules import search_problems, unreadable_why
from advbg.search.results.schema import ADDED_COLUMNS, COLUMNS, FIELDS, RunRecord, SearchResult


def result_names(store: Store, kind: str | None = "search") -> list[str]:
    """Names of the store's results of ``kind`` (None: of every kind)."""
    return [k for k, g in store.results.items() if kind is None or g.attrs.get("kind") == kind]


def complete_searches(store: Store) -> list[SearchResult]:
    """Every complete search of the store, checked (StoreError for a damaged one), oldest first."""
    groups = {k: g for k, g in store.results.items() if g.attrs.get("kind") == "search" and g.attrs.get("complete")}
    names = sorted(groups, key=lambda n: (str(groups[n].attrs.get("completed", "")), n))
    return [load_search(store, n) for n in names]


def _damaged(store: Store, name: str | None, why: str) -> StoreError:
    file = sidecar_folder(store.path) / "results" / f"{name}.h5"
    where = file if name and file.is_file() else store.path
    return StoreError(f"results {name or '(latest)'!r} in {where} are damaged ({why}); `advbg search --recompute` "
                      f"with the same settings writes them again")


def load_search(store: Store, name: str | None = None, require_complete: bool = True) -> SearchResult:
    """A stored search as a SearchResult (``name=None``: the most recent complete one), checked against the
    store (StoreError when damaged)."""
    try:
        return _load_search(store, name, require_complete)
    except AdvbgError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:  # bad JSON, missing or odd datasets
        raise _damaged(store, name, unreadable_why(e)) from None


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
    check_group(store, name, g)
    run = RunRecord.from_dict(json.loads(g.attrs["run"])) if "run" in g.attrs else None
    fg_id = g["fg_id"][()]
    return SearchResult(run=run, fg_id=fg_id, true_class=g["true_class"][()], class_names=store.class_names,
                        results_name=name, **{k: _column(g, k, fg_id.shape) for k in FIELDS})


def _column(g, k: str, shape: tuple) -> np.ndarray:
    """A stored column; one added after the file was written (ADDED_COLUMNS) reads as its fill."""
    if k in ADDED_COLUMNS and k not in g:
        dtype, fill = COLUMNS[k]
        return np.full(shape, fill, dtype)
    return g[k][()]


def check_group(store: Store, name: str, g: h5py.Group) -> None:
    """Refuse (StoreError) a search result that ``advbg verify`` would report: the same rules, the first problem
    named."""
    try:
        problems = search_problems(store, name, name, g)
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:    # unreadable bytes, checksum failed
        raise _damaged(store, name, unreadable_why(e)) from None
    if problems:
        more = f"; {len(problems) - 1} more: `advbg verify` lists them" if len(problems) > 1 else ""
        raise _damaged(store, name, problems[0] + more)


def load_outcome(store: Store, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(outcome (F, B) uint8, fg_id (F,), bg_pool (B,)) of a stored search that recorded outcomes, checked
    against the store (StoreError otherwise)."""
    g = store.results.get(name)
    if g is None or "outcome" not in g:
        raise AdvbgError(f"results {name!r} in {store.path} hold no outcome matrix (run an exhaustive search)")
    check_group(store, name, g)
    try:
        outcome, fg, pool = g["outcome"][()], g["fg_id"][()], g["bg_pool"][()]
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise _damaged(store, name, unreadable_why(e)) from None
    return outcome, fg, pool


@dataclass(frozen=True)
class ResultInfo:
    """What a listing says of one stored result without reading its data: its attributes (JSON ones parsed where
    they parse) and its datasets' shapes."""

    name: str
    kind: str
    complete: bool
    completed: str
    attrs: dict
    shapes: dict = field(default_factory=dict)

    def json_attr(self, key: str) -> dict | None:
        """Attribute ``key`` parsed as a JSON object (None when absent or not one)."""
        try:
            v = json.loads(self.attrs[key])
        except (KeyError, TypeError, ValueError):
            return None
        return v if isinstance(v, dict) else None


def listing(store: Store, kind: str | None = None, *, complete: bool | None = None) -> list[ResultInfo]:
    """The store's results (of ``kind``; only complete / incomplete ones when asked), oldest completed first.
    Reads attributes and shapes only: use ``load_search`` / ``load_outcome`` for the data."""
    out = []
    for name, g in store.results.items():
        try:
            attrs = {k: g.attrs[k] for k in g.attrs}
            shapes = {k: tuple(ds.shape) for k, ds in g.items() if isinstance(ds, h5py.Dataset)}
        except (OSError, KeyError, RuntimeError, ValueError):
            continue                # unreadable: `advbg verify` reports it
        info = ResultInfo(name, str(attrs.get("kind", "?")), bool(attrs.get("complete")),
                          str(attrs.get("completed", "")), attrs, shapes)
        if (kind is None or info.kind == kind) and (complete is None or info.complete == complete):
            out.append(info)
    return sorted(out, key=lambda i: (i.completed, i.name))


def result_info(store: Store, name: str) -> ResultInfo:
    """The listing entry of results ``name`` (AdvbgError when there is none)."""
    for info in listing(store):
        if info.name == name:
            return info
    raise AdvbgError(f"{store.path} has no results named {name!r}")
