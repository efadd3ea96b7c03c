"""The rules `advbg verify` applies to the files derived from a store: every results / embeddings file
(``<store>.d/``) and every group an earlier advbg wrote inside the store file. A problem is a file or group that
cannot be opened or read to its last byte, is incomplete (interrupted), marked complete with units not done,
inconsistent with the store's items (ids out of range, rows that do not match the foregrounds, an outcome matrix of
the wrong width or with values that are neither a class nor an OUTCOME_* code), or computed on other store
content (a different digest). A damaged file is reported, never raised."""
from __future__ import annotations

import os
from pathlib import Path

import h5py

from advbg.data.sidecar import sidecar_files, sidecar_folder
from advbg.data.store import Store
from advbg.data.verify import VerifyReport, verify_store
from advbg.files import is_partial, leftover_partials
from advbg.search.results.rules import path_problem, run_record, search_problems, unchecksummed, unreadable_why
from advbg.search.results.refine import refine_problem

_GROUP_ROOTS = ("results", "embeddings", "evalsets")


def verify_all(path: str | os.PathLike, *, progress: bool = False) -> VerifyReport:
    """Everything ``advbg verify`` checks: the store (``verify_store``), then the files derived from it."""
    report = verify_store(path, progress=progress)
    with Store(path) as s:
        verify_results(s, report)
    return report


def verify_results(s: Store, report: VerifyReport) -> None:
    """Every results / embeddings sidecar file and every group an earlier advbg wrote inside the store file."""
    why = folder_problem(sidecar_folder(s.path))
    if why:
        report.problem("group", why)
    for kind in ("results", "embeddings"):
        for name, path in sidecar_files(s.path, kind).items():
            where = f"{sidecar_folder(s.path).name}/{kind}/{name}.h5"
            try:
                f = s.open_sidecar(path)
            except (OSError, RuntimeError, ValueError) as e:
                report.problem("group", f"{where} cannot be opened ({_first_line(e)}): it is damaged; delete it "
                                        f"and rerun the command that wrote it")
                continue
            _check_group_safely(s, where, name, kind, f, report)
        _check_paths(s, kind, report)
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
            _check_group_safely(s, f"/{root}/{name}", name, root, g, report)



def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _check_group_safely(s: Store, where: str, name: str, root: str, g, report: VerifyReport) -> None:
    """``_check_group``, with a damaged file reported instead of raised."""
    try:
        _check_group(s, where, name, root, g, report)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
        report.problem("group", f"{where} cannot be read ({unreadable_why(e)}): it is damaged; delete it and "
                                f"rerun the command that wrote it")


def _check_group(s: Store, where: str, name: str, root: str, g, report: VerifyReport) -> None:
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
        if complete and not d.all() and kind != "search":     # a search's own rules say it
            report.problem("group", f"{where} is marked complete but only {int(d.sum())}/{d.size} units are done")
    report.lines.append(f"{where}: {kind}, {state}{progress}")
    if complete is None:
        report.problem("group", f"{where} has no completion flag (attrs['complete']); it may be half-written or "
                                f"damaged")
    elif not complete or is_partial(where):
        how = {"search": "`advbg search --resume` with the same settings",
               "refine": "`advbg refine --resume` with the same settings"}.get(kind, "rerun the command that wrote it")
        report.problem("group", f"{where} is incomplete (its write was interrupted); finish it ({how}) "
                                f"or delete it")
    _check_digest(s, where, g, report)
    bare = unchecksummed(g)
    if bare:
        report.lines.append(f"{where}: no checksum on {len(bare)} dataset(s) (written by an earlier advbg): bit rot "
                            f"in them cannot be detected; rerun the command that wrote it to add checksums")
    if kind == "search":
        _check_search(s, where, name, g, report)
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
    if digest is None:
        try:
            digest = (run_record(g) or {}).get("store_digest")
        except (TypeError, ValueError):
            digest = None       # the search's rules report a run record that is not JSON
    if digest and str(digest) != s.digest():
        report.problem("group", f"{where} was computed on other store content (digest {digest}, this store "
                                f"{s.digest()}): its ids may point at different items")


def _check_search(s: Store, where: str, name: str, g: h5py.Group, report: VerifyReport) -> None:
    for text in search_problems(s, where, name, g):
        report.problem("group", text)


def _check_paths(s: Store, kind: str, report: VerifyReport) -> None:
    """Names in ``<store>.d/<kind>/`` that look like results but are no readable file (a folder, FIFO, device,
    dangling link), and a sidecar folder that is no usable folder."""
    top = sidecar_folder(s.path)
    why = folder_problem(top / kind) if top.is_dir() else None       # the folder itself: verify_results
    if why:
        report.problem("group", why)
        return
    if not (top / kind).is_dir():
        return
    try:
        entries = sorted((top / kind).glob("*.h5"))
    except OSError as e:
        report.problem("group", f"{top.name}/{kind} cannot be listed ({_first_line(e)})")
        return
    for p in entries:
        why = None if p.name.startswith(".") else path_problem(p)
        if why:
            report.problem("group", f"{top.name}/{kind}/{why}: remove it (advbg cannot read or replace it)")


def folder_problem(folder: Path) -> str | None:
    """Why ``folder`` (the sidecar folder or one of its kinds) cannot hold derived files; None when it can or is
    absent."""
    try:
        folder.stat()
    except FileNotFoundError:
        if folder.is_symlink():
            return f"{folder} is a dangling link; remove it (advbg makes the folder when it writes)"
        return None
    except OSError as e:         # a symlink loop: ELOOP
        return f"{folder} is unusable ({_first_line(e)}); remove it"
    if not folder.is_dir():
        return f"{folder} is not a folder (a file, FIFO or device); move it away so advbg can keep results there"
    return None
