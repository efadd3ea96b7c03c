"""Does training with random or adversarial backgrounds reduce background reliance? Measured on `advbg synth`.

The same small timm model (``test_resnet``, random init) is trained three ways on one synthetic training store
whose backgrounds correlate with the class (strength 0.9): on the photos as they are (original), on random
backgrounds (mixed-rand), and on backgrounds drawn by their fooling power for the current model (adversarial).
Same data, seeds, optimiser, steps and batch size for all three. Each checkpoint is then loaded back through
``advbg.models.load_classifier`` (the path `advbg search --model CKPT` takes) and measured on a held-out
synthetic test store (another seed, same correlation):

  original    accuracy on the test photos as they are
  only_bg_t   accuracy on the Only-BG-T backgrounds alone (how much the background alone gives away)
  mixed_same  accuracy with each foreground on a random background of its own class
  mixed_rand  accuracy with each foreground on a random background of any class
  BG-Gap      mixed_same - mixed_rand (the paper's measure of background reliance)
  fooling     worst-case fooling rate of `advbg.search` (criterion any, exhaustive) over a subset of
              test foregrounds x all test backgrounds

mixed_same / mixed_rand are composited here directly with ``advbg.search.compositor.composite_pairs`` (seeded pairs,
identical for every model) rather than through ``advbg.data.variants``, so this script depends only on the store,
the compositor, the models and the search.

    python benchmarks/augmentation_effect.py              # one seed: 4-10 minutes on a shared 2-core CPU
    python benchmarks/augmentation_effect.py --seeds 0 1  # the table in benchmarks/README.md (21 minutes there)
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from advbg.data.store import Store
from advbg.data.synth import SynthConfig, make_synthetic
from advbg.models.loading import load_classifier
from advbg.search.compositor import composite_pairs
from advbg.search.config import SearchConfig
from advbg.search.runner import search
from advbg.train.finetune import FinetuneConfig, finetune

POLICIES = ("original", "mixed-rand", "adversarial")


def _accuracy(clf, images: np.ndarray, labels: np.ndarray, batch: int = 256) -> float:
    correct = 0
    with torch.inference_mode():
        for s in range(0, len(images), batch):
            x = torch.from_numpy(images[s:s + batch]).permute(0, 3, 1, 2).float().div_(255.0)
            pred = clf.label_map.predict(clf(x.contiguous(memory_format=torch.channels_last)))
            correct += int((pred.numpy() == labels[s:s + batch]).sum())
    return 100.0 * correct / len(images)


def _mixed(store: Store, same: bool, seed: int) -> np.ndarray:
    """uint8 composites: every foreground on a seeded random background (of its class, or of any class)."""
    rng = np.random.default_rng([seed, int(same)])
    fg_lab, bg_lab = store.foregrounds.labels, store.backgrounds.labels
    own = np.arange(len(fg_lab))               # synth stores: foreground i and background i share a photo
    pick = []
    for i, y in enumerate(fg_lab):
        pool = np.flatnonzero((bg_lab == y) if same else np.ones(len(bg_lab), bool))
        pick.append(int(rng.choice(pool[pool != own[i]])))
    fg = torch.from_numpy(store.foregrounds.read(slice(None)))
    mask = torch.from_numpy(store.foregrounds.read_masks(slice(None)))
    bg = torch.from_numpy(store.backgrounds.read(slice(None)))
    x = composite_pairs(fg, mask, bg, torch.arange(len(fg_lab)), torch.as_tensor(pick))
    return np.rint(x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)


def evaluate(ckpt: Path, test: Path, search_fgs: int, seed: int) -> dict:
    clf = load_classifier(str(ckpt), device="cpu")
    with Store(test) as s:
        labels = s.foregrounds.labels
        row = dict(original=_accuracy(clf, s.foregrounds.read(slice(None)), labels),
                   only_bg_t=_accuracy(clf, s.backgrounds.read(slice(None)), s.backgrounds.labels),
                   mixed_same=_accuracy(clf, _mixed(s, True, seed), labels),
                   mixed_rand=_accuracy(clf, _mixed(s, False, seed), labels))
        row["bg_gap"] = row["mixed_same"] - row["mixed_rand"]
        row.update(fooling=float("nan"), search_s=0.0, composites=0)
        if search_fgs <= 0:
            return row
        fgs = tuple(range(min(search_fgs, len(labels))))      # classes interleave, so a prefix is balanced
        t0 = time.perf_counter()
        res = search(s, clf, SearchConfig(criterion="any", foregrounds=fgs, batch_size=256), write=False,
                     progress=False)
        row.update(fooling=res.fooling_rate, search_s=time.perf_counter() - t0, composites=res.run.forwards)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--train-per-class", type=int, default=300)
    ap.add_argument("--test-per-class", type=int, default=60)
    ap.add_argument("--correlation", type=float, default=0.9)
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup-steps", type=int, default=20)
    ap.add_argument("--refresh-every", type=int, default=48)
    ap.add_argument("--probe-per-class", type=int, default=1)
    ap.add_argument("--search-foregrounds", type=int, default=80)
    ap.add_argument("--model", default="test_resnet")
    ap.add_argument("--policies", nargs="+", default=list(POLICIES))
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, torch.get_num_threads())))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
          f"{torch.__version__} threads {torch.get_num_threads()}, CUDA {torch.cuda.is_available()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = make_synthetic(tmp / "train.h5", SynthConfig(a.classes, a.train_per_class, 32, a.correlation, seed=0))
        test = make_synthetic(tmp / "test.h5", SynthConfig(a.classes, a.test_per_class, 32, a.correlation, seed=1))
        print(f"train: {a.classes} classes x {a.train_per_class}, test: x {a.test_per_class}, 32 px, correlation "
              f"{a.correlation} (background style = class in {100 * SynthConfig(a.classes, correlation=a.correlation).match_probability:.1f}%)")
        for seed in a.seeds:
            for policy in a.policies:
                cfg = FinetuneConfig(policy=policy, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=seed,
                                     warmup_steps=a.warmup_steps,
                                     pretrained=False, refresh_every=a.refresh_every,
                                     probe_per_class=a.probe_per_class)
                t0 = time.perf_counter()
                res = finetune(a.model, train, tmp / f"{policy}-{seed}", cfg, progress=False, echo=lambda m: None)
                train_s = time.perf_counter() - t0
                row = dict(policy=policy, seed=seed, train_s=train_s, steps=res.metadata["recipe"]["steps"],
                           **evaluate(res.checkpoint, test, a.search_foregrounds, seed))
                rows.append(row)
                print(_fmt(row), flush=True)
    print()
    print(_table(rows, a))


def _fmt(r: dict) -> str:
    return (f"{r['policy']:<12} seed {r['seed']}: original {r['original']:5.1f}  only_bg_t {r['only_bg_t']:5.1f}  "
            f"mixed_same {r['mixed_same']:5.1f}  mixed_rand {r['mixed_rand']:5.1f}  BG-Gap {r['bg_gap']:+5.1f}  "
            f"fooling {r['fooling']:5.1f}%  (train {r['train_s']:.0f} s / {r['steps']} steps, search "
            f"{r['composites']} composites in {r['search_s']:.0f} s)")


def _table(rows: list[dict], a) -> str:
    keys = ("original", "only_bg_t", "mixed_same", "mixed_rand", "bg_gap", "fooling", "train_s")
    head = ("| policy | original | only_bg_t | mixed_same | mixed_rand | BG-Gap | worst-case fooling rate | train s |\n"
            "|---|---|---|---|---|---|---|---|")
    out = [head]
    for p in a.policies:
        sel = [r for r in rows if r["policy"] == p]
        cells = []
        for k in keys:
            v = np.array([r[k] for r in sel])
            sd = f" ± {v.std(ddof=1):.1f}" if len(v) > 1 else ""
            cells.append(f"{v.mean():+.1f}{sd}" if k == "bg_gap" else f"{v.mean():.1f}{sd}")
        out.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(out) + f"\n(mean{' ± sd' if len(a.seeds) > 1 else ''} over seeds {a.seeds}; accuracies and " \
        f"fooling rate in %)"


if __name__ == "__main__":
    sys.exit(main())
