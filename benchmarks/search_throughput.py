"""Composites per second of `advbg search` against the bare model and against a reference-style loop.

For each model and precision setting it measures, on one synthetic store at 224 px:
  - search: `search(...)` exhaustive, steady state (units after the first, which carries the pool upload and any
    compilation) and end to end;
  - bare: the model's forward alone on pre-built, pre-normalised composites of the same batch size, precision and
    memory format (the most the search could reach; target ratio search / bare >= 0.9);
  - reference: the Backgrounds Challenge script's way — one foreground at a time, every background JPEG decoded
    again for each foreground (OpenCV, faster than the original PIL), float32 numpy composites, batches of 32,
    fp32, NCHW — with the same model (targets: >= 2x on CPU, >= 50x on a GPU);
and projects the time of the full IN-9 grid, 4,050 x 4,050 = 16.4 M composites, from the steady rate.

    python benchmarks/search_throughput.py                 # GPU section on CUDA, CPU section otherwise
    python benchmarks/search_throughput.py --section cpu --cpu-models advbg/lite0,mobilenetv3_small_100
                                                           # fp32 and fp32+compile (inductor; minutes to compile)
    python benchmarks/search_throughput.py --section gpu   # resnet50 fp32 / bf16 / bf16+channels_last / +compile

Models given by timm name get random weights (speed does not depend on them); advbg/lite0 is the embedded one.
The GPU section also measures the bf16 matmul ceiling and reports the gap to the compute floor of the grid.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search_memory import build_store  # noqa: E402

from advbg.data.store import Store  # noqa: E402
from advbg.models.classifier import load_classifier  # noqa: E402
from advbg.search.config import SearchConfig
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


GPU_VARIANTS = (Variant("fp32", "off", False), Variant("bf16", "bf16", False),
                Variant("bf16+channels_last", "bf16", True), Variant("bf16+channels_last+compile", "bf16", True, True))
CPU_VARIANTS = (Variant("fp32", "off", True), Variant("fp32+compile", "off", True, True))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def classifier(name: str, device: torch.device):
    if "/" in name:
        return load_classifier(name, device=device)
    return load_classifier(name, pretrained=False, label_map="in9", device=device)


# --------------------------------------------------------------------------------------------- measurements
def measure_search(clf, store: Store, v: Variant, n_fg: int, device: torch.device, fg_block: int,
                   batch: int | None) -> dict:
    times = []
    cfg = SearchConfig(amp=v.amp, channels_last=v.channels_last, compile=v.compile, cuda_graphs=v.cuda_graphs,
                       foregrounds=tuple(range(n_fg)), fg_block=fg_block, batch_size=batch, device=str(device))
    t0 = time.perf_counter()
    res = search(store, clf, cfg, write=False, progress=False, on_unit=lambda _: times.append(time.perf_counter()))
    total = time.perf_counter() - t0
    per_unit = fg_block * len(store.backgrounds)
    steady = (len(times) - 1) * per_unit / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return dict(end_to_end=res.run.forwards / total, steady=steady, batch=res.run.batch_size,
                composites=res.run.forwards, seconds=total)


def measure_bare(clf, store: Store, v: Variant, batch: int, device: torch.device, seconds: float = 3.0) -> float:
    """Images/s of clf.model on a pre-built, normalised batch of real composites (same settings as the search)."""
    from advbg.search.compositor import composite_pairs

    fmt = torch.channels_last if v.channels_last else torch.contiguous_format
    clf.to(memory_format=fmt)
    fg = torch.as_tensor(store.foregrounds.read(np.arange(4))).to(device)
    mask = torch.as_tensor(store.foregrounds.read_masks(np.arange(4))).to(device)
    bg = torch.as_tensor(store.backgrounds.read(np.arange(min(64, len(store.backgrounds))))).to(device)
    fi = torch.arange(batch, device=device) % 4
    bj = torch.arange(batch, device=device) % bg.shape[0]
    low = device.type == "cuda" and v.amp != "off"
    x = composite_pairs(fg, mask, bg, fi, bj, torch.bfloat16 if low else torch.float32)
    x = ((x - clf.mean.to(x.dtype)) / clf.std.to(x.dtype)).contiguous(memory_format=fmt)
    model = torch.compile(clf.model, mode="reduce-overhead" if v.cuda_graphs else "default") if v.compile \
        else clf.model
    ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if v.amp == "bf16" else torch.autocast(
        device.type, enabled=False))
    with torch.inference_mode(), ctx:
        for _ in range(3):
            model(x)
        sync(device)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 3:
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

    clf.to(memory_format=torch.contiguous_format)
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


def matmul_tflops(device: torch.device) -> float:
    """Measured bf16 matmul rate (the compute ceiling, METHOD.md)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    reps, t0 = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * 8192**3 * reps / (time.perf_counter() - t0) / 1e12


