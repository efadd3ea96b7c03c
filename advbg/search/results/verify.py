"""The rules `advbg verify` applies to the files derived from a store: every results / embeddings file
(``<store>.d/``) and every group an earlier advbg wrote inside the store file. A problem is a file or group that
cannot be opened or read to its last byte, is incomplete (interrupted), marked complete with units not done,
inconsistent with the store's items (ids out of range, rows that do not match the foregrounds, an outcome matrix of
the wrong width or with values that are neither a class nor an OUTCOME_* code), or computed on other store
content (a different digest). A damaged file is reported, never raised."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np

from advbg.data.sidecar import sidecar_files, sidecar_folder
from advbg.data.store import Store
from advbg.data.verify import VerifyReport, verify_store
from advbg.files import is_partial, leftover_partials
from advbg.search.results.refine import refine_problem
from advbg.search.results.schema import OUTCOME_INVALID, OUTCOME_MISSING, OUTCOME_NONE, PER_FOREGROUND

_GROUP_ROOTS = ("results", "embeddings", "evalsets")


def verify_all(path: str | os.PathLike, *, progress: bool = False) -> VerifyReport:
    """Everything ``advbg verify`` checks: the store (``verify_store``), then the files derived from it."""
    report = verify_store(path, progress=progress)
    with Store(path) as s:
        verify_results(s, report)
    return report


def verify_results(s: Store, report: VerifyReport) -> None:
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
        how = {"search": "`advbg search --resume` with the same settings",
               "refine": "`advbg refine --resume` with the same settings"}.get(kind, "rerun the command that wrote it")
        report.problem("group", f"{where} is incomplete (its write was interrupted); finish it ({how}) "
                                f"or delete it")
    _check_digest(s, where, g, report)
    if kind == "search":
        _check_search(s, where, g, report)
    elif kind == "refine":
        why = refine_problem(s, g)
        if why:
            report.problem("group", f"{where}: {why}")
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


def _check_search(s: Store, where: str, g: h5py.Group, report: VerifyReport) -> None:
    missing = [k for k in PER_FOREGROUND + ("done", "bg_pool") if not isinstance(g.get(k), h5py.Dataset)]
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
