"""`advbg verify`: is a store intact? Schema, counts, every item's checksum, and the state of every written group.

What counts as a problem (exit code 1): a store that does not open (truncated, incomplete, not a store, being
written), an item whose bytes no longer match the checksum stored when it was written or that cannot be decoded,
mask values other than 0/1, labels outside the class list, counts that differ from those recorded at completion,
The derived files beside the store (results, embeddings) are checked by their owner,
``advbg.search.results.verify_results``; ``advbg.search.results.verify_all`` runs both.
The checks a command runs on a store before working on its items live here too, so that every command refuses a
damaged store in the same line: ``check_labels`` (labels outside the class list) and ``store_reads`` /
``damaged_store`` (an item HDF5 cannot decode).
Flagged but not a problem: empty or whole-image masks (they are legal in a store; ``advbg.data.imageio.check_mask``
refuses them when reading new data).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from advbg.data.store import ItemSet, Store, item_checksum
from advbg.errors import AdvbgError, StoreError
from advbg.progress import progress as progress_bar

# Problems of one kind listed one per line up to this many; the rest are counted (a store with every item
# corrupted should not print 8,000 lines).
MAX_LINES_PER_KIND = 20


@dataclass
class VerifyReport:
    """What ``verify_store`` found: ``lines`` to print, ``problems`` (empty when the store is intact)."""

    path: Path
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _per_kind: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, kind: str, text: str) -> None:
        """Record a problem; after MAX_LINES_PER_KIND of one kind only the count grows."""
        n = self._per_kind[kind] = self._per_kind.get(kind, 0) + 1
        self.problems.append(text)
        if n <= MAX_LINES_PER_KIND:
            self.lines.append(f"PROBLEM: {text}")

    def summary(self) -> str:
        hidden = sum(max(0, n - MAX_LINES_PER_KIND) for n in self._per_kind.values())
        more = f" ({hidden} more not listed)" if hidden else ""
        if self.ok:
            return f"verify: {self.path} is intact"
        return f"verify: {len(self.problems)} problem(s) in {self.path}{more}; see the PROBLEM lines above"


def verify_store(path: str | os.PathLike, *, block: int = 64, progress: bool = False) -> VerifyReport:
    """Check everything ``advbg verify`` checks; raises AdvbgError only when the store cannot be opened."""
    report = VerifyReport(Path(path))
    with Store(path) as s:
        a = s.attrs
        report.lines.append(f"store {s.path}: schema {int(a['advbg_schema'])}, written by advbg "
                            f"{a.get('advbg_version', '?')} on {a.get('created', '?')}, {s.image_size[0]}x"
                            f"{s.image_size[1]} px, {len(s.class_names)} classes, digest {s.digest()}")
        _check_counts(s, report)
        _check_items(s, s.foregrounds, "foregrounds", report, block, progress)
        _check_items(s, s.backgrounds, "backgrounds", report, block, progress)
    return report


# --------------------------------------------------------------------------------------------- before work
def check_labels(store: Store, fg_ids: np.ndarray | None = None, bg_ids: np.ndarray | None = None) -> None:
    """Refuse (one line) a store whose labels of the chosen foregrounds / backgrounds (None: all) lie outside its
    class list (foregrounds 0..C-1 or -1, backgrounds also -1): every command that computes on items checks this
    before any work, as ``advbg verify`` reports it."""
    n_cls = len(store.class_names)
    for what, labels, ids in (("foreground", store.foregrounds.labels, fg_ids),
                              ("background", store.backgrounds.labels, bg_ids)):
        chosen = labels if ids is None else labels[np.asarray(ids, np.int64)]
        bad = (chosen >= n_cls) | (chosen < -1)
        if bad.any():
            raise AdvbgError(f"{int(bad.sum())} {what} labels of {store.path} are outside 0..{n_cls - 1} (e.g. "
                             f"{int(chosen[bad][0])}); the store is inconsistent: check it with `advbg verify`")


def damaged_store(path: str | os.PathLike, what: str, e: BaseException) -> StoreError:
    """The one-line error for store bytes HDF5 cannot read (a damaged compressed chunk, a cut file)."""
    first = (str(e).splitlines() or [type(e).__name__])[0]
    return StoreError(f"{path}: cannot read {what} ({first}); the store is damaged: check it with `advbg verify`, or "
                      f"rebuild it")


@contextlib.contextmanager
def store_reads(store: Store, what: str = "its items") -> Iterator[None]:
    """Reads from ``store`` inside the block: an item HDF5 cannot decode raises ``damaged_store`` (one line)."""
    try:
        yield
    except OSError as e:
        raise damaged_store(store.path, what, e) from None


def _check_counts(s: Store, report: VerifyReport) -> None:
    for what, items in (("foregrounds", s.foregrounds), ("backgrounds", s.backgrounds)):
        recorded = s.attrs.get(f"n_{what}")
        if recorded is not None and int(recorded) != len(items):
            report.problem("count", f"/{what} holds {len(items)} items but the store recorded {int(recorded)} "
                                    f"when it was completed (items added or removed afterwards)")
        low = 0 if what == "foregrounds" else -1
        bad = np.flatnonzero((items.labels < low) | (items.labels >= len(s.class_names)))
        for i in bad:
            report.problem("label", f"{what[:-1]} {i} ({items.source_ids[i]!r}) has label {items.labels[i]}, "
                                    f"outside {low}..{len(s.class_names) - 1}")


def _check_items(s: Store, items: ItemSet, what: str, report: VerifyReport, block: int, progress: bool) -> None:
    masks = getattr(items, "masks", None)
    n, ok, empty, full = len(items), 0, [], []
    for start in progress_bar(range(0, n, block), desc=f"verify {what}", unit="block", enabled=progress):
        idx = range(start, min(start + block, n))
        try:
            imgs = items.images[idx.start:idx.stop]
            ms = masks[idx.start:idx.stop] if masks is not None else None
        except (OSError, ValueError):  # one undecodable chunk spoils the block: find which items
            imgs = ms = None
        for k, i in enumerate(idx):
            try:
                img = imgs[k] if imgs is not None else items.images[i]
                m = (ms[k] if ms is not None else masks[i]) if masks is not None else None
            except (OSError, ValueError) as e:
                report.problem("unreadable", f"{what[:-1]} {i} ({items.source_ids[i]!r}) cannot be decoded: "
                                             f"{str(e).splitlines()[0]}")
                continue
            got = item_checksum(img, m) if m is not None else item_checksum(img)
            stored = int(items.checksums[i])
            if got != stored:
                report.problem("checksum", f"{what[:-1]} {i} ({items.source_ids[i]!r}): checksum mismatch "
                                           f"(stored {stored:016x}, recomputed {got:016x}): its pixels changed "
                                           f"after it was written")
                continue
            ok += 1
            if m is not None:
                _check_mask_values(m, i, items, report, empty, full)
    line = f"{what}: {n}, checksums verified {ok}/{n}"
    if masks is not None:
        line += f"; masks flagged: {len(empty)} empty{_ids(empty)}, {len(full)} whole-image{_ids(full)}"
    report.lines.append(line)


def _check_mask_values(m: np.ndarray, i: int, items: ItemSet, report: VerifyReport, empty: list, full: list) -> None:
    if m.max(initial=0) > 1:
        report.problem("mask", f"foreground {i} ({items.source_ids[i]!r}) has mask values other than 0/1")
    total = int(m.sum())
    if total == 0:
        empty.append(i)
    elif total == m.size:
        full.append(i)


def _ids(ids: list[int]) -> str:
    if not ids:
        return ""
    return " (fg_id " + ", ".join(map(str, ids[:10])) + (", ..." if len(ids) > 10 else "") + ")"