# --------------------------------------------------------------------------------------------- sections
def run_section(models: list[str], variants: tuple[Variant, ...], device: torch.device, store_path: Path,
                jpgs: list[Path], n_fg: int, fg_block: int, ref_fg: int, batch: int | None,
                no_compile: bool = False, repeat: int = 1) -> list[dict]:
    rows = []
    with Store(store_path) as store:
        for name in models:
            clf = classifier(name, device)
            refs = []
            for v in variants:
                if v.compile and no_compile:
                    continue
                # Alternate reference, search and bare `repeat` times and keep medians: on a shared machine the
                # load changes between measurements. A compiled step recompiles per search: measured once.
                runs, bares = [], []
                for _ in range(1 if v.compile else repeat):
                    if len(refs) < repeat:
                        refs.append(measure_reference(clf, store, jpgs, ref_fg, device))
                    runs.append(measure_search(clf, store, v, n_fg, device, fg_block, batch))
                    bares.append(measure_bare(clf, store, v, runs[-1]["batch"], device))
                ref = statistics.median(refs)
                s = {k: statistics.median(r[k] for r in runs) for k in ("steady", "end_to_end")}
                s["batch"] = runs[-1]["batch"]
                bare = statistics.median(bares)
                row = dict(model=name, variant=v.name, batch=s["batch"], search=s["steady"],
                           search_end_to_end=s["end_to_end"], bare=bare, ratio=s["steady"] / bare,
                           reference=ref, speedup=s["steady"] / ref, grid_minutes=GRID / s["steady"] / 60,
                           repeats=len(runs), load_average=os.getloadavg()[0])
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| model | setting | batch | search (steady) | search (end to end) | bare forward | search/bare | "
           "reference loop | speed-up | 4,050 x 4,050 grid |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['variant']} | {r['batch']} | {r['search']:,.0f}/s | "
                   f"{r['search_end_to_end']:,.0f}/s | {r['bare']:,.0f}/s | {r['ratio']:.2f} | "
                   f"{r['reference']:,.1f}/s | {r['speedup']:.1f}x | {_duration(r['grid_minutes'])} |")
    return "\n".join(out)


def _duration(minutes: float) -> str:
    if minutes < 120:
        return f"{minutes:.1f} min"
    if minutes < 60 * 48:
        return f"{minutes / 60:.1f} h"
    return f"{minutes / 60 / 24:.1f} days"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", choices=("auto", "cpu", "gpu"), default="auto")
    ap.add_argument("--cpu-models", default="advbg/lite0,mobilenetv3_small_100")
    ap.add_argument("--gpu-models", default="resnet50")
    ap.add_argument("--n-bg", type=int, default=None, help="backgrounds (default: 64 CPU, 1024 GPU)")
    ap.add_argument("--n-fg", type=int, default=None, help="foregrounds searched (default: 6 CPU, 128 GPU)")
    ap.add_argument("--fg-block", type=int, default=None, help="foregrounds per unit (default: 2 CPU, 32 GPU)")
    ap.add_argument("--ref-fg", type=int, default=None, help="foregrounds in the reference loop (default 2)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the search's automatic choice")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "advbg-bench")
    ap.add_argument("--repeat", type=int, default=3, help="alternating repetitions, medians reported")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (slow to compile)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    section = args.section if args.section != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    gpu = section == "gpu"
    device = torch.device("cuda" if gpu else "cpu")
    n_bg = args.n_bg or (1024 if gpu else 64)
    n_fg = args.n_fg or (128 if gpu else 6)
    fg_block = args.fg_block or (32 if gpu else 2)
    ref_fg = args.ref_fg or 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    store_path = args.workdir / f"throughput_{n_fg}x{n_bg}.h5"
    if not store_path.exists():
        build_store(store_path, max(n_fg, 4), n_bg, 224)
    with Store(store_path) as s:
        jpgs = write_jpegs(s, args.workdir / f"jpeg_{n_bg}")
    models = (args.gpu_models if gpu else args.cpu_models).split(",")
    info = dict(section=section, device=torch.cuda.get_device_name() if gpu else platform.processor() or "cpu",
                cpu_count=os.cpu_count(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"),
                load_average=os.getloadavg()[0], n_fg=n_fg, n_bg=n_bg, fg_block=fg_block,
                threads=torch.get_num_threads())
    print(json.dumps(info), flush=True)
    rows = run_section(models, GPU_VARIANTS if gpu else CPU_VARIANTS, device, store_path, jpgs, n_fg, fg_block,
                       ref_fg, args.batch_size, args.no_compile, args.repeat)
    extra = {}
    if gpu:
        tflops = matmul_tflops(device)
        best = max((r for r in rows if r["model"] == "resnet50"), key=lambda r: r["search"], default=None)
        if best:
            floor = GRID * RESNET50_FLOP / (tflops * 1e12) / 60
            extra = dict(matmul_bf16_tflops=tflops, floor_minutes=floor, gap=best["grid_minutes"] / floor)
    print()
    print(f"{info['device']}, {info['cpu_count']} CPU cores, torch {info['torch']}, {info['date']}, load average "
          f"{info['load_average']:.1f}; store {n_fg} foregrounds x {n_bg} backgrounds at 224 px, units of "
          f"{fg_block}; reference over {ref_fg} foregrounds; medians of up to {args.repeat} alternating runs")
    print(table(rows))
    if extra:
        print(f"\nbf16 matmul ceiling {extra['matmul_bf16_tflops']:.0f} TFLOP/s -> compute floor of the grid for "
              f"resnet50 {extra['floor_minutes']:.1f} min; best search is {extra['gap']:.1f}x the floor")
    if args.json:
        args.json.write_text(json.dumps(dict(info=info, rows=rows, **extra), indent=2))


if __name__ == "__main__":
    main()
