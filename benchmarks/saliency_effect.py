"""Does training on Mixed-Rand composites move a model's Grad-CAM onto the object? Measured on `advbg synth`.

The same starting model (``advbg/lite0``: ImageNet weights, a new 4-way head initialised from the run's seed, so
both policies start from the same weights; ``--model test_resnet`` starts from a seeded random init) is fine-tuned
twice with ``advbg.train.finetune.finetune`` on one synthetic training store whose
backgrounds correlate with the class: on the photos as they are (policy ``original``) and on every foreground
composited onto a uniformly random training background (``mixed-rand``). Same data, seed, optimiser, steps and
batch size. Each checkpoint is loaded back with ``load_classifier(CKPT)`` and measured on a held-out synthetic
test store (another seed, same correlation):

  share      mean foreground share of the Grad-CAM map (``advbg.analysis.saliency``: positive mass inside the
             exact synth mask / all positive mass) on the test photos (original) and on mixed_rand composites
  norm       share / mask area (1.0 = no preference for object or background)
  mixed_rand top-1 on the test foregrounds on random backgrounds of any class (``advbg.analysis.evaluate``)
  BG-Gap     top-1(mixed_same) - top-1(mixed_rand)

    python benchmarks/saliency_effect.py                 # seeds 0 and 1, the first table in benchmarks/README.md
    python benchmarks/saliency_effect.py --model test_resnet --size 64 --train-per-class 60 --test-per-class 40 \
        --epochs 5 --lr 3e-3                             # the second table there
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from advbg.analysis.evaluate import EvalConfig, evaluate
from advbg.analysis.saliency import SaliencyConfig, saliency
from advbg.data.store import Store
from advbg.data.synth import SynthConfig, make_synthetic
from advbg.models.loading import load_classifier
from advbg.train.finetune import FinetuneConfig, finetune

POLICIES = ("original", "mixed-rand")


def measure(ckpt: Path, test: Path, seed: int) -> dict:
    clf = load_classifier(str(ckpt), device="cpu")
    with Store(test) as s:
        rep = evaluate(s, [clf], EvalConfig(variants="original,mixed_same,mixed_rand", top_k=(1,), seed=seed,
                                            batch_size=128))
        sal = saliency(s, clf, SaliencyConfig(variants=("original", "mixed_rand"), seed=seed, batch_size=64))
    m = rep.models[0]
    row = dict(original=m.scores["original"].top1, mixed_same=m.scores["mixed_same"].top1,
               mixed_rand=m.scores["mixed_rand"].top1, bg_gap=m.bg_gap, layer=sal.layer)
    for v in sal.variants:
        row[f"share_{v.variant}"] = v.overall["share"].mean
        row[f"share_{v.variant}_ci"] = (v.overall["share"].low, v.overall["share"].high)
        row[f"norm_{v.variant}"] = v.overall["normalised"].mean
    row["area"] = float(np.mean(sal.variants[0].area))
    return row


def _fmt(row: dict) -> str:
    lo, hi = row["share_original_ci"]
    return (f"{row['policy']:<10} seed {row['seed']}: train {row['train_s']:.0f} s, original {row['original']:.1f}, "
            f"mixed_rand {row['mixed_rand']:.1f}, BG-Gap {row['bg_gap']:+.1f}, share original "
            f"{row['share_original']:.3f} [{lo:.3f}, {hi:.3f}] (norm {row['norm_original']:.2f}), share mixed_rand "
            f"{row['share_mixed_rand']:.3f} (norm {row['norm_mixed_rand']:.2f}), mask area {row['area']:.3f}")


def _table(rows: list[dict], seeds: list[int]) -> str:
    keys = ("share_original", "norm_original", "share_mixed_rand", "norm_mixed_rand", "original", "mixed_rand",
            "bg_gap")
    head = ("| policy | fg share (original) | normalised | fg share (mixed_rand) | normalised | top-1 original | "
            "top-1 mixed_rand | BG-Gap |")
    out = [head, "|" + "---|" * 8]
    for policy in POLICIES:
        rs = [r for r in rows if r["policy"] == policy]
        if not rs:
            continue
        cells = []
        for k in keys:
            v = np.array([r[k] for r in rs], float)
            d = 3 if k.startswith("share") else 2 if k.startswith("norm") else 1
            sign = "+" if k == "bg_gap" else ""
            cells.append(f"{v.mean():{sign}.{d}f} ± {v.std(ddof=1):.{d}f}" if len(v) > 1 else f"{v[0]:{sign}.{d}f}")
        out.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(out) + f"\n(mean ± sd over seeds {', '.join(map(str, seeds))})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--train-per-class", type=int, default=50)
    ap.add_argument("--test-per-class", type=int, default=30)
    ap.add_argument("--size", type=int, default=96, help="image side in pixels (lite0's last map: 3x3 at 96, 2x2 at 64)")
    ap.add_argument("--correlation", type=float, default=0.9)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--model", default="advbg/lite0")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, torch.get_num_threads())))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
          f"{torch.__version__} threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    rows = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = make_synthetic(tmp / "train.h5", SynthConfig(a.classes, a.train_per_class, a.size, a.correlation,
                                                             seed=0))
        test = make_synthetic(tmp / "test.h5", SynthConfig(a.classes, a.test_per_class, a.size, a.correlation,
                                                           seed=1))
        print(f"train: {a.classes} classes x {a.train_per_class}, test: x {a.test_per_class}, {a.size} px, "
              f"correlation {a.correlation}; {a.model} ({'ImageNet weights' if a.model.startswith('advbg/') else 'random init'}), "
              f"{a.epochs} epochs, batch {a.batch_size}, lr {a.lr}")
        for seed in a.seeds:
            for policy in POLICIES:
                cfg = FinetuneConfig(policy=policy, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=seed,
                                     warmup_steps=a.warmup_steps, pretrained=False)
                t0 = time.perf_counter()
                res = finetune(a.model, train, tmp / f"{policy}-{seed}", cfg, progress=False, echo=lambda m: None)
                row = dict(policy=policy, seed=seed, train_s=time.perf_counter() - t0,
                           **measure(res.checkpoint, test, seed))
                rows.append(row)
                print(_fmt(row), flush=True)
    print(f"\nGrad-CAM layer: {rows[0]['layer']}; wall time {time.perf_counter() - t_all:.0f} s, load average now "
          f"{os.getloadavg()[0]:.1f}\n")
    print(_table(rows, a.seeds))


if __name__ == "__main__":
    main()
