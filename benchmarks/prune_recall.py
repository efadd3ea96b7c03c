"""How much of the exhaustive answer a pruned search keeps (issue #6), per candidate rule and K.

    python benchmarks/prune_recall.py                  # demo store (lite0) + structured synthetic store
    python benchmarks/prune_recall.py --only synthetic --fg 300 --bg 1500

For each store the exhaustive search gives the truth; then every rule runs at several K and the table shows
  forwards   composites the pruned search evaluated / the exhaustive F x B (both stages for `neighbours`)
  recall     share of the vulnerable foregrounds (fooled by at least one background in the exhaustive search)
             that the pruned search also finds fooled
  gap        pruned worst margin - exhaustive worst margin per foreground (>= 0; 0 = the same worst case),
             median and 95th percentile over all searched foregrounds, in logits.
Criterion `any` throughout.

Stores:
  - demo: advbg/data/demo.h5 (real photos) with the embedded tf_efficientnet_lite0 (IN-9 label map), copied to a
    temporary folder so the bundled store is never written.
  - synthetic: built here. Foregrounds are colour-coded blobs (ellipse or rectangle, random size, position and
    saturation) of 9 classes; backgrounds come in families (a prototype per ~20 backgrounds: class-tinted stripes
    at a class angle, or random stripes for "no class", often with a small disc of some class colour at a
    prototype-specific place). A small CNN with the timm contract (forward_features / forward_head) is trained
    here for a few seconds on composites whose background matches the class 60% of the time, so it learns to
    use backgrounds and background families of other classes really fool it. The disc under the object or not,
    and the object's own strength, make some foregrounds vulnerable to only a few backgrounds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advbg.data.labels import IN9_CLASSES
from advbg.data.store import Store
from advbg.data.writer import write_store
from advbg.models.classifier import Classifier, ClassifierConfig
from advbg.models.label_map import identity_map
from advbg.models.loading import load_classifier
from advbg.search.config import SearchConfig
from advbg.search.index import build_index
from advbg.search.runner import search
from advbg.search.strategies import RULES, Pruned, PruneSpec

REPO = Path(__file__).resolve().parents[1]
PALETTE = np.array([[220, 40, 40], [230, 120, 30], [220, 210, 40], [60, 180, 60], [40, 170, 170], [40, 80, 220],
                    [140, 60, 200], [220, 60, 160], [120, 90, 60]], np.float32)
SIZE = 32


# --------------------------------------------------------------------------------------------- synthetic store
def make_foregrounds(rng: np.random.Generator, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 32, 32, 3) images and 0/1 masks: one colour-coded blob per image."""
    n = len(labels)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    cy, cx = (rng.uniform(0.25, 0.75, (2, n, 1, 1)) * SIZE)
    ry, rx = (rng.uniform(0.12, 0.36, (2, n, 1, 1)) * SIZE)
    dy, dx = np.abs(yy[None] - cy) / ry, np.abs(xx[None] - cx) / rx
    rect = (rng.random(n) < 0.5)[:, None, None]
    mask = np.where(rect, np.maximum(dy, dx) <= 0.85, dy ** 2 + dx ** 2 <= 1).astype(np.uint8)
    sat = rng.uniform(0.3, 1.0, (n, 1, 1, 1))
    colour = PALETTE[labels][:, None, None, :] * sat + 128 * (1 - sat)
    shade = 1 + 0.15 * np.sin(xx / 2 + rng.uniform(0, 6, (n, 1, 1)))[..., None]
    img = colour * shade + rng.normal(0, 22, (n, SIZE, SIZE, 3))
    return np.clip(img, 0, 255).astype(np.uint8), mask


def make_prototypes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list]:
    """Background families: label (-1 = none) and (angle, frequency, tint, disc or None) per prototype."""
    labels = rng.integers(-1, 9, n)
    protos = []
    for k in labels:
        if k < 0:
            ang, fr, tint = rng.uniform(0, np.pi), rng.uniform(1, 6), rng.uniform(60, 200, 3)
        else:
            ang, fr, tint = k * np.pi / 9 + rng.normal(0, 0.1), 2 + k % 3 + rng.normal(0, 0.3), PALETTE[k] * 0.5 + 64
        disc = (int(rng.integers(0, 9)), rng.uniform(4, 28, 2), rng.uniform(3, 7)) if rng.random() < 0.6 else None
        protos.append((ang, fr, tint, disc))
    return labels, protos


