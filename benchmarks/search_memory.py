"""Peak host memory (RSS) and peak device memory of a search over an IN-9-scale store.

Builds (once) a synthetic store of 4,050 foregrounds + 4,050 backgrounds at 224 px — a few distinct smooth
random images repeated, written as pre-compressed HDF5 chunks (gzip level 1), so the build takes seconds — then
runs the search in a fresh child process per setting and reports the child's peak RSS (ru_maxrss) and, on CUDA,
torch's peak allocated device memory, next to the memory budget the search was given. The whole background pool
is searched; on a CPU only a few foregrounds are (the memory a search holds does not grow with the number of
foregrounds: they are read one unit at a time), on a GPU all of them.

    python benchmarks/search_memory.py [--n-fg 4050 --n-bg 4050 --size 224] [--foregrounds K]
        [--budgets default,0.5] [--model probe|resnet50] [--workdir /tmp/advbg-bench]

Targets: host peak under 4 GB whatever the store size; device peak within the budget.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advbg.data.labels import IN9_CLASSES  # noqa: E402
from advbg.data.store import SCHEMA_VERSION, item_checksum  # noqa: E402
from advbg.data.writer import _STR  # noqa: E402
from advbg.files import now as _now  # noqa: E402


# --------------------------------------------------------------------------------------------- the store
def smooth_images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """n smooth random RGB images (low-resolution noise upsampled): photo-like compressibility."""
    import cv2

    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        low = rng.integers(0, 256, (8, 8, 3)).astype(np.float32)
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
        img += rng.normal(0, 6, img.shape).astype(np.float32)      # a little texture
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def ellipse_masks(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] / size
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2)
        ry, rx = rng.uniform(0.15, 0.35, 2)
        out[i] = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
    return out


def build_store(path: Path, n_fg: int, n_bg: int, size: int, distinct: int = 24, seed: int = 0) -> float:
    """Write an advbg store (schema of advbg.data.store) with ``distinct`` images cycled; returns seconds taken."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    fg_img, bg_img = smooth_images(distinct, size, rng), smooth_images(distinct, size, rng)
    masks = ellipse_masks(distinct, size, rng)
    z = lambda a: zlib.compress(np.ascontiguousarray(a).tobytes(), 1)  # noqa: E731  HDF5's deflate = zlib
    fg_z, m_z, bg_z = [z(a) for a in fg_img], [z(a) for a in masks], [z(a) for a in bg_img]
    fg_ck = [item_checksum(fg_img[i], masks[i]) for i in range(distinct)]
    bg_ck = [item_checksum(bg_img[i]) for i in range(distinct)]
    partial = path.with_name(path.name + ".partial")
    with h5py.File(partial, "w") as f:
        f.attrs.update(advbg_schema=SCHEMA_VERSION, advbg_version="bench", created=_now(),
                       command="benchmarks/search_memory.py", image_size=np.array([size, size], np.int64),
                       complete=False)
        f.create_dataset("class_names", data=np.array(list(IN9_CLASSES), dtype=object), dtype=_STR)
        for grp, n in (("foregrounds", n_fg), ("backgrounds", n_bg)):
            g = f.create_group(grp)
            k = np.arange(n) % distinct
            g.create_dataset("image", (n, size, size, 3), np.uint8, chunks=(1, size, size, 3), compression="gzip",
                             compression_opts=1)
            blobs = fg_z if grp == "foregrounds" else bg_z
            for i in range(n):
                g["image"].id.write_direct_chunk((i, 0, 0, 0), blobs[k[i]])
            if grp == "foregrounds":
                g.create_dataset("mask", (n, size, size), np.uint8, chunks=(1, size, size), compression="gzip",
                                 compression_opts=1)
                for i in range(n):
                    g["mask"].id.write_direct_chunk((i, 0, 0), m_z[k[i]])
                g.create_dataset("box", data=np.full((n, 4), -1, np.int64))
            g.create_dataset("label", data=(np.arange(n) % len(IN9_CLASSES)).astype(np.int64))
            g.create_dataset("source_id", data=np.array([f"{grp[:2]}{i}" for i in range(n)], dtype=object),
                             dtype=_STR)
            g.create_dataset("checksum", data=np.array([(fg_ck if grp == "foregrounds" else bg_ck)[j] for j in k],
                                                       np.uint64))
        f.attrs["complete"] = True
    os.replace(partial, path)
    return time.perf_counter() - t0


def ensure_store(workdir: Path, n_fg: int, n_bg: int, size: int) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"synthetic_{n_fg}x{n_bg}_{size}.h5"
    if not path.exists():
        secs = build_store(path, n_fg, n_bg, size)
        print(f"built {path} ({path.stat().st_size / 2**20:.0f} MB on disk, "
              f"{(n_fg * 4 + n_bg * 3) * size * size / 2**30:.2f} GB raw) in {secs:.1f} s", flush=True)
    return path


