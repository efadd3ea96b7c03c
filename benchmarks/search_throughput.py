"""Composites per second of `advbg search` against the bare model and against a reference-style loop.

For each model and setting it measures, on a synthetic store at 224 px:
  - bare: the model's forward alone on pre-built, pre-normalised composites of the same batch size, precision and
    memory format (the most the search could reach; target ratio search / bare >= 0.9);
  - search: `search(...)` exhaustive, steady state (units after the first, which carries the pool upload and any
    compilation) and end to end, on as many foregrounds as the bare rate says fit in ``--row-seconds``;
  - reference: the Backgrounds Challenge script's way — one foreground at a time, every background JPEG decoded
    again for each foreground (OpenCV, faster than the original PIL), float32 numpy composites, batches of 32,
    fp32, NCHW — with the same model (targets: >= 2x on CPU, >= 50x on a GPU);
and projects the time of the full IN-9 grid, 4,050 x 4,050 = 16.4 M composites, from the steady rate.
Each row also gives the model's FLOPs per image (counted by torch.utils.flop_counter.FlopCounterMode on one forward,
not typed in), the GFLOP/s the search and the bare forward reach, the CPU's (or GPU's) peak for the row's precision
and the share of it reached. The CPU peak is cores x clock x FLOP per cycle from the CPU's reported features
(advbg.hardware.peak_gflops says how, and prints its arithmetic); on a GPU the measured bf16 matmul rate.
CPU rows: fp32, bf16 and bf16+verify (bf16 with --verify-close at the tolerance `--amp auto`'s calibration derives
from the measured bf16-vs-fp32 margin error of the model on a batch of the store's composites), channels_last on;
opt-in (--compile) fp32+compile and bf16+verify+compile. Before the rows it prints, per model, what `--amp auto`
would choose on this machine and why.
Rows with torch.compile run in a child process under ``--row-timeout``: a compilation that fails or runs too
long gives a row that says why, and the rest of the run goes on.

    python benchmarks/search_throughput.py                 # GPU section on CUDA, CPU section otherwise
    python benchmarks/search_throughput.py --section cpu --cpu-models advbg/lite0 --compile
                                                           # + fp32+compile rows (inductor: minutes on 2 cores)
    python benchmarks/search_throughput.py --section gpu --json gpu.json
        # resnet50 fp32 / bf16 / bf16+channels_last / +compile / +CUDA graphs, then the long run: 4,050
        # backgrounds and as many foregrounds as fit in --long-seconds (sustained rate, peak GPU and host memory)
    python benchmarks/search_throughput.py --section gpu --dry      # the GPU section's code on the CPU, tiny sizes
    python benchmarks/search_throughput.py --section cpu --ab BEFORE_DIR --cpu-models advbg/lite0
        # search/bare of the advbg package in BEFORE_DIR and of this checkout, alternating in child processes
    python benchmarks/search_throughput.py --section cpu --bare-only --repeat 3
        # only the bare forward, fp32 and bf16 alternating side by side (images/s, GFLOP/s, share of peak)

Models given by timm name get random weights (speed does not depend on them); advbg/lite0 is the embedded one.
The GPU section also measures the bf16 matmul ceiling and reports the gap to the compute floor of the grid.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

# Measure the search as the `advbg` command runs it (it keeps freed memory for the next forward; see README).
os.environ.setdefault("ADVBG_KEEP_FREED_MEMORY", "1")

HERE = Path(__file__).resolve().parent
if os.environ.get("ADVBG_BENCH_SRC"):          # --ab: measure the advbg package found there instead
    sys.path.insert(0, os.environ["ADVBG_BENCH_SRC"])
else:
    sys.path.insert(0, str(HERE.parent))
sys.path.insert(1, str(HERE))
import advbg  # noqa: E402,F401  (first, so that search_memory's own path setting cannot swap the package)

from search_memory import build_store  # noqa: E402

from advbg import hardware  # noqa: E402
from advbg.data.store import Store  # noqa: E402
from advbg.models.loading import load_classifier  # noqa: E402
from advbg.models.precision import choose_precision, margin_error_bound, tolerance_from_bound  # noqa: E402
from advbg.search.config import SearchConfig  # noqa: E402
from advbg.search.runner import search  # noqa: E402

GRID = 4050 * 4050
RESNET50_FLOP = 2 * 4.1e9      # per 224 px forward


@dataclass(frozen=True)
class Variant:
    name: str
    amp: str
    channels_last: bool
    compile: bool = False
    cuda_graphs: bool = False
    verify: bool = False           # --verify-close at the model's calibrated tolerance (low precision only)


GPU_VARIANTS = (Variant("fp32", "off", False), Variant("bf16", "bf16", False),
                Variant("bf16+channels_last", "bf16", True),
                Variant("bf16+channels_last+compile", "bf16", True, True),
                Variant("bf16+channels_last+compile+cuda_graphs", "bf16", True, True, True))
CPU_VARIANTS = (Variant("fp32", "off", True), Variant("bf16", "bf16", True),
                Variant("bf16+verify", "bf16", True, verify=True), Variant("fp32+compile", "off", True, True),
                Variant("bf16+verify+compile", "bf16", True, True, verify=True))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def classifier(name: str, device: torch.device):
    if "/" in name:
        return load_classifier(name, device=device)
    return load_classifier(name, pretrained=False, label_map="in9", device=device)


def load_now() -> float:
    return os.getloadavg()[0]


# --------------------------------------------------------------------------------------------- measurements
def measure_search(clf, store: Store, v: Variant, n_fg: int, device: torch.device, fg_block: int,
                   batch: int | None, tol: float = 0.0) -> dict:
    times = []
    cfg = SearchConfig(amp=v.amp, channels_last=v.channels_last, compile=v.compile, cuda_graphs=v.cuda_graphs,
                       foregrounds=tuple(range(n_fg)), fg_block=fg_block, batch_size=batch, device=str(device),
                       verify_close=tol if v.verify else 0.0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    res = search(store, clf, cfg, write=False, progress=False, on_unit=lambda _: times.append(time.perf_counter()))
    total = time.perf_counter() - t0
    per_unit = fg_block * len(store.backgrounds)
    steady = (len(times) - 1) * per_unit / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    out = dict(end_to_end=res.run.forwards / total, steady=steady, batch=res.run.batch_size,
               composites=res.run.forwards, seconds=total, first_unit_s=times[0] - t0 if times else float("nan"),
               verified=getattr(res.run, "verified", 0), verify_close=cfg.verify_close)
    if device.type == "cuda":
        out.update(peak_gpu_allocated_gb=torch.cuda.max_memory_allocated(device) / 2**30,
                   peak_gpu_reserved_gb=torch.cuda.max_memory_reserved(device) / 2**30)
    return out


def example_composites(store: Store, batch: int, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """A batch of real composites of the store in [0, 1] (4 foregrounds cycled over up to 64 backgrounds)."""
    from advbg.search.compositor import composite_pairs

    fg = torch.as_tensor(store.foregrounds.read(np.arange(4))).to(device)
    mask = torch.as_tensor(store.foregrounds.read_masks(np.arange(4))).to(device)
    bg = torch.as_tensor(store.backgrounds.read(np.arange(min(64, len(store.backgrounds))))).to(device)
    fi = torch.arange(batch, device=device) % 4
    bj = torch.arange(batch, device=device) % bg.shape[0]
    return composite_pairs(fg, mask, bg, fi, bj, dtype)


def model_gflop(clf) -> float:
    """GFLOP of one image's forward, counted by torch's FlopCounterMode (convolutions and matmuls: 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand((1, *clf.config.input_size), device=clf.device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        clf.model(clf.preprocess(x))
    return counter.get_total_flops() / 1e9


def calibrate(clf, store: Store, batch: int, device: torch.device) -> tuple[dict, float]:
    """What `--amp auto` chooses for this model and batch (choose_precision on real composites), and the
    --verify-close tolerance of the bf16+verify rows: the calibration's, or derived the same way from the measured
    error bound where the calibration chose fp32 (or, without native bf16, did not measure one)."""
    x = example_composites(store, batch, device)
    choice = choose_precision(clf, x, channels_last=True)
    bound = choice.error_bound
    if bound is None:
        with torch.inference_mode():
            xin = clf.preprocess(x).contiguous(memory_format=torch.channels_last)
            ref = clf.model(xin).float()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                low = clf.model(xin).float()
        bound = margin_error_bound(clf.label_map, ref, low)
    return choice.to_record(), tolerance_from_bound(bound)


def measure_bare(clf, store: Store, v: Variant, batch: int, device: torch.device, seconds: float = 3.0) -> float:
    """Images/s of clf.model on a pre-built, normalised batch of real composites (same settings as the search)."""
    fmt = torch.channels_last if v.channels_last else torch.contiguous_format
    clf.to(device).to(memory_format=fmt)
    low = device.type == "cuda" and v.amp != "off"
    x = example_composites(store, batch, device, torch.bfloat16 if low else torch.float32)
    x = ((x - clf.mean.to(x.dtype)) / clf.std.to(x.dtype)).contiguous(memory_format=fmt)
    model = clf.model
    if v.compile:
        mode = "reduce-overhead" if (v.cuda_graphs and device.type == "cuda") else "default"
        model = torch.compile(clf.model, mode=mode)
    ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if v.amp == "bf16" else torch.autocast(
        device.type, enabled=False))
    warm, least = (3, 3) if device.type == "cuda" else (1, 2)     # a CPU forward of 64 takes seconds
    with torch.inference_mode(), ctx:
        for _ in range(warm):
            model(x)
        sync(device)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < least:
            model(x)
            n += 1
        sync(device)
    return n * batch / (time.perf_counter() - t0)


def write_jpegs(store: Store, folder: Path) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for j in range(len(store.backgrounds)):
        p = folder / f"bg{j:05d}.jpg"
        if not p.exists():
            cv2.imwrite(str(p), cv2.cvtColor(store.backgrounds.read([j])[0], cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(p)
    return paths


def measure_reference(clf, store: Store, jpgs: list[Path], n_fg: int, device: torch.device, batch: int = 32) -> float:
    """The reference challenge script's loop: per foreground, decode every background JPEG again, fp32."""
    import cv2

    clf.to(device).to(memory_format=torch.contiguous_format)
    n, t0 = 0, time.perf_counter()
    for i in range(n_fg):
        fg = store.foregrounds.read([i])[0].astype(np.float32) / 255
        m = store.foregrounds.read_masks([i])[0][..., None].astype(np.float32)
        for s in range(0, len(jpgs), batch):
            imgs = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in jpgs[s:s + batch]]
            b = np.stack(imgs).astype(np.float32) / 255
            x = torch.from_numpy(m * fg + (1 - m) * b).permute(0, 3, 1, 2).contiguous().to(device)
            with torch.no_grad():
                pred = clf.label_map.predict(clf(x)).cpu()
            n += len(pred)
    sync(device)
    return n / (time.perf_counter() - t0)


def matmul_tflops(device: torch.device, size: int = 8192) -> float:
    """Measured bf16 matmul rate (the compute ceiling, METHOD.md)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    reps, t0 = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - t0) / 1e12


# --------------------------------------------------------------------------------------------- one row
def row(model: str, v: Variant, device: torch.device, store_path: Path, fg_block: int, batch: int,
        row_seconds: float, max_fg: int, clf=None, n_fg: int | None = None, tol: float = 0.0) -> dict:
    """A search sized to take about ``row_seconds`` in steady state (at least 3 units; ``n_fg`` foregrounds when
    given, else sized by a first bare forward), then the bare forward. The bare forward comes after the search so
    that anything the search sets for the process (advbg.search.engine.keep_freed_memory) holds for both."""
    clf = clf or classifier(model, device)
    with Store(store_path) as store:
        per_unit = fg_block * len(store.backgrounds)
        if n_fg is None:
            est = measure_bare(clf, store, v, batch, device, seconds=min(1.0, row_seconds / 8))
            n_fg = min(max_fg, max(3, math.ceil(est * row_seconds / per_unit)) * fg_block)
        s = measure_search(clf, store, v, n_fg, device, fg_block, batch, tol)
        bare = measure_bare(clf, store, v, batch, device, seconds=min(3.0, row_seconds / 3))
    return dict(model=model, variant=v.name, batch=s["batch"], n_fg=n_fg, search=s["steady"],
                search_end_to_end=s["end_to_end"], bare=bare, ratio=s["steady"] / bare,
                grid_minutes=GRID / s["steady"] / 60, first_unit_s=s["first_unit_s"], verified=s["verified"],
                verify_close=s["verify_close"], composites=s["composites"],
                load_average=load_now(), **{k: v_ for k, v_ in s.items() if k.startswith("peak_")})


def child(args: list[str], timeout: float) -> tuple[dict | None, str]:
    """Run this script with ``args`` in a child process; (its JSON result, or None and the reason)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = Path(tmp.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), *args, "--child-out", str(out)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        out.unlink(missing_ok=True)
        return None, f"timed out after {timeout:.0f} s (compilation did not finish in time)"
    try:
        if p.returncode == 0 and out.stat().st_size:
            return json.loads(out.read_text()), ""
    finally:
        out.unlink(missing_ok=True)
    return None, _reason(p.stderr or p.stdout, p.returncode)


def _reason(text: str, code: int) -> str:
    """The line of a child's traceback that says what failed (TorchDynamo / inductor errors included)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    raised = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Failed|Unsupported)\w*\b", ln)]
    errs = raised or [ln for ln in lines if "Error" in ln or "error" in ln or "Exception" in ln]
    pick = errs[-1] if errs else (lines[-1] if lines else f"exit code {code}")
    return f"failed (exit {code}): {pick[:300]}"


def variant_row(model, v, device, store_path, fg_block, batch, row_seconds, max_fg, timeout, dry, clf=None,
                tol: float = 0.0) -> dict:
    if not v.compile:
        return row(model, v, device, store_path, fg_block, batch, row_seconds, max_fg, clf, tol=tol)
    args = ["--child-row", json.dumps(dict(model=model, variant=asdict(v), device=str(device),
                                           store=str(store_path), fg_block=fg_block, batch=batch,
                                           row_seconds=row_seconds, max_fg=max_fg, tol=tol))]
    t0 = time.perf_counter()
    got, why = child(args, timeout)
    if got is None:
        return dict(model=model, variant=v.name, batch=batch, failed=why, seconds=time.perf_counter() - t0,
                    load_average=load_now())
    return got


# --------------------------------------------------------------------------------------------- sections
def run_rows(models, variants, device, store_path, jpgs, fg_block, ref_fg, batch, row_seconds, max_fg,
             repeat, timeout, dry, deadline, refs: dict, peaks: dict) -> list[dict]:
    """One row per model and variant; ``refs`` caches each model's reference-loop rate, FLOPs per image and (CPU)
    `--amp auto` calibration; ``peaks`` maps a precision to its peak GFLOP/s."""
    rows = []
    for name in models:
        clf = classifier(name, device)
        if name not in refs:
            with Store(store_path) as store:
                ref_rate = measure_reference(clf, store, jpgs, ref_fg, device)
                cal, tol = calibrate(clf, store, batch, device) if device.type == "cpu" else (None, 0.0)
            refs[name] = dict(reference=ref_rate, gflop=model_gflop(clf), calibration=cal, tol=tol)
            print(json.dumps(dict(model=name, **refs[name], load_average=load_now())), flush=True)
        ref, tol, gflop = refs[name]["reference"], refs[name]["tol"], refs[name]["gflop"]
        for v in variants:
            left = deadline - time.monotonic()
            if left < 10:
                rows.append(dict(model=name, variant=v.name, failed="skipped: the run's time limit was reached"))
                print(json.dumps(rows[-1]), flush=True)
                continue
            # On a shared machine the load changes between measurements: `repeat` rows, medians kept.
            reps = [variant_row(name, v, device, store_path, fg_block, batch, row_seconds, max_fg,
                                min(timeout, left), dry, clf, tol) for _ in range(1 if v.compile else repeat)]
            ok = [r for r in reps if "failed" not in r]
            if not ok:
                r = reps[-1]
            else:
                r = dict(ok[-1])
                for k in ("search", "search_end_to_end", "bare", "ratio"):
                    r[k] = statistics.median(x[k] for x in ok)
                r["grid_minutes"] = GRID / r["search"] / 60
                r["repeats"] = len(ok)
                r["reference"] = ref
                r["speedup"] = r["search"] / ref
                peak = peaks.get("bf16" if v.amp == "bf16" else "fp32")
                r.update(gflop_per_image=gflop, search_gflops=r["search"] * gflop, bare_gflops=r["bare"] * gflop,
                         peak_gflops=peak, search_share=r["search"] * gflop / peak if peak else None,
                         bare_share=r["bare"] * gflop / peak if peak else None)
            rows.append(r)
            print(json.dumps(r), flush=True)
    return rows


def long_run(model: str, v: Variant, device: torch.device, workdir: Path, n_bg: int, rate: float, seconds: float,
             fg_block: int, batch: int) -> dict:
    """A store of ``n_bg`` backgrounds and as many foregrounds as ``rate`` says fit in ``seconds``; search it in
    a child process (its own peak host memory)."""
    n_fg = max(2 * fg_block, int(rate * seconds / n_bg) // fg_block * fg_block)
    path = workdir / f"long_{n_fg}x{n_bg}.h5"
    t0 = time.perf_counter()
    if not path.exists():
        build_store(path, n_fg, n_bg, 224)
    built = time.perf_counter() - t0
    args = ["--child-long", json.dumps(dict(model=model, variant=asdict(v), device=str(device), store=str(path),
                                            fg_block=fg_block, batch=batch, n_fg=n_fg))]
    got, why = child(args, timeout=seconds * 3 + 300)
    if got is None:
        return dict(model=model, variant=v.name, n_fg=n_fg, n_bg=n_bg, failed=why)
    got.update(store_build_s=built, n_bg=n_bg, n_fg=n_fg, grid_hours=GRID / got["steady"] / 3600,
               grid_hours_end_to_end=GRID / got["end_to_end"] / 3600)
    return got


def _child_row(spec: dict) -> dict:
    v = Variant(**spec["variant"])
    out = row(spec["model"], v, torch.device(spec["device"]), Path(spec["store"]), spec["fg_block"],
              spec["batch"], spec["row_seconds"], spec["max_fg"], n_fg=spec.get("n_fg"), tol=spec.get("tol", 0.0))
    out.update(page_faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt, advbg=str(Path(advbg.__file__).parent))
    return out


def _child_long(spec: dict) -> dict:
    v, device = Variant(**spec["variant"]), torch.device(spec["device"])
    clf = classifier(spec["model"], device)
    with Store(spec["store"]) as store:
        s = measure_search(clf, store, v, spec["n_fg"], device, spec["fg_block"], spec["batch"])
    s.update(model=spec["model"], variant=v.name, peak_host_rss_gb=resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 2**20, load_average=load_now())
    return s


def table(rows: list[dict]) -> str:
    out = ["| model | setting | batch | search (steady) | search (end to end) | bare forward | search/bare | "
           "GFLOP/image | search GFLOP/s | peak GFLOP/s | share of peak (search / bare) | re-checked in fp32 | "
           "reference loop | speed-up | 4,050 x 4,050 grid |", "|---" * 15 + "|"]
    for r in rows:
        if "failed" in r:
            out.append(f"| {r['model']} | {r['variant']} | {r.get('batch', '')} | {r['failed']} |" + " |" * 11)
            continue
        peak = r.get("peak_gflops")
        share = f"{r['search_share']:.1%} / {r['bare_share']:.1%}" if peak else "-"
        checked = (f"{r['verified'] / r['composites']:.1%} (tol {r['verify_close']:.3g})"
                   if r.get("verify_close") else "-")
        out.append(f"| {r['model']} | {r['variant']} | {r['batch']} | {_rate(r['search'])} | "
                   f"{_rate(r['search_end_to_end'])} | {_rate(r['bare'])} | {r['ratio']:.2f} | "
                   f"{r['gflop_per_image']:.2f} | {r['search_gflops']:,.1f} | {f'{peak:,.0f}' if peak else '-'} | "
                   f"{share} | {checked} | {_rate(r['reference'])} | {r['speedup']:.1f}x | "
                   f"{_duration(r['grid_minutes'])} |")
    return "\n".join(out)


def _rate(x: float) -> str:
    return f"{x:,.0f}/s" if x >= 100 else f"{x:.1f}/s"


def _duration(minutes: float) -> str:
    if minutes < 120:
        return f"{minutes:.1f} min"
    if minutes < 60 * 48:
        return f"{minutes / 60:.1f} h"
    return f"{minutes / 60 / 24:.1f} days"


# --------------------------------------------------------------------------------------------- A/B (CPU)
AB_SIDES = {"before": {}, "after": {"ADVBG_KEEP_FREED_MEMORY": "1"}, "after, ADVBG_KEEP_FREED_MEMORY=0": {"ADVBG_KEEP_FREED_MEMORY": "0"}}


def ab(args, before: Path) -> dict:
    """search/bare of the advbg in ``before`` and of this checkout (also with its malloc setting off), in rounds
    of child processes on the same store, model and settings, the order rotating each round; medians per side."""
    res: dict[str, list[dict]] = {k: [] for k in AB_SIDES}
    names = list(AB_SIDES)
    for r in range(args.repeat):
        for side in names[r % len(names):] + names[:r % len(names)]:
            env = dict(os.environ, **AB_SIDES[side])
            if side == "before":
                env["ADVBG_BENCH_SRC"] = str(before)
            else:
                env.pop("ADVBG_BENCH_SRC", None)
            spec = dict(model=args.cpu_models.split(",")[0], variant=asdict(CPU_VARIANTS[0]), device="cpu",
                        store=str(args._store), fg_block=args._fg_block, batch=args._batch,
                        row_seconds=args._row_seconds, max_fg=args._max_fg, n_fg=3 * args._fg_block)
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
                out = Path(tmp.name)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child-row", json.dumps(spec),
                   "--child-out", str(out)]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.row_timeout)
            if p.returncode:
                raise SystemExit(f"{side} failed: {_reason(p.stderr, p.returncode)}")
            got = json.loads(out.read_text())
            out.unlink()
            got.update(side=side, load_average=load_now())
            res[side].append(got)
            print(json.dumps(got), flush=True)
    summary = {side: dict(ratio=statistics.median(x["ratio"] for x in rs),
                          search=statistics.median(x["search"] for x in rs),
                          bare=statistics.median(x["bare"] for x in rs),
                          ratios=[round(x["ratio"], 3) for x in rs]) for side, rs in res.items()}
    print()
    print("| side | search/bare (median) | per round | search (steady, median) | bare (median) | page faults "
          "per child |")
    print("|---|---|---|---|---|---|")
    for side, s in summary.items():
        faults = statistics.median(x["page_faults"] for x in res[side])
        print(f"| {side} | {s['ratio']:.2f} | {', '.join(f'{x:.2f}' for x in s['ratios'])} | {s['search']:.1f}/s | "
              f"{s['bare']:.1f}/s | {faults:,.0f} |")
    return dict(rounds=res, summary=summary)


# --------------------------------------------------------------------------------------------- bare, side by side
def bare_only(args, device: torch.device, store_path: Path, batch: int, peaks: dict) -> list[dict]:
    """fp32 and bf16 bare forwards of each model, alternating (order swapped each round), medians per precision."""
    seconds = max(1.0, (args.row_seconds or 20.0) / 4)
    out = []
    for name in args.cpu_models.split(","):
        clf = classifier(name, device)
        gflop = model_gflop(clf)
        rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
        with Store(store_path) as store:
            for r in range(args.repeat):
                for p in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
                    v = Variant(p, "bf16" if p == "bf16" else "off", True)
                    rates[p].append(measure_bare(clf, store, v, batch, device, seconds))
                    print(json.dumps(dict(model=name, precision=p, round=r, rate=rates[p][-1],
                                          load_average=load_now())), flush=True)
        for p, rs in rates.items():
            med = statistics.median(rs)
            out.append(dict(model=name, precision=p, batch=batch, rates=rs, median=med, gflop_per_image=gflop,
                            gflops=med * gflop, peak_gflops=peaks.get(p),
                            share=med * gflop / peaks[p] if peaks.get(p) else None,
                            speedup=med / statistics.median(rates["fp32"])))
    print()
    print("| model | precision | batch | images/s per round | median | bf16 / fp32 | GFLOP/image | GFLOP/s | "
          "peak GFLOP/s | share of peak |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in out:
        peak = f"{r['peak_gflops']:,.0f}" if r["peak_gflops"] else "-"
        share = f"{r['share']:.1%}" if r["share"] is not None else "-"
        print(f"| {r['model']} | {r['precision']} | {r['batch']} | {', '.join(f'{x:.1f}' for x in r['rates'])} | "
              f"{r['median']:.1f}/s | {r['speedup']:.2f}x | {r['gflop_per_image']:.2f} | {r['gflops']:,.1f} | "
              f"{peak} | {share} |")
    print(f"load average at the end {load_now():.2f}")
    return out


# --------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", choices=("auto", "cpu", "gpu"), default="auto")
    ap.add_argument("--cpu-models", default="advbg/lite0,resnet50")
    ap.add_argument("--gpu-models", default="resnet50")
    ap.add_argument("--n-bg", type=int, default=None, help="backgrounds of the rows' store (default: 64 CPU, "
                    "1024 GPU, 8 dry)")
    ap.add_argument("--fg-block", type=int, default=None, help="foregrounds per unit (default: 2 CPU, 32 GPU, 2 dry)")
    ap.add_argument("--ref-fg", type=int, default=None, help="foregrounds in the reference loop (default 2, dry 1)")
    ap.add_argument("--batch-size", type=int, default=None, help="composites per forward (default: 64 CPU, "
                    "512 GPU, 8 dry)")
    ap.add_argument("--row-seconds", type=float, default=None, help="steady search time per row (default: 20 CPU, "
                    "8 GPU, 2 dry)")
    ap.add_argument("--repeat", type=int, default=3, help="alternating repetitions, medians reported (compiled "
                    "rows: 1)")
    ap.add_argument("--compile", action="store_true", help="CPU section: add the torch.compile rows (inductor "
                    "compiles for minutes on a small CPU; the GPU section always has them)")
    ap.add_argument("--no-compile", action="store_true", help="no torch.compile rows in any section")
    ap.add_argument("--row-timeout", type=float, default=600.0, help="seconds a compiled row (a child process) may "
                    "take before it is reported as timed out")
    ap.add_argument("--long-seconds", type=float, default=None, help="GPU section: the long run's target length "
                    "(default 180; 0 = none)")
    ap.add_argument("--long-bg", type=int, default=None, help="backgrounds of the long run (default 4050, dry 64)")
    ap.add_argument("--deadline-s", type=float, default=None, help="stop starting new rows after this many "
                    "seconds (reported as skipped) and shorten the long run to fit (default: 900 CPU, none GPU)")
    ap.add_argument("--dry", action="store_true", help="the chosen section's code path on the CPU with tiny sizes "
                    "(checks the script, measures nothing worth quoting)")
    ap.add_argument("--ab", type=Path, default=None, metavar="BEFORE_DIR", help="CPU: compare search/bare of the "
                    "advbg package in BEFORE_DIR (e.g. from `git archive REV advbg`) with this checkout's")
    ap.add_argument("--bare-only", action="store_true", help="only the bare forward of each model, fp32 and bf16 "
                    "alternating for --repeat rounds of --row-seconds / 4 each (images/s, GFLOP/s, share of peak)")
    ap.add_argument("--variants", default=None, help="comma-separated row names to run (default: all of the "
                    "section's; e.g. fp32,bf16+verify)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "advbg-bench")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child-row", help=argparse.SUPPRESS)
    ap.add_argument("--child-long", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_row or args.child_long:
        got = _child_row(json.loads(args.child_row)) if args.child_row else _child_long(json.loads(args.child_long))
        args.child_out.write_text(json.dumps(got))
        return

    t_start = time.monotonic()
    threads = hardware.configure_threads()      # as the CLI does: the usable cores unless the user said otherwise
    section = args.section if args.section != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    gpu, dry = section == "gpu", args.dry
    device = torch.device("cuda" if gpu and not dry else "cpu")
    pick = lambda given, g, c, d: given if given is not None else (d if dry else (g if gpu else c))  # noqa: E731
    n_bg = pick(args.n_bg, 1024, 64, 8)
    fg_block = pick(args.fg_block, 32, 2, 2)
    ref_fg = pick(args.ref_fg, 2, 2, 1)
    batch = pick(args.batch_size, 512, 64, 8)
    row_seconds = pick(args.row_seconds, 8.0, 20.0, 2.0)
    long_seconds = pick(args.long_seconds, 180.0, 0.0, 10.0)
    long_bg = pick(args.long_bg, 4050, 4050, 64)
    deadline_s = args.deadline_s or (None if gpu else 900.0)
    deadline = t_start + (deadline_s or 1e9)
    max_fg = 512 if (gpu and not dry) else 16
    args.workdir.mkdir(parents=True, exist_ok=True)
    store_path = args.workdir / f"throughput_{max_fg}x{n_bg}.h5"
    if not store_path.exists():
        build_store(store_path, max_fg, n_bg, 224)
    args._store, args._fg_block, args._batch, args._max_fg = store_path, fg_block, batch, max_fg
    args._row_seconds = row_seconds
    with Store(store_path) as s:
        jpgs = write_jpegs(s, args.workdir / f"jpeg_{n_bg}")
    info = dict(section=section, dry=dry, device=torch.cuda.get_device_name() if device.type == "cuda" else
                platform.processor() or "cpu", cpu_count=os.cpu_count(), torch=torch.__version__,
                date=time.strftime("%Y-%m-%d %H:%M"), load_average=load_now(), n_bg=n_bg, fg_block=fg_block,
                batch=batch, threads=torch.get_num_threads(), row_seconds=row_seconds,
                cudnn_tf32=torch.backends.cudnn.allow_tf32, threads_source=threads.source)
    peaks: dict = {}
    if device.type == "cpu":
        cpu, support = hardware.read_cpu(), hardware.bf16_support()
        cores = min(hardware.usable_cores(), torch.get_num_threads())
        peak = {p: hardware.peak_gflops(p, cpu, cores, support) for p in ("fp32", "bf16")}
        peaks = {p: x.gflops for p, x in peak.items()}
        info.update(device=cpu.model, cpu_flags_bf16=cpu.bf16_flags(), bf16_support=support.describe(),
                    usable_cores=hardware.usable_cores(), peak_how={p: x.how for p, x in peak.items()},
                    torch_cpu_capability=torch.backends.cpu.get_cpu_capability())
    print(json.dumps(info), flush=True)
    if device.type == "cpu":
        print(f"CPU: {info['device']}; bf16-related flags: {' '.join(info['cpu_flags_bf16']) or 'none'}; native bf16: "
              f"{info['bf16_support']}; torch CPU capability {info['torch_cpu_capability']}; "
              f"{info['usable_cores']} usable cores, {info['threads']} intra-op threads ({threads.source}); "
              f"load average {info['load_average']:.2f}")
        for p, how in info["peak_how"].items():
            print(f"peak {p}: {how}")
    if args.bare_only:
        out = bare_only(args, device, store_path, batch, peaks)
        if args.json:
            args.json.write_text(json.dumps(dict(info=info, bare=out, load_after=load_now()), indent=2))
        return
    if args.ab:
        out = ab(args, args.ab.resolve())
        if args.json:
            args.json.write_text(json.dumps(dict(info=info, ab=out, load_after=load_now()), indent=2))
        return

    models = (args.gpu_models if gpu else args.cpu_models).split(",")
    variants = [v for v in (GPU_VARIANTS if gpu else CPU_VARIANTS)
                if not v.compile or (not args.no_compile and (gpu or args.compile))]
    if args.variants:
        want = args.variants.split(",")
        variants = [v for v in variants if v.name in want]
        if not variants:
            raise SystemExit(f"--variants: none of {want} is a row of this section")
    if dry:   # CUDA graphs need CUDA; the rest of the GPU section's path runs on the CPU
        variants = [v for v in variants if not v.cuda_graphs]
    # Eager rows first; on the GPU then the long run (best eager setting), then the compiled rows, which take
    # the most time (compilation) and are the likeliest to fail: a time limit cuts them, not the long run.
    refs: dict = {}
    eager, compiled = [v for v in variants if not v.compile], [v for v in variants if v.compile]
    rows = run_rows(models, eager, device, store_path, jpgs, fg_block, ref_fg, batch, row_seconds, max_fg,
                    args.repeat, args.row_timeout, dry, deadline, refs, peaks)
    extra: dict = {}
    if gpu:
        tflops = matmul_tflops(device, 8192 if device.type == "cuda" else 512)
        extra["matmul_bf16_tflops"] = tflops
        best = max((r for r in rows if "failed" not in r and r["model"] == models[0]), key=lambda r: r["search"],
                   default=None)
        reserve = 120.0 if compiled else 0.0          # for the compiled rows after the long run
        left = deadline - time.monotonic() - reserve - 30
        secs = min(long_seconds, left) if deadline_s else long_seconds
        if best and secs > 5:
            v = next(x for x in variants if x.name == best["variant"])
            extra["long_run"] = long_run(models[0], v, device, args.workdir, long_bg, best["search"], secs,
                                         fg_block, batch)
            print(json.dumps(extra["long_run"]), flush=True)
        elif best:
            extra["long_run"] = dict(failed=f"skipped: {max(0, left):.0f} s left before the deadline")
    rows += run_rows(models, compiled, device, store_path, jpgs, fg_block, ref_fg, batch, row_seconds, max_fg,
                     args.repeat, args.row_timeout, dry, deadline, refs, peaks)
    if gpu:
        best = max((r for r in rows if "failed" not in r and r["model"] == models[0]), key=lambda r: r["search"],
                   default=None)
        if best and models[0] == "resnet50":
            floor = GRID * RESNET50_FLOP / (extra["matmul_bf16_tflops"] * 1e12) / 60
            extra.update(floor_minutes=floor, gap=best["grid_minutes"] / floor)
    print()
    print(f"{info['device']}, {info['cpu_count']} CPU cores, torch {info['torch']}, {info['date']}, load average "
          f"{info['load_average']:.1f} at the start, {load_now():.1f} at the end; store {max_fg} foregrounds x "
          f"{n_bg} backgrounds at 224 px, units of {fg_block}, batch {batch}; reference over {ref_fg} foregrounds; "
          f"medians of up to {args.repeat} runs" + (" (DRY RUN on the CPU: not a measurement)" if dry else ""))
    print(table(rows))
    for name, got in refs.items():
        if got.get("calibration"):
            print(f"--amp auto for {name}: {got['calibration']['reason']}")
    if "matmul_bf16_tflops" in extra:
        print(f"\nbf16 matmul {extra['matmul_bf16_tflops']:.1f} TFLOP/s", end="")
        if "floor_minutes" in extra:
            print(f" -> compute floor of the grid for resnet50 {extra['floor_minutes']:.1f} min; best search is "
                  f"{extra['gap']:.1f}x the floor", end="")
        print()
    lr = extra.get("long_run")
    if lr and "failed" not in lr:
        print(f"long run: {lr['n_fg']} x {lr['n_bg']} = {lr['composites']:,} composites, {lr['variant']}, "
              f"{lr['seconds']:.0f} s: {lr['steady']:,.0f}/s steady, {lr['end_to_end']:,.0f}/s end to end -> full "
              f"4,050 x 4,050 grid {lr['grid_hours']:.2f} h (steady) / {lr['grid_hours_end_to_end']:.2f} h; peak "
              f"GPU memory {lr.get('peak_gpu_allocated_gb', float('nan')):.1f} GB allocated, "
              f"{lr.get('peak_gpu_reserved_gb', float('nan')):.1f} GB reserved; peak host RSS "
              f"{lr['peak_host_rss_gb']:.2f} GB")
    elif lr:
        print(f"long run: {lr['failed']}")
    if args.json:
        args.json.write_text(json.dumps(dict(info=info, rows=rows, **extra, models=refs, load_after=load_now()),
                                        indent=2))


if __name__ == "__main__":
    main()
