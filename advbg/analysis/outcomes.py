"""The fg x bg outcome matrix for `universal`: read from stored searches of the same classifier, completed by an
exhaustive search only where pairs are missing.

A stored results group counts for a classifier when its recorded classifier config agrees on everything that
decides a prediction (architecture, weight tag and hash, label map, normalisation, input size, classes) and, once
finished, on the store digest. Every such group contributes its evaluated pairs (255 = not evaluated): complete
exhaustive searches first, then the rest (early-exit and pruned searches, interrupted ones). What the analysis
needs and no group holds is computed once by ``search(..., SearchConfig(mode="exhaustive"))`` over just the
missing foregrounds x backgrounds, which writes its own results group, so the next run does no forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.models.classifier import identity_of
from advbg.models.precision import resolve_amp
from advbg.search.config import SearchConfig
from advbg.search.criteria import check_invalid_marked
from advbg.search.results import (
    OUTCOME_MISSING,
    fingerprint,
    listing,
    load_outcome,
    load_search,
    pending_fingerprint,
    result_names,
)
from advbg.search.runner import default_results_name, search

# ClassifierConfig fields that decide a mapped prediction (versions, names and file paths do not).


@dataclass(frozen=True)
class StoredOutcome:
    """The outcome matrix over the whole store (rows = fg_id, columns = bg_id) and where it came from."""

    outcome: np.ndarray            # (F, B) uint8 mapped predictions, 253 = NaN/inf, 254 = "none", 255 = missing
    fg_class: np.ndarray           # (F,) store foreground labels
    bg_class: np.ndarray           # (B,) store background labels (-1 = no class)
    bg_source_ids: tuple[str, ...]
    sources: tuple[str, ...]       # results groups read
    forwards: int = 0              # composites evaluated here to fill the gaps
    computed: str | None = None    # results group the filling search wrote
    notes: tuple[str, ...] = ()



def matching_results(store: Store, identity: dict) -> list[str]:
    """Names of results groups with an outcome matrix from the classifier of this ``identity``
    (ClassifierConfig.identity()) on this store, best first."""
    want, digest = identity, store.digest()
    found = []
    for info in listing(store, "search"):
        classifier, run = info.json_attr("classifier"), info.json_attr("run") or {}
        if "outcome" not in info.shapes or classifier is None:
            continue
        try:
            have = identity_of(classifier)
        except (KeyError, ValueError, TypeError, AttributeError):
            continue
        if have == want and run.get("store_digest", digest) == digest:
            found.append(info)
    found.sort(key=lambda i: (not i.complete, i.attrs.get("mode") != "exhaustive", i.name))
    return [i.name for i in found]


def stored_outcome(store: Store, identity: dict, skipped: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """(outcome (F, B) over the whole store, names of the groups that contributed) from the results of the
    classifier of this ``identity``. A damaged group (one ``advbg verify`` reports) is never used: its pairs count
    as missing, and a note saying so is appended to ``skipped``."""
    full = np.full((len(store.foregrounds), len(store.backgrounds)), OUTCOME_MISSING, np.uint8)
    used = []
    for name in matching_results(store, identity):
        try:
            o, fg, pool = load_outcome(store, name)
            # a group that records NaN/inf composites as predictions is not reused: its pairs are recomputed
            check_invalid_marked(o, load_search(store, name, require_complete=False).n_invalid, name)
        except AdvbgError as e:
            if skipped is not None:
                skipped.append(f"skipped stored outcomes {name!r}: {e}")
            continue
        if not fg.size or not pool.size:
            continue
        block = full[np.ix_(fg, pool)]                                    # (f, b) what we have so far
        fill = (block == OUTCOME_MISSING) & (o != OUTCOME_MISSING)
        if fill.any():
            block[fill] = o[fill]
            full[np.ix_(fg, pool)] = block
            used.append(name)
    return full, used


def needed(fg_class: np.ndarray, bg_class: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) masks of the pairs the analysis of ``classes`` reads: their backgrounds x their targets."""
    cols = np.isin(bg_class, list(classes))
    present = np.unique(bg_class[cols])
    # A foreground is needed when some needed background has another class than its own.
    only_own = (len(present) == 1) & (fg_class == (present[0] if len(present) else -2))
    return (fg_class >= 0) & ~only_own, cols


