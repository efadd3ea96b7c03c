"""How fast `advbg eval` runs: variant generation alone, and evaluation end to end with the embedded model.

    python benchmarks/eval_speed.py [--n 64] [--device cpu] [--batch-size 64]

Builds a synthetic 224 px store of --n foregrounds (every class has backgrounds, so every variant can be
made), then prints: seconds to generate each variant (no model), and images/s of `evaluate()` with advbg/lite0
on the paper's four variants and on all of them. Numbers depend on the machine: say which when you record them.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from advbg.analysis.evaluate import EvalConfig, evaluate  # noqa: E402
from advbg.data.labels import IN9_CLASSES  # noqa: E402
from advbg.data.store import Store  # noqa: E402
from advbg.data.variants import iter_variant, variant_names  # noqa: E402
from advbg.data.writer import write_store  # noqa: E402
from advbg.models.loading import load_classifier  # noqa: E402


def synthetic_store(path: Path, n: int, size: int = 224) -> Path:
    rng = np.random.default_rng(0)
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, size // 4: 3 * size // 4, size // 5: 4 * size // 5] = 1
    bg_labels = [c for c in range(9) for _ in range(3)] + [-1] * 5
    return write_store(path, class_names=IN9_CLASSES, fg_images=rng.integers(0, 256, (n, size, size, 3), np.uint8),
                       fg_masks=masks, fg_labels=[i % 9 for i in range(n)],
                       bg_images=rng.integers(0, 256, (len(bg_labels), size, size, 3), np.uint8), bg_labels=bg_labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="foregrounds")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")
    with tempfile.TemporaryDirectory() as d:
        path = synthetic_store(Path(d) / "bench.h5", args.n)
        with Store(path) as s:
            total = 0.0
            for name in variant_names():
                t = time.perf_counter()
                for _ in iter_variant(s, name, block=args.batch_size):
                    pass
                dt = time.perf_counter() - t
                total += dt
                print(f"generate {name:<11} {args.n} images  {dt:6.3f} s")
            print(f"generate all {len(variant_names())} variants: {total:.2f} s "
                  f"({len(variant_names()) * args.n / total:.0f} images/s, no model)")
            t = time.perf_counter()
            clf = load_classifier("advbg/lite0", device=args.device)
            print(f"load advbg/lite0: {time.perf_counter() - t:.2f} s on {clf.device}")
            for spec in ("paper", "all"):
                evaluate(s, [clf], EvalConfig(variants="original", batch_size=args.batch_size))   # warm-up
                r = evaluate(s, [clf], EvalConfig(variants=spec, batch_size=args.batch_size))
                print(f"evaluate --variants {spec}: {r.images} images in {r.seconds:.2f} s = "
                      f"{r.images / r.seconds:.1f} images/s (batch {args.batch_size})")


if __name__ == "__main__":
    main()
