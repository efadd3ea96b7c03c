"""The gap between the real worst background and a refined one, per model (issue: `advbg refine`, Measure).

Everything comes from the public API `advbg.commands.run_refine` (what `advbg refine` runs), on a copy of the
store in a temporary folder (the search it runs first and the refine results are written there, not beside the
store). For each model: the fooling rate of each foreground's worst real background vs the same backgrounds refined
under each budget, with n and exact 95% intervals (`--start worst`); then the median min-EPS (background
robustness radius) from the worst real background, from a random background of the store (`--start random`,
seeded per foreground) and from the foreground's own original background (`--start own`, same source_id;
foregrounds without one are left out).

    python benchmarks/refine_gap.py --models advbg/lite0 --budgets "linf:1/255,2/255,4/255,8/255;photometric"
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from advbg.commands.common import DEMO_STORE
from advbg.commands.refine import radius_line, run_refine
from advbg.models.loading import load_classifier


def _machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True,
                                                                      check=False).stdout.splitlines()
                if ln.startswith("Model name")), platform.processor())
    return f"{os.cpu_count()} cores, {cpu}, load average {os.getloadavg()[0]:.1f}"


def _quiet(_text: str) -> None:
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default=str(DEMO_STORE))
    ap.add_argument("--models", default="advbg/lite0")
    ap.add_argument("--budgets", default="linf:1/255,2/255,4/255,8/255;photometric")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--starts", default="worst,random,own", help="min-eps starts to measure ('' for none)")
    ap.add_argument("--work", default=None, help="Keep the store copy (and its search and refine results) in this "
                                                 "folder between invocations (default: a temporary folder)")
    args = ap.parse_args()
    print(f"machine: {_machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(args.work or tmp) / Path(args.store).name
        store.parent.mkdir(parents=True, exist_ok=True)
        if not store.exists():
            shutil.copyfile(args.store, store)
        for name in args.models.split(","):
            t0 = time.perf_counter()
            clf = load_classifier(name)
            common = dict(steps=args.steps, seed=args.seed, curve=Path("-"), grid=Path("-"), progress=True,
                          note=lambda text, t0=t0: print(f"[{time.perf_counter() - t0:.0f} s] {text}", flush=True))
            if args.budgets:
                run = run_refine(store, clf, args.budgets, results_name=f"gap-{name.replace('/', '-')}", echo=_quiet,
                                 **common)
                print(f"| {name} | real worst background | {run.real} |", flush=True)
                for line in run.lines()[1:]:
                    print(f"| {name} | {line.split(' | ')[0]} | {line.split(' | ', 1)[1]} |")
                print(f"{name}: budgets {time.perf_counter() - t0:.0f} s")
            for start in filter(None, args.starts.split(",")):
                t1 = time.perf_counter()
                run = run_refine(store, clf, "min-eps", start=start, echo=_quiet,
                                 results_name=f"radius-{start}-{name.replace('/', '-')}", **common)
                print(f"| {name} | min-eps from --start {start} | {radius_line(run.refined[0])} | "
                      f"{time.perf_counter() - t1:.0f} s |")
            print(f"{name}: {time.perf_counter() - t0:.0f} s; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