def make_backgrounds(rng: np.random.Generator, protos: list, which: np.ndarray) -> np.ndarray:
    """uint8 (n, 32, 32, 3): a jittered member of prototype ``which[i]`` per image."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    out = np.empty((len(which), SIZE, SIZE, 3), np.float32)
    for i, p in enumerate(which):
        ang, fr, tint, disc = protos[p]
        ang += rng.normal(0, 0.05)
        wave = np.sin(2 * np.pi * fr * (np.cos(ang) * xx + np.sin(ang) * yy) / SIZE + rng.uniform(0, 2 * np.pi))
        img = tint * (0.75 + 0.25 * rng.uniform(0.5, 1) * wave[..., None])
        if disc is not None:
            c, (py, px), r = disc
            inside = (yy - py - rng.normal(0, 2)) ** 2 + (xx - px - rng.normal(0, 2)) ** 2 <= (r * rng.uniform(0.8, 1.2)) ** 2
            img[inside] = PALETTE[c] * 0.9 + 12.8
        out[i] = img + rng.normal(0, 20, (SIZE, SIZE, 3))
    return np.clip(out, 0, 255).astype(np.uint8)


class SynthNet(nn.Module):
    """A small CNN with timm's contract (forward_features, forward_head(pre_logits=...)), global average pooled."""

    def __init__(self, num_classes: int = 9, width: int = 16):
        super().__init__()
        self.num_classes = num_classes
        w = width
        self.features = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1), nn.ReLU(), nn.Conv2d(w, 2 * w, 3, 2, 1), nn.ReLU(),
                                      nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.ReLU())
        self.hidden, self.fc = nn.Linear(2 * w, 2 * w), nn.Linear(2 * w, num_classes)

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, x, pre_logits: bool = False):
        h = torch.relu(self.hidden(x.mean((2, 3))))
        return h if pre_logits else self.fc(h)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def train_synth_classifier(seed: int = 0, n: int = 6000, epochs: int = 5) -> Classifier:
    """SynthNet trained on composites whose background matches the class 60% of the time."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    y = rng.integers(0, 9, n)
    fg, mask = make_foregrounds(rng, y)
    plab, protos = make_prototypes(rng, 300)
    bl = np.where(rng.random(n) < 0.6, y, rng.integers(-1, 9, n))
    bg = make_backgrounds(rng, protos, np.array([rng.choice(np.flatnonzero(plab == k)) for k in bl]))
    x = torch.tensor(np.where(mask[..., None].astype(bool), fg, bg)).permute(0, 3, 1, 2).float() / 255
    x, target = (x - 0.5) / 0.25, torch.tensor(y)
    net = SynthNet()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(n).split(128):
            loss = F.cross_entropy(net(x[idx]), target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    lm = identity_map(IN9_CLASSES)
    cfg = ClassifierConfig(name="bench/synthnet", architecture="synthnet", weight_tag=f"seed{seed}", source="bench",
                           weights_file=None, weights_sha256=None, input_size=(3, SIZE, SIZE), mean=(0.5,) * 3,
                           std=(0.25,) * 3, interpolation="bilinear", num_outputs=9, label_map=lm.name,
                           class_names=lm.class_names)
    return Classifier(net.eval(), cfg, lm).to(memory_format=torch.channels_last)


def make_synthetic_store(path: Path, n_fg: int, n_bg: int, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    fy = rng.integers(0, 9, n_fg)
    fg, mask = make_foregrounds(rng, fy)
    plab, protos = make_prototypes(rng, max(1, n_bg // 20))
    which = rng.integers(0, len(protos), n_bg)
    return write_store(path, class_names=IN9_CLASSES, fg_images=fg, fg_masks=mask, fg_labels=fy,
                       bg_images=make_backgrounds(rng, protos, which), bg_labels=plab[which], overwrite=True)


# --------------------------------------------------------------------------------------------- measuring
def measure(name: str, path: Path, clf: Classifier, ks: list[int], rules, batch_size: int) -> list[dict]:
    cfg = SearchConfig(batch_size=batch_size, fg_block=64, record_outcomes=False)
    with Store(path, "r+") as s:
        t = time.perf_counter()
        build_index(s, clf, progress=False)
        t_index = time.perf_counter() - t
        full = search(s, clf, cfg, write=False, progress=False)
        n_pool = len(s.backgrounds)
        vuln = full.fooled
        print(f"\n{name}: {len(full)} foregrounds x {n_pool} backgrounds, {int(vuln.sum())} vulnerable "
              f"(fooling rate {full.fooling_rate:.1f}%); index {t_index:.1f} s, exhaustive "
              f"{full.run.forwards} forwards in {full.run.seconds:.1f} s", flush=True)
        print("| store | rule | K | forwards / exhaustive | recall of vulnerable | gap median | gap p95 | s |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        rows = []
        for rule in rules:
            for k in ks:
                t = time.perf_counter()
                r = search(s, clf, cfg, strategy=Pruned(PruneSpec(rule, k=k)), write=False, progress=False)
                secs = time.perf_counter() - t
                gap = r.worst_margin - full.worst_margin
                row = dict(store=name, rule=rule, k=k, share=r.run.forwards / full.run.forwards,
                           recall=float((r.fooled & vuln).sum() / max(1, vuln.sum())),
                           gap_median=float(np.median(gap)), gap_p95=float(np.percentile(gap, 95)), seconds=secs)
                rows.append(row)
                print(f"| {name} | {rule} | {k} | {100 * row['share']:.1f}% | {100 * row['recall']:.1f}% "
                      f"({int((r.fooled & vuln).sum())}/{int(vuln.sum())}) | {row['gap_median']:.2f} | "
                      f"{row['gap_p95']:.2f} | {secs:.1f} |", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("demo", "synthetic"))
    ap.add_argument("--fg", type=int, default=300, help="synthetic foregrounds")
    ap.add_argument("--bg", type=int, default=1500, help="synthetic backgrounds")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--batch-size", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    rules = args.rules.split(",")
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"CUDA {'yes' if torch.cuda.is_available() else 'no'}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "demo"):
            demo = Path(tmp) / "demo.h5"
            shutil.copyfile(REPO / "advbg" / "data" / "demo.h5", demo)
            measure("demo", demo, load_classifier("advbg/lite0", device="cpu"), [1, 2, 3, 5], rules, 64)
        if args.only in (None, "synthetic"):
            t = time.perf_counter()
            clf = train_synth_classifier()
            path = make_synthetic_store(Path(tmp) / "synthetic.h5", args.fg, args.bg)
            print(f"\nsynthetic store and model built in {time.perf_counter() - t:.1f} s", flush=True)
            ks = sorted({max(1, round(args.bg * r)) for r in (0.01, 0.02, 0.05, 0.10)})
            measure("synthetic", path, clf, ks, rules, args.batch_size)


if __name__ == "__main__":
    main()
