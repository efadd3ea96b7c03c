"""Scale of `advbg universal` at IN-9 test size: 4,050 foregrounds x 4,050 backgrounds.

Writes a synthetic store (tiny 8x8 images: only the outcome matrix matters here) and a results file holding a
random 4,050 x 4,050 uint8 outcome matrix the way `advbg search` merges one (SearchWriter, 32-row units, gzip),
then reports the matrix's size on disk and the time of `universal` over all classes on CPU, which must reuse the
stored matrix with zero forward passes.

    python benchmarks/universal_scale.py [--n 4050] [--greedy 5] [--workdir /tmp/advbg-bench]

The random matrix (predictions uniform over the 9 classes, 5 % "none") compresses worse than a real one, where
most predictions are the foreground's own class, so its size is an upper bound.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from advbg.analysis.plots import asr_histogram_png, top_backgrounds_png
from advbg.analysis.universal import analyse
from advbg.commands.universal import run_universal
from advbg.data.labels import IN9_CLASSES
from advbg.data.sidecar import sidecar_folder
from advbg.data.store import Store
from advbg.data.writer import write_store
from advbg.models.classifier import Classifier, ClassifierConfig
from advbg.models.label_map import identity_map
from advbg.search.config import SearchConfig
from advbg.search.criteria import OUTCOME_NONE
from advbg.search.results import (
    FIELDS,
    RunRecord,
    SearchWriter,
    fingerprint,
    group_attrs,
)


class _NeverCalled(nn.Module):
    def forward(self, x):
        raise RuntimeError("universal must not run a forward pass on a stored matrix")


def synthetic_classifier() -> Classifier:
    lm = identity_map(IN9_CLASSES)
    cfg = ClassifierConfig(name="synthetic", architecture="synthetic", weight_tag="bench", source="test",
                           weights_file=None, weights_sha256=None, input_size=(3, 8, 8), mean=(0.5,) * 3,
                           std=(0.25,) * 3, interpolation="bilinear", num_outputs=9, label_map=lm.name,
                           class_names=lm.class_names)
    return Classifier(_NeverCalled(), cfg, lm)


def build(path: Path, n: int, rng: np.random.Generator) -> float:
    """Store + results group; returns (store bytes without results, seconds to write the matrix)."""
    k = len(IN9_CLASSES)
    write_store(path, class_names=IN9_CLASSES, overwrite=True,
                fg_images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
                fg_masks=np.ones((n, 8, 8), np.uint8), fg_labels=np.arange(n) % k,
                bg_images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), bg_labels=np.arange(n) % k)
    outcome = rng.integers(0, k, (n, n), dtype=np.uint8)
    outcome[rng.random((n, n)) < 0.05] = OUTCOME_NONE
    clf, cfg = synthetic_classifier(), SearchConfig(criterion="bg-class", mode="exhaustive")
    t0 = time.perf_counter()
    name = "synthetic.bench.bg-class.exhaustive"
    with Store(path, "r+") as s, s.write_derived("results", name) as out:
        ids = np.arange(n, dtype=np.int64)
        fp = fingerprint(s, ids, ids, clf, cfg, "off")
        w = SearchWriter(out, name, ids, ids, s.foregrounds.labels, fp, group_attrs(clf, cfg), record_outcomes=True,
                         fg_block=cfg.fg_block)
        for start in range(0, n, cfg.fg_block):          # one unit at a time, as a search's merge does
            stop = min(start + cfg.fg_block, n)
            vals = {f: np.full(stop - start, np.nan if f == "worst_margin" else -1) for f in FIELDS}
            w.write_rows(start, stop, vals, outcome[start:stop])
        w.finish(asdict(RunRecord("bench", clf.config.to_dict(), str(path), s.digest(), "bg-class", "exhaustive",
                                  None, cfg.to_dict(), "cpu", "", 0.0, 0)))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4050)
    ap.add_argument("--greedy", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="advbg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "universal_scale.h5"
    t_write = build(path, a.n, np.random.default_rng(0))
    size = sum(p.stat().st_size for p in sidecar_folder(path).rglob('*.h5'))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"no GPU used")
    print(f"outcome matrix {a.n} x {a.n} uint8 = {a.n * a.n / 1e6:.1f} MB raw; on disk {size / 1e6:.1f} MB "
          f"(gzip 1, 32-row chunks); written in {t_write:.1f} s")
    clf = synthetic_classifier()
    for criterion in ("bg-class", "any"):
        t0 = time.perf_counter()
        r = run_universal(store=path, model=clf, klass="all", criterion=criterion, greedy=a.greedy,
                          top_png=Path("-"), hist_png=Path("-"), progress=False, echo=lambda m: None)
        t_all = time.perf_counter() - t0
        assert r.forwards == 0
        t0 = time.perf_counter()
        with Store(path) as s:
            o = s.results["synthetic.bench.bg-class.exhaustive"]["outcome"][()]
            fg, bg = s.foregrounds.labels, s.backgrounds.labels
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        analyse(o, fg, bg, IN9_CLASSES, criterion, top=5, greedy=a.greedy)
        t_an = time.perf_counter() - t0
        print(f"universal --class all --criterion {criterion} --greedy {a.greedy}: {t_all:.2f} s end to end "
              f"(0 forward passes; reading the matrix {t_read:.2f} s, analysis of 9 classes {t_an:.2f} s)")
    t0 = time.perf_counter()
    with Store(path) as s:
        top_backgrounds_png(s, r, work / "top.png")
        asr_histogram_png(s, r, work / "hist.png")
    print(f"both PNGs for 9 classes: {time.perf_counter() - t0:.2f} s")
    if a.workdir is None:
        path.unlink()


if __name__ == "__main__":
    main()