def obtain_outcome(store_path: Path, classifier, classes: Sequence[int], criterion: str, *, compute: bool = True,
                   batch_size: int | None = None, progress: bool = True,
                   echo: Callable[[str], None] = print) -> StoredOutcome:
    """Stored outcome matrix for ``classifier``; missing pairs that ``classes`` need are computed (or refused)."""
    with Store(store_path) as s:
        fg_class, bg_class = s.foregrounds.labels.copy(), s.backgrounds.labels.copy()
        source_ids = tuple(s.backgrounds.source_ids)
        skipped: list[str] = []
        full, used = stored_outcome(s, classifier.config.identity(), skipped)
    for line in skipped:
        echo(line)
    rows, cols = needed(fg_class, bg_class, classes)
    gap = (full == OUTCOME_MISSING) & rows[:, None] & cols[None, :]
    if not gap.any():
        return StoredOutcome(full, fg_class, bg_class, source_ids, tuple(used), notes=tuple(skipped))
    if not compute:
        raise AdvbgError(f"{_gap_note(gap, rows, cols, used, classifier, computing=False)} and --no-search allows no "
                         f"search: rerun without --no-search to compute them")
    note = _gap_note(gap, rows, cols, used, classifier)
    echo(note)
    fg_sel, bg_sel = np.flatnonzero(gap.any(1)), np.flatnonzero(gap.any(0))
    cfg = SearchConfig(criterion=criterion, mode="exhaustive", batch_size=batch_size,
                       foregrounds=tuple(int(i) for i in fg_sel), backgrounds=tuple(int(j) for j in bg_sel))
    with Store(store_path, mode="r+") as s:
        name = _fill_name(s, classifier, cfg, fg_sel, bg_sel)
        # resume=True: a journal under this name is an interrupted run of exactly this search; it continues.
        res = search(s, classifier, cfg, results_name=name, resume=True, progress=progress)
        full, used = stored_outcome(s, classifier.config.identity())
    return StoredOutcome(full, fg_class, bg_class, source_ids, tuple(used), res.run.forwards, name,
                         (*skipped, note))


def _gap_note(gap: np.ndarray, rows: np.ndarray, cols: np.ndarray, used: list[str], classifier,
              computing: bool = True) -> str:
    """What is missing and, when ``computing``, what will be done about it."""
    n_gap, n_need = int(gap.sum()), int(rows.sum()) * int(cols.sum())
    tag = classifier.config.tag
    if not used:
        return f"no stored outcome matrix for {tag} in this store" + (
            f": computing {n_gap} composites once with an exhaustive search (later runs reuse it)" if computing
            else f" ({n_gap} composites needed)")
    return (f"stored outcomes for {tag} ({', '.join(used)}) lack {n_gap} of the {n_need} pairs needed (early-exit, "
            f"pruned or partial searches stop short)" + (": computing them with an exhaustive search" if computing
                                                         else ""))


def _fill_name(store: Store, classifier, cfg: SearchConfig, fg_sel: np.ndarray, bg_sel: np.ndarray) -> str:
    """``advbg search``'s own name when the whole store is searched and the name is free (or holds an interrupted
    run of this very search); else that name plus the search fingerprint (store, classifier, selection,
    precision), so a journal left under it is always resumable."""

    fp = fingerprint(store, fg_sel, bg_sel, classifier, cfg, resolve_amp(classifier.device, cfg.amp))
    plain = default_results_name(classifier, cfg)
    whole = len(fg_sel) == len(store.foregrounds) and len(bg_sel) == len(store.backgrounds)
    if whole and plain not in result_names(store, None) and pending_fingerprint(store.path, plain) in (None, fp):
        return plain
    return f"{plain}.fill-{fp[:8]}"
