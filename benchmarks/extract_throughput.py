"""Throughput of `advbg extract` on drawn photos: images/s per worker count and the share of time in GrabCut.

    python benchmarks/extract_throughput.py [--n 96] [--workers 1,2]

Draws ``n`` ImageNet-sized photos (375-500 px sides, a textured background, one object of a random shape and
colour inside its box), writes them as JPEGs with a CSV of boxes, then runs the real ``extract`` with the
reference geometry (resize 256, crop 224, GrabCut 5 iterations, reference filter) once per worker count.
images/s counts every photo processed, end to end (decode, resize/crop, GrabCut, Only-BG-T, store write).
The GrabCut share is summed worker time inside ``grabcut_mask`` over summed worker time per photo. CPU s/image
(this process + its worker processes, from getrusage) is insensitive to other jobs on the machine; workers / that
is the rate the same run would reach with its cores to itself.
"""
from __future__ import annotations

import argparse
import csv
import os
import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from advbg.data.extract import ExtractConfig, extract


def draw_photo(rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    h, w = (int(v) for v in rng.integers(375, 501, 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(0.02, 0.15, 2)
    bg = np.stack([np.sin(xx * f[0] + c) * np.cos(yy * f[1] - c) for c in (0.0, 1.0, 2.0)], -1) * 50
    img = rng.integers(60, 190, 3) + bg + rng.normal(0, 15, (h, w, 3))
    bw, bh = int(w * rng.uniform(0.3, 0.7)), int(h * rng.uniform(0.3, 0.7))
    x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
    mask = np.zeros((h, w), np.uint8)
    if rng.random() < 0.5:
        cv2.ellipse(mask, (x0 + bw // 2, y0 + bh // 2), (bw // 2 - 1, bh // 2 - 1), 0, 0, 360, 1, -1)
    else:
        pts = rng.integers(0, [bw, bh], (7, 2)) + [x0, y0]
        cv2.fillPoly(mask, [cv2.convexHull(pts.astype(np.int32))], 1)
        ys, xs = np.nonzero(mask)
        x0, y0, bw, bh = xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()
    obj = rng.integers(0, 256, 3) + rng.normal(0, 20, (h, w, 3))
    img = np.where(mask[..., None] > 0, obj, img)
    return np.clip(img, 0, 255).astype(np.uint8), (int(x0), int(y0), int(x0 + bw), int(y0 + bh))


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96, help="photos to draw")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "img").mkdir()
        with open(tmp / "boxes.csv", "w", newline="") as fh:
            wr = csv.writer(fh)
            wr.writerow(["file", "xmin", "ymin", "xmax", "ymax", "label"])
            for i in range(args.n):
                img, box = draw_photo(rng)
                Image.fromarray(img).save(tmp / "img" / f"p{i:04d}.jpg", quality=90)
                wr.writerow([f"p{i:04d}.jpg", *box, ("a", "b", "c")[i % 3]])
        print(f"{args.n} drawn photos, 375-500 px, resize 256 / crop 224, GrabCut 5 iterations; "
              f"{os.cpu_count()} CPU cores visible")
        for workers in (int(w) for w in args.workers.split(",")):
            out = tmp / f"s{workers}.h5"
            t, cpu0 = time.perf_counter(), _cpu()
            s = extract(tmp / "img", tmp / "boxes.csv", out, config=ExtractConfig(), workers=workers, progress=False)
            wall, cpu = time.perf_counter() - t, (_cpu() - cpu0) / args.n
            print(f"workers={workers}: {args.n / wall:6.1f} images/s end to end ({wall:.1f} s, pool start included; "
                  f"{s.processed_now / s.wall_s:.1f} images/s in the loop), GrabCut "
                  f"{100 * s.grabcut_s / s.worker_s:.0f}% of worker time, {s.foregrounds} fg / {s.backgrounds} bg, "
                  f"dropped {dict(s.reasons)}; CPU {cpu:.3f} s/image -> {workers / cpu:.1f} images/s on "
                  f"{workers} idle core(s)")


if __name__ == "__main__":
    main()