# --------------------------------------------------------------------------------------------- models
def probe_classifier(size: int):
    """A nearly free 9-class model (average pool + linear): the memory the search itself needs shows."""
    import torch
    from torch import nn

    from advbg.models.classifier import Classifier, ClassifierConfig
    from advbg.models.label_map import identity_map

    torch.manual_seed(0)
    net = nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(3 * 64, 9))
    lm = identity_map(IN9_CLASSES)
    cfg = ClassifierConfig(name="probe", architecture="probe", weight_tag="seed0", source="bench", weights_file=None,
                           weights_sha256=None, input_size=(3, size, size), mean=(0.5,) * 3, std=(0.25,) * 3,
                           interpolation="bilinear", num_outputs=9, label_map=lm.name, class_names=lm.class_names)
    return Classifier(net, cfg, lm)


def make_classifier(name: str, size: int, device: str):
    from advbg.models.loading import load_classifier

    if name == "probe":
        return probe_classifier(size).to(device)
    return load_classifier(name, pretrained=False, label_map="in9", device=device)


# --------------------------------------------------------------------------------------------- child
def child(args) -> None:
    import torch

    from advbg.data.store import Store
    from advbg.search.config import SearchConfig
    from advbg.search.runner import search

    dev = args.device
    clf = make_classifier(args.model, args.size, dev)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    budget = None if args.budget == "default" else float(args.budget)
    n_fg = args.foregrounds
    with Store(args.store) as s:
        cfg = SearchConfig(foregrounds=tuple(range(n_fg)) if n_fg else None, memory_gb=budget,
                           record_outcomes=True, device=dev)
        from advbg.search.engine import budget_bytes
        from advbg.search.pool import BackgroundPool

        seen = {}
        real = BackgroundPool.__init__

        def spy(self, *a, **k):
            real(self, *a, **k)
            seen.update(resident=self.resident, block=self.block, pool_gb=self.nbytes / 2**30)

        BackgroundPool.__init__ = spy
        t0 = time.perf_counter()
        res = search(s, clf, cfg, write=False, progress=False)
        secs = time.perf_counter() - t0
    out = dict(budget=args.budget, effective_budget_gb=budget_bytes(torch.device(dev), budget) / 2**30,
               peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, rss_after_model_gb=base_rss,
               device=dev, composites=res.run.forwards, seconds=secs, batch_size=res.run.batch_size, **seen)
    if dev.startswith("cuda"):
        out["peak_device_gb"] = torch.cuda.max_memory_allocated() / 2**30
        out["gpu"] = torch.cuda.get_device_name()
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-fg", type=int, default=4050)
    ap.add_argument("--n-bg", type=int, default=4050)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--foregrounds", type=int, default=None,
                    help="search only the first K foregrounds (default: 8 on CPU, all on CUDA)")
    ap.add_argument("--budgets", default="default,0.5", help="comma-separated memory budgets in GB ('default')")
    ap.add_argument("--model", default=None, help="probe (default on CPU) or a timm name (random weights)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/advbg-bench"))
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--budget", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.model is None:
        args.model = "resnet50" if args.device.startswith("cuda") else "probe"
    if args.foregrounds is None:
        args.foregrounds = 0 if args.device.startswith("cuda") else 8
    if args.child:
        return child(args)
    store = ensure_store(args.workdir, args.n_fg, args.n_bg, args.size)
    rows = []
    for budget in args.budgets.split(","):
        cmd = [sys.executable, __file__, "--child", "--store", str(store), "--budget", budget, "--device",
               args.device, "--model", args.model, "--size", str(args.size), "--foregrounds", str(args.foregrounds)]
        p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not line:
            sys.exit(f"child failed:\n{p.stdout}\n{p.stderr}")
        rows.append(json.loads(line[0][7:]))
    print(f"\nstore {args.n_fg} foregrounds x {args.n_bg} backgrounds at {args.size} px, background pool "
          f"{rows[0]['pool_gb']:.2f} GB raw; model {args.model}; device {args.device}; "
          f"{args.foregrounds or args.n_fg} foregrounds searched against the whole pool")
    print("| budget | effective budget | pool | peak host RSS | RSS after imports+model | peak device | "
          "batch | composites/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        pool = "resident" if r["resident"] else f"streamed, blocks of {r['block']}"
        dev = f"{r['peak_device_gb']:.2f} GB" if "peak_device_gb" in r else "- (CPU)"
        print(f"| {r['budget']} | {r['effective_budget_gb']:.2f} GB | {pool} | {r['peak_rss_gb']:.2f} GB | "
              f"{r['rss_after_model_gb']:.2f} GB | {dev} | {r['batch_size']} | "
              f"{r['composites'] / r['seconds']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
