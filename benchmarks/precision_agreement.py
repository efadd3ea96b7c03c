"""How often low precision (bf16 / fp16 autocast) changes what the search reports, against fp32, and whether
``--verify-close TOL`` (re-check in fp32 every decision within TOL of flipping) restores the fp32 answers.

For each store (the demo store and a synthetic one) it runs exhaustive searches in fp32, bf16 and fp16, and bf16 /
fp16 with --verify-close, and compares with fp32:
  - pairs: composites whose mapped prediction differs; fooled/not-fooled decisions of single composites that
    differ, for both criteria (any: prediction != true class; bg-class: prediction == the background's class);
  - foregrounds: fooled/not-fooled decisions that differ (both criteria), worst backgrounds that differ, the
    largest change of the worst margin; the fooling rate (criterion any).
Verified runs use criterion any, so their any-decisions are the ones --verify-close guarantees.

    python benchmarks/precision_agreement.py [--model advbg/lite0] [--store advbg/data/demo.h5]
        [--synthetic 16x48] [--tol 0.5] [--precisions bf16,fp16] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search_memory import build_store  # noqa: E402

from advbg.data.store import Store  # noqa: E402
from advbg.models.loading import load_classifier  # noqa: E402
from advbg.search.config import SearchConfig
from advbg.search.criteria import OUTCOME_NONE
from advbg.search.results import load_outcome  # noqa: E402
from advbg.search.runner import search  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run(store_path: Path, clf, amp: str, tol: float, device: str, name: str):
    with Store(store_path, "r+") as s:
        cfg = SearchConfig(amp=amp, verify_close=tol, device=device)
        t0 = time.perf_counter()
        res = search(s, clf, cfg, results_name=name, progress=False)
        secs = time.perf_counter() - t0
        outcome, fg, pool = load_outcome(s, name)
        true = s.foregrounds.labels[fg]
        bgl = s.backgrounds.labels[pool]
    pred = np.where(outcome == OUTCOME_NONE, -1, outcome.astype(np.int64))
    fool_any = pred != true[:, None]
    fool_bg = (pred == bgl[None, :]) & (bgl[None, :] >= 0) & (bgl[None, :] != true[:, None])
    return dict(res=res, pred=pred, fool_any=fool_any, fool_bg=fool_bg, seconds=secs)


def compare(ref: dict, low: dict) -> dict:
    r, lo = ref["res"], low["res"]
    dm = np.abs(lo.worst_margin - r.worst_margin)
    return dict(
        pairs=int(ref["pred"].size),
        pred_differs=int((ref["pred"] != low["pred"]).sum()),
        pair_flips_any=int((ref["fool_any"] != low["fool_any"]).sum()),
        pair_flips_bg=int((ref["fool_bg"] != low["fool_bg"]).sum()),
        foregrounds=len(r),
        fg_flips_any=int((ref["fool_any"].any(1) != low["fool_any"].any(1)).sum()),
        fg_flips_bg=int((ref["fool_bg"].any(1) != low["fool_bg"].any(1)).sum()),
        worst_bg_differs=int((r.worst_bg != lo.worst_bg).sum()),
        max_worst_margin_change=float(np.nanmax(dm)) if np.isfinite(dm).any() else 0.0,
        fooling_rate=lo.fooling_rate, fp32_rate=r.fooling_rate, verified=lo.run.verified,
        seconds=low["seconds"])


def study(label: str, store_path: Path, clf, tol: float, device: str, precisions: list[str]) -> list[dict]:
    ref = run(store_path, clf, "off", 0.0, device, "fp32")
    rows = [dict(store=label, precision="fp32", **compare(ref, ref))]
    for amp in precisions:
        for t in (0.0, tol):
            try:
                low = run(store_path, clf, amp, t, device, f"{amp}-{t}")
            except RuntimeError as e:  # e.g. fp16 convolutions missing on this CPU build
                print(f"{label} {amp}: skipped ({str(e).splitlines()[0]})", flush=True)
                break
            rows.append(dict(store=label, precision=amp + (f" + verify-close {t}" if t else ""),
                             **compare(ref, low)))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| store | precision | pairs: other prediction | pair decisions flipped (any / bg-class) | "
           "foreground decisions flipped (any / bg-class) | worst bg changed | max abs change of worst margin | "
           "fooling rate (fp32) | pairs re-checked in fp32 | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['store']} | {r['precision']} | {r['pred_differs']} / {r['pairs']} | "
                   f"{r['pair_flips_any']} / {r['pair_flips_bg']} | {r['fg_flips_any']} / {r['fg_flips_bg']} of "
                   f"{r['foregrounds']} | {r['worst_bg_differs']} | {r['max_worst_margin_change']:.3f} | "
                   f"{r['fooling_rate']:.1f}% ({r['fp32_rate']:.1f}%) | {r['verified']} | {r['seconds']:.0f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="advbg/lite0")
    ap.add_argument("--store", type=Path, default=REPO / "advbg" / "data" / "demo.h5", help="'' to skip")
    ap.add_argument("--synthetic", default="16x48", help="FxB of the synthetic store ('' to skip)")
    ap.add_argument("--tol", type=float, default=0.5, help="--verify-close tolerance (logits)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precisions", default=None,
                    help="low precisions to compare (default: bf16,fp16 on CUDA; bf16 on CPU, where fp16 "
                         "convolutions are emulated and about 20x slower)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "advbg-precision")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    precisions = (args.precisions or ("bf16,fp16" if args.device.startswith("cuda") else "bf16")).split(",")
    clf = load_classifier(args.model, label_map="in9" if "/" not in args.model else "auto", device=args.device,
                          pretrained="/" in args.model)
    stores = []
    if str(args.store) not in ("", ".") and args.store.is_file():
        copy = args.workdir / "demo.h5"       # results go into a copy: the bundled store stays pristine
        shutil.copyfile(args.store, copy)
        stores.append((args.store.name, copy))
    if args.synthetic:
        f, b = (int(v) for v in args.synthetic.split("x"))
        path = args.workdir / f"synthetic_{f}x{b}.h5"
        path.unlink(missing_ok=True)
        build_store(path, f, b, 224, distinct=max(f, b), seed=1)
        stores.append((f"synthetic {f}x{b}", path))
    rows = []
    for label, path in stores:
        rows += study(label, path, clf, args.tol, args.device, precisions)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"\nmodel {clf.config.tag} ({args.model}), device {dev}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
