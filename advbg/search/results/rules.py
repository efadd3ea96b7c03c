"""The rules a stored search result must satisfy, written once: ``advbg verify`` reports every problem they find
(``verify``) and every checked read refuses a result with any (``read``), so a reader never uses what verify would
call damaged. A rule returns problem texts (``<where>...``), never raises for a damaged file except with the
OSError / ValueError h5py gives for bytes it cannot read (a failed fletcher32 checksum included)."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from advbg.data.store import Store
from advbg.search.results.schema import ADDED_COLUMNS, OUTCOME_INVALID, OUTCOME_MISSING, OUTCOME_NONE, PER_FOREGROUND

OUTCOME_BLOCK_ROWS = 256        # outcome rows read at a time when checking its values
CHECKSUM = "fletcher32"         # HDF5's per-chunk checksum filter, on every dataset written since this build


def search_problems(s: Store, where: str, name: str, g: h5py.Group) -> list[str]:
    """Every way the search result ``g`` (results ``name``, shown as ``where``) disagrees with itself or the store.
    Reads every byte of every dataset, so a damaged chunk (a failed checksum) raises OSError here."""
    missing = [k for k in PER_FOREGROUND + ("done", "bg_pool")
               if k not in ADDED_COLUMNS and not isinstance(g.get(k), h5py.Dataset)]   # older files lack added ones
    if missing:
        return [f"{where} lacks {', '.join(missing)}"]
    out = run_problems(where, name, g)
    fg, pool = g["fg_id"][()], g["bg_pool"][()]
    if fg.ndim != 1 or pool.ndim != 1:
        return out + [f"{where}: fg_id / bg_pool are not lists of ids"]
    if fg.size and (fg.min() < 0 or fg.max() >= len(s.foregrounds)):
        out.append(f"{where}: fg_id outside 0..{len(s.foregrounds) - 1}")
    elif g["true_class"].shape == fg.shape and not np.array_equal(g["true_class"][()], s.foregrounds.labels[fg]):
        out.append(f"{where}: true_class differs from the store's labels of its foregrounds")
    if pool.size and (pool.min() < 0 or pool.max() >= len(s.backgrounds)):
        out.append(f"{where}: bg_pool outside 0..{len(s.backgrounds) - 1}")
    for k, ds in g.items():
        if not isinstance(ds, h5py.Dataset):
            continue
        if k != "bg_pool" and ds.ndim >= 1 and ds.shape[0] != fg.size:
            out.append(f"{where}/{k} has {ds.shape[0]} rows for {fg.size} foregrounds")
        elif k != "outcome":
            ds[()]        # every byte readable (a file cut short or a failed checksum fails here)
    expected = expected_rows(s, g)
    if expected is not None and fg.size != expected:
        out.append(f"{where} has {fg.size} foreground rows but its run searched {expected}: its datasets were cut")
    for k in ("worst_bg", "first_fooling_bg"):
        v = g[k][()]
        if v.shape == fg.shape and v.size and (v.min() < -1 or v.max() >= len(s.backgrounds)):
            out.append(f"{where}/{k} outside -1..{len(s.backgrounds) - 1}")
    if g.attrs.get("complete") and g["done"].shape == fg.shape and not g["done"][()].astype(bool).all():
        d = g["done"][()].astype(bool)
        out.append(f"{where} is marked complete but only {int(d.sum())}/{d.size} units are done")
    if "outcome" in g and g["outcome"].shape[:1] == fg.shape:
        out += outcome_problems(s, where, g["outcome"], fg.size, pool.size)
    return out


def run_record(g: h5py.Group) -> dict | None:
    """The run record of ``g`` as a dict (None when there is none); ValueError when it is not a JSON object."""
    if "run" not in g.attrs:
        return None
    run = json.loads(g.attrs["run"])
    if not isinstance(run, dict):
        raise TypeError("not a JSON object")
    return run


def run_problems(where: str, name: str, g: h5py.Group) -> list[str]:
    """A run record that is not JSON, a result stored under another name than it was written as (a renamed file:
    its name no longer says its model, criterion and mode), and attributes that disagree with its run record."""
    try:
        run = run_record(g)
    except (TypeError, ValueError) as e:
        return [f"{where} has a run record that is not JSON ({type(e).__name__}: {str(e)[:80]})"]
    out = []
    if run is not None and not isinstance(run.get("classifier"), dict):
        out.append(f"{where}: the run record's classifier is not a JSON object")
    stored_as = g.attrs.get("name")
    if isinstance(g, h5py.File) and stored_as is not None and str(stored_as) != name:
        out.append(f"{where} was written as results {str(stored_as)!r}: it was renamed, so its name does not say "
                   f"what it holds (the run record says criterion {_recorded(g, 'criterion')}, mode "
                   f"{_recorded(g, 'mode')})")
    if run is not None:
        cfg = run.get("config") if isinstance(run.get("config"), dict) else {}
        crit, mode = str(cfg.get("criterion", "")), str(cfg.get("mode", run.get("mode", "")))
        for key, recorded in (("criterion", crit), ("mode", mode)):
            attr = g.attrs.get(key)
            if attr is not None and recorded and str(attr) != recorded:
                out.append(f"{where}: attribute {key}={str(attr)!r} but the run record says {recorded!r}")
    return out


def _recorded(g: h5py.Group, key: str) -> str:
    try:
        return str(((run_record(g) or {}).get("config") or {}).get(key, "?"))
    except (TypeError, ValueError, AttributeError):
        return "?"


def expected_rows(s: Store, g: h5py.Group) -> int | None:
    """The number of foregrounds the recorded run searched (its selection, else the whole store); None when the
    file does not say (no readable run record)."""
    try:
        run = run_record(g)
    except (TypeError, ValueError):
        return None
    if run is None or not isinstance(run.get("config"), dict):
        return None
    chosen = run["config"].get("foregrounds")
    if chosen is None:
        return len(s.foregrounds)
    try:
        return int(str(chosen).split()[0])          # SearchConfig.to_dict records a selection as "<n> ids"
    except ValueError:
        return len(chosen) if isinstance(chosen, list) else None


def outcome_problems(s: Store, where: str, ds: h5py.Dataset, n_fg: int, n_bg: int) -> list[str]:
    """Shape (F, B), uint8, and every value a class index, 253 (invalid), 254 ("none") or 255 (not evaluated)."""
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or ds.shape[1] != n_bg:
        shape = getattr(ds, "shape", None)
        return [f"{where}/outcome has shape {shape}; it must be ({n_fg}, {n_bg}) foregrounds x pool backgrounds"]
    if ds.dtype != np.uint8:
        return [f"{where}/outcome is {ds.dtype}, not uint8"]
    n_cls, bad = len(s.class_names), 0
    for start in range(0, ds.shape[0], OUTCOME_BLOCK_ROWS):
        block = ds[start:start + OUTCOME_BLOCK_ROWS]
        bad += int(((block >= n_cls) & ~np.isin(block, (OUTCOME_INVALID, OUTCOME_NONE, OUTCOME_MISSING))).sum())
    if bad:
        return [(f"{where}/outcome holds {bad} value(s) that are neither a class index (0..{n_cls - 1}) nor "
                 f"{OUTCOME_INVALID} (invalid) / {OUTCOME_NONE} (none) / {OUTCOME_MISSING} (not evaluated)")]
    return []


def unreadable_why(e: BaseException) -> str:
    """One line for a read that failed: a failed checksum / damaged chunk said as such, else the error's first line."""
    text = (str(e).splitlines() or [type(e).__name__])[0]
    if "filter returned failure" in text or "fletcher32" in text.lower():
        return "a stored chunk fails its checksum or does not decompress: its bytes changed on disk after it was written"
    return f"{type(e).__name__}: {text}"


def unchecksummed(g: h5py.Group) -> list[str]:
    """Datasets of ``g`` written without a checksum (files of earlier builds): their bit rot cannot be seen."""
    return [k for k, ds in g.items() if isinstance(ds, h5py.Dataset) and not ds.fletcher32]


def path_problem(path: Path) -> str | None:
    """Why ``path`` (a results / embeddings file name in the sidecar folder) is not a readable file."""
    if path.is_symlink() and not path.exists():
        return f"{path.name} is a dangling link"
    if path.is_dir():
        return f"{path.name} is a folder, not a results file"
    if path.exists() and not path.is_file():
        return f"{path.name} is not a regular file (a FIFO, socket or device)"
    return None
