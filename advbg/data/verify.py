"""`advbg verify`: is a store intact? Schema, counts, every item's checksum, and the state of every written group.

What counts as a problem (exit code 1): a store that does not open (truncated, incomplete, not a store, being
written), an item whose bytes no longer match the checksum stored when it was written or that cannot be decoded,
mask values other than 0/1, labels outside the class list, counts that differ from those recorded at completion,
and a results / embeddings file (``<store>.d/``) or evaluation-set group that cannot be opened or read to its last
byte, is incomplete (interrupted), marked complete with units not done, inconsistent with the store's items
(ids out of range, rows that do not match the foregrounds, an outcome matrix of the wrong width or with values
that are neither a class, 253 "invalid", 254 "none" nor 255 "not evaluated"), or computed on other store content (a different
digest). A damaged file is reported, never raised.
Flagged but not a problem: empty or whole-image masks (they are legal in a store; ``advbg.data.imageio.check_mask``
refuses them when reading new data).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from advbg.data.sidecar import sidecar_files, sidecar_folder
from advbg.data.store import OUTCOME_INVALID, OUTCOME_MISSING, OUTCOME_NONE, ItemSet, Store, item_checksum
from advbg.files import is_partial, leftover_partials
from advbg.progress import progress as progress_bar

# Problems of one kind listed one per line up to this many; the rest are counted (a store with every item
# corrupted should not print 8,000 lines).
MAX_LINES_PER_KIND = 20
_GROUP_ROOTS = ("results", "embeddings", "evalsets")


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
        _check_derived(s, report)
    return report


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


def _check_derived(s: Store, report: VerifyReport) -> None:
    """Every results / embeddings sidecar file and every group an earlier advbg wrote inside the store file."""
    for kind in ("results", "embeddings"):
        for name, path in sidecar_files(s.path, kind).items():
            where = f"{sidecar_folder(s.path).name}/{kind}/{name}.h5"
            try:
                f = s.open_sidecar(path)
            except (OSError, RuntimeError, ValueError) as e:
                report.problem("group", f"{where} cannot be opened ({_first_line(e)}): it is damaged; delete it "
                                        f"and rerun the command that wrote it")
                continue
            _check_group_safely(s, where, kind, f, report)
        left = [p.name for p in leftover_partials(sidecar_folder(s.path) / kind)]
        if left:
            report.lines.append(f"{kind}: {len(left)} temporary file(s) of an interrupted write ({', '.join(left)}); "
                                f"ignored, removed by the next write")
    for root in _GROUP_ROOTS:
        try:
            grp = s.file.get(root)
            names = list(grp) if isinstance(grp, h5py.Group) else []
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            report.problem("group", f"/{root} of the store file cannot be listed ({_first_line(e)})")
            continue
        for name in names:
            try:
                g = grp[name]
            except (OSError, RuntimeError, KeyError, ValueError) as e:
                report.problem("group", f"/{root}/{name} cannot be opened ({_first_line(e)})")
                continue
            _check_group_safely(s, f"/{root}/{name}", root, g, report)


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _check_group_safely(s: Store, where: str, root: str, g, report: VerifyReport) -> None:
    """``_check_group``, with a damaged file reported instead of raised."""
    try:
        _check_group(s, where, root, g, report)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
        report.problem("group", f"{where} cannot be read ({_first_line(e)}): it is damaged; delete it and rerun "
                                f"the command that wrote it")


def _check_group(s: Store, where: str, root: str, g, report: VerifyReport) -> None:
    if not isinstance(g, h5py.Group):
        report.problem("group", f"{where} is not a group")
        return
    kind = str(g.attrs.get("kind", root))
    complete = g.attrs.get("complete")
    state = "complete" if complete else ("INCOMPLETE" if complete is not None else "NO COMPLETION FLAG")
    done = g.get("done")
    progress = ""
    if isinstance(done, h5py.Dataset):
        d = done[()].astype(bool)
        progress = f", {int(d.sum())}/{d.size} foregrounds done"
        if complete and not d.all():
            report.problem("group", f"{where} is marked complete but only {int(d.sum())}/{d.size} units are done")
    report.lines.append(f"{where}: {kind}, {state}{progress}")
    if complete is None:
        report.problem("group", f"{where} has no completion flag (attrs['complete']); it may be half-written")
    elif not complete or is_partial(where):
        how = ("`advbg search --resume` with the same settings" if kind == "search"
               else "rerun the command that wrote it")
        report.problem("group", f"{where} is incomplete (its write was interrupted); finish it ({how}) "
                                f"or delete it")
    _check_digest(s, where, g, report)
    if kind == "search":
        _check_search(s, where, g, report)
    else:
        for ds in g.values():   # every byte readable (a file cut short fails here)
            if isinstance(ds, h5py.Dataset):
                ds[()]


def _check_digest(s: Store, where: str, g: h5py.Group, report: VerifyReport) -> None:
    digest = g.attrs.get("store_digest")
    if digest is None and "run" in g.attrs:
        try:
            digest = json.loads(g.attrs["run"]).get("store_digest")
        except (TypeError, ValueError):
            report.problem("group", f"{where} has an unreadable run record")
    if digest and str(digest) != s.digest():
        report.problem("group", f"{where} was computed on other store content (digest {digest}, this store "
                                f"{s.digest()}): its ids may point at different items")


# Datasets every search results group has, each with one row per searched foreground (fg_id, plus bg_pool).
_SEARCH_ROWS = ("fg_id", "true_class", "worst_bg", "worst_margin", "worst_pred", "first_fooling_bg", "n_fooling",
                "n_evaluated", "n_invalid", "done")


def _check_search(s: Store, where: str, g: h5py.Group, report: VerifyReport) -> None:
    missing = [k for k in _SEARCH_ROWS + ("bg_pool",) if not isinstance(g.get(k), h5py.Dataset)]
    if missing:
        report.problem("group", f"{where} lacks {', '.join(missing)}")
        return
    fg, pool = g["fg_id"][()], g["bg_pool"][()]
    if fg.size and (fg.min() < 0 or fg.max() >= len(s.foregrounds)):
        report.problem("group", f"{where}: fg_id outside 0..{len(s.foregrounds) - 1}")
    elif not np.array_equal(g["true_class"][()], s.foregrounds.labels[fg]):
        report.problem("group", f"{where}: true_class differs from the store's labels of its foregrounds")
    if pool.size and (pool.min() < 0 or pool.max() >= len(s.backgrounds)):
        report.problem("group", f"{where}: bg_pool outside 0..{len(s.backgrounds) - 1}")
    for k, ds in g.items():
        if isinstance(ds, h5py.Dataset) and k != "bg_pool" and ds.ndim >= 1 and ds.shape[0] != fg.size:
            report.problem("group", f"{where}/{k} has {ds.shape[0]} rows for {fg.size} foregrounds")
        elif isinstance(ds, h5py.Dataset) and k != "outcome":
            ds[()]        # every byte readable (a file cut short fails here)
    if "outcome" in g:
        _check_outcome(s, where, g["outcome"], fg.size, pool.size, report)


def _check_outcome(s: Store, where: str, ds: h5py.Dataset, n_fg: int, n_bg: int, report: VerifyReport,
                   rows: int = 256) -> None:
    """Shape (F, B), uint8, and every value a class index, 253 (invalid), 254 ("none") or 255 (not evaluated)."""
    if ds.ndim != 2 or ds.shape[1] != n_bg:
        report.problem("group", f"{where}/outcome has shape {ds.shape}; it must be ({n_fg}, {n_bg}) foregrounds x "
                                f"pool backgrounds")
        return
    if ds.dtype != np.uint8:
        report.problem("group", f"{where}/outcome is {ds.dtype}, not uint8")
        return
    n_cls, bad = len(s.class_names), 0
    for start in range(0, ds.shape[0], rows):
        block = ds[start:start + rows]
        bad += int(((block >= n_cls) & ~np.isin(block, (OUTCOME_INVALID, OUTCOME_NONE, OUTCOME_MISSING))).sum())
    if bad:
        report.problem("group", f"{where}/outcome holds {bad} value(s) that are neither a class index "
                                f"(0..{n_cls - 1}) nor {OUTCOME_INVALID} (invalid) / {OUTCOME_NONE} (none) / {OUTCOME_MISSING} "
                                f"(not evaluated)")
