"""The gap between the real worst background and a refined one, per model (issue: `advbg refine`, Measure).

For each model: the fooling rate of each foreground's worst real background (a search, not written to the store)
vs the same backgrounds refined under each budget, with n and exact 95% intervals; and the median min-EPS
(background robustness radius) starting from the worst real background, from a random background of the pool
(seeded) and from the foreground's own original background (same source_id; foregrounds without one are left out).

    python benchmarks/refine_gap.py --models advbg/lite0 --budgets "linf:1/255,2/255,4/255,8/255;photometric"
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time

import numpy as np

from advbg.commands.common import DEMO_STORE
from advbg.commands.refine import radius_line, rate
from advbg.data.store import Store
from advbg.models.loading import load_classifier
from advbg.search.config import SearchConfig
from advbg.search.refine import MinEpsBudget, parse_budgets, refine
from advbg.search.runner import search


def _machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True, check=False)
                .stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    return f"{os.cpu_count()} cores, {cpu}, load average {os.getloadavg()[0]:.1f}"


def _starts(s: Store, worst: np.ndarray, fg_id: np.ndarray, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """start name -> (rows of fg_id that have that start, bg_ids)."""
    rng = np.random.default_rng(seed)
    own = {sid: j for j, sid in enumerate(s.backgrounds.source_ids)}
    own_bg = np.array([own.get(s.foregrounds.source_ids[f], -1) for f in fg_id])
    rows = np.arange(len(fg_id))
    return {"worst real": (rows, worst), "random": (rows, rng.integers(0, len(s.backgrounds), len(fg_id))),
            "own": (rows[own_bg >= 0], own_bg[own_bg >= 0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default=str(DEMO_STORE))
    ap.add_argument("--models", default="advbg/lite0")
    ap.add_argument("--budgets", default="linf:1/255,2/255,4/255,8/255;photometric")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--starts", default="worst real,random,own", help="min-eps starts to measure ('' for none)")
    args = ap.parse_args()
    print(f"machine: {_machine()}")
    with Store(args.store) as s:
        for name in args.models.split(","):
            t0 = time.perf_counter()
            clf = load_classifier(name)
            found = search(s, clf, SearchConfig(criterion="any"), write=False, progress=False)
            keep = found.worst_bg >= 0
            fg_id, worst = found.fg_id[keep], found.worst_bg[keep]
            fg, mask, true = s.foregrounds.read(fg_id), s.foregrounds.read_masks(fg_id), s.foregrounds.labels[fg_id]
            for b in parse_budgets(args.budgets, args.steps) if args.budgets else []:
                r = refine(clf, fg, mask, s.backgrounds.read(worst), true, b, keys=fg_id, seed=args.seed)
                print(f"| {name} | {b.name} | real worst {rate(r.fooled_before)} | refined {rate(r.fooled_after)} |")
            for start, (rows, bg_id) in _starts(s, worst, fg_id, args.seed).items():
                if start not in args.starts.split(","):
                    continue
                if not len(rows):
                    print(f"| {name} | min-eps from {start} | no foreground has one |")
                    continue
                r = refine(clf, fg[rows], mask[rows], s.backgrounds.read(bg_id), true[rows],
                           MinEpsBudget(steps=args.steps), keys=fg_id[rows], seed=args.seed)
                print(f"| {name} | min-eps from {start} | {radius_line(r)} |")
            print(f"{name}: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
