"""What the fletcher32 checksum on every results dataset costs: read time of a 4,050 x 4,050 results file (IN-9's
test size, outcome matrix recorded) with and without it.

    python benchmarks/results_checksum.py [--n-fg 4050] [--n-bg 4050] [--repeat 5]

Writes the file with the results owner's own writer (``search.results.sink._FileWriter``: the layout a search
writes, fletcher32 on), and a copy with the same chunks and gzip level but no checksum (what earlier builds wrote).
Times, best of ``--repeat`` (page cache warm: the file was just written): reading every dataset to its last byte,
and the checked read every reader and `advbg verify` run (``search.results.rules.search_problems``). Prints the
machine, its CPU and the load.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np

from advbg.search.results.rules import search_problems
from advbg.search.results.schema import FIELDS
from advbg.search.results.sink import RunId, _FileWriter


def write_checksummed(path: Path, n_fg: int, n_bg: int, n_cls: int = 9) -> None:
    rng = np.random.default_rng(0)
    true = rng.integers(0, n_cls, n_fg)
    run_id = RunId("bench", np.arange(n_fg), np.arange(n_bg), true, {"kind": "search"}, True, 32)
    outcome = np.where(rng.random((n_fg, n_bg)) < 0.7, true[:, None], rng.integers(0, n_cls, (n_fg, n_bg)))
    rows = {k: rng.integers(-1, n_bg, n_fg) for k in FIELDS}
    rows["worst_margin"] = rng.normal(0, 1, n_fg)
    rows["n_evaluated"] = np.full(n_fg, n_bg)
    with h5py.File(path, "w") as f:
        w = _FileWriter(f, "bench", run_id)
        for s in range(0, n_fg, 32):
            w.write_rows(s, min(s + 32, n_fg), {k: v[s:s + 32] for k, v in rows.items()},
                         outcome[s:s + 32].astype(np.uint8))
        f.attrs["complete"] = True
        f.attrs["run"] = '{"classifier": {}, "config": {"mode": "exhaustive", "criterion": "any"}}'


def copy_without_checksum(src: Path, dst: Path) -> None:
    with h5py.File(src) as a, h5py.File(dst, "w") as b:
        b.attrs.update(dict(a.attrs))
        for k, ds in a.items():
            b.create_dataset(k, data=ds[()], chunks=ds.chunks, compression=ds.compression,
                             compression_opts=ds.compression_opts, fletcher32=False)


def read_all(path: Path) -> None:
    with h5py.File(path) as f:
        for ds in f.values():
            ds[()]


def checked_read(path: Path, store) -> None:
    with h5py.File(path) as f:
        problems = search_problems(store, "bench", "bench", f)
        assert problems == [], problems


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "?")
    except OSError:
        model = "?"
    return (f"{platform.machine()}, {os.cpu_count()} cores, CPU {model}, load {os.getloadavg()[0]:.1f}, "
            f"h5py {h5py.__version__} / HDF5 {h5py.version.hdf5_version}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-fg", type=int, default=4050)
    ap.add_argument("--n-bg", type=int, default=4050)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        on, off = Path(tmp) / "on.h5", Path(tmp) / "off.h5"
        write_checksummed(on, a.n_fg, a.n_bg)
        copy_without_checksum(on, off)
        with h5py.File(on) as f:
            labels = f["true_class"][()]
        store = SimpleNamespace(foregrounds=_Items(a.n_fg, labels), backgrounds=_Items(a.n_bg, None),
                                class_names=[str(k) for k in range(9)])
        print(f"{a.n_fg} x {a.n_bg} results file, best of {a.repeat}:")
        print("| | no checksum | fletcher32 | cost |\n|---|---|---|---|")
        size = (off.stat().st_size, on.stat().st_size)
        print(f"| file size | {size[0] / 1e6:.2f} MB | {size[1] / 1e6:.2f} MB | {100 * (size[1] / size[0] - 1):+.1f}% |")
        for what, fn in (("read every dataset", read_all), ("checked read (rules)", lambda p: checked_read(p, store))):
            t_off, t_on = best(lambda f=fn: f(off), a.repeat), best(lambda f=fn: f(on), a.repeat)
            print(f"| {what} | {t_off * 1e3:.0f} ms | {t_on * 1e3:.0f} ms | {100 * (t_on / t_off - 1):+.0f}% |")


class _Items:
    def __init__(self, n: int, labels):
        self.n, self.labels = n, labels

    def __len__(self) -> int:
        return self.n


if __name__ == "__main__":
    main()
