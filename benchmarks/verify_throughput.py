"""How long `advbg verify` takes: recomputing every item's checksum of a 224 px store, projected to IN-9 size.

    python benchmarks/verify_throughput.py [--n 512] [--size 224]

Writes a temporary store of N foregrounds + N backgrounds (smooth synthetic photos plus noise, so gzip does
about as well as on real photos), then times ``verify_store`` (decode every chunk, blake2b-64 of every item,
mask checks) and prints items/s, MB/s of pixels and the projection for IN-9's 4,050 + 4,050 items.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from advbg.data.verify import verify_store
from advbg.data.writer import StoreWriter

IN9_ITEMS = 4050 + 4050


def _photo(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([np.sin(6 * xx + c) * 60 + 120 + 40 * yy for c in rng.uniform(0, 6, 3)], -1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def build(path: Path, n: int, size: int) -> float:
    rng = np.random.default_rng(0)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    t0 = time.perf_counter()
    with StoreWriter(path, class_names=[f"c{k}" for k in range(9)], image_size=(size, size)) as w:
        for i in range(n):
            w.add_foreground(_photo(rng, size), mask, i % 9, f"p{i}")
            w.add_background(_photo(rng, size), i % 9, f"p{i}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512, help="foregrounds (and as many backgrounds)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.h5"
        write_s = build(path, a.n, a.size)
        items, mb = 2 * a.n, os.path.getsize(path) / 2**20
        raw_mb = (2 * a.n * a.size * a.size * 3 + a.n * a.size * a.size) / 2**20
        times = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            report = verify_store(path)
            times.append(time.perf_counter() - t0)
            assert report.ok, report.problems
    best = min(times)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.python_version()}; load "
          f"{os.getloadavg()[0]:.1f}")
    print(f"store: {a.n} foregrounds + {a.n} backgrounds at {a.size} px, {mb:.0f} MB on disk "
          f"({raw_mb:.0f} MB of pixels), written in {write_s:.1f} s")
    print(f"verify: best {best:.2f} s of {a.repeat} ({', '.join(f'{t:.2f}' for t in times)}) = "
          f"{items / best:,.0f} items/s, {raw_mb / best:,.0f} MB/s of pixels")
    print(f"IN-9 test size ({IN9_ITEMS:,} items): about {IN9_ITEMS / (items / best):.0f} s")


if __name__ == "__main__":
    main()
