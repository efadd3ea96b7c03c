"""`advbg eval` and `advbg plot`: accuracy of one or more models on every background variant, and its plots."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Sequence

import h5py

from advbg.analysis.evalreport import (
    bar_chart,
    format_report,
    imagenet_plot,
    imagenet_points,
    results_format_of,
    scatter_plot,
    write_results,
)
from advbg.analysis.evaluate import (
    IMAGENET_TOP1,
    EvalConfig,
    EvalReport,
    evaluate,
    parse_top_k,
    plan_variants,
)
from advbg.commands.common import DEMO_STORE, model_inputs
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.files import check_output
from advbg.models.loading import ModelSpec


def read_models_file(path: str | Path) -> list[str]:
    """One model per line (name, timm name with tag, or checkpoint path); '#' starts a comment."""
    p = Path(path)
    if not p.is_file():
        raise AdvbgError(f"models file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AdvbgError(f"models file {p} is not a UTF-8 text file (one model name per line)") from None
    names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    names = [n for n in names if n]
    if not names:
        raise AdvbgError(f"models file {p} names no model")
    return names


def _split_names(model: ModelSpec | str) -> list:
    """A spec as it is; a name string split on commas ('advbg/lite0,advbg/lite1'), unless it is an existing file."""
    if isinstance(model, ModelSpec) or Path(str(model)).exists():
        return [model] if isinstance(model, ModelSpec) else [str(model)]
    names = [n.strip() for n in str(model).split(",") if n.strip()]
    if not names:
        raise AdvbgError(f"no model name in {model!r}")
    return names


def run_eval(store: str | Path = DEMO_STORE, models: Sequence[ModelSpec | str] = (), *,
             models_file: Path | None = None, baseline: str | None = None, variants: str = "all",
             top_k: str = "1,5", options: ModelSpec = ModelSpec(), batch_size: int = 64, seed: int = 0, source: str = "auto",
             evalsets: Path | None = None, amp: str = "off", results_file: Path | None = None,
             results_format: str | None = None, plot: Path | None = None, imagenet_png: Path | None = None,
             progress: bool = True, echo: Callable[[str], None] = print) -> EvalReport:
    """`advbg eval`: load the models, evaluate every variant, print the table, write JSON/CSV and the bar chart.

    ``models``: specs or names; names (and those of ``models_file``) are loaded with ``options``'s loading
    settings (label map, norm, device, arch, weights). ``imagenet_png``: the accuracy-vs-ImageNet-top-1 plot
    (default: ``<results stem>.imagenet.png`` when two or more models have a known ImageNet top-1; '-' for none)."""

    specs = [m if isinstance(m, ModelSpec) else options.named(n) for m in models for n in _split_names(m)]
    specs += [options.named(n) for n in (read_models_file(models_file) if models_file else [])]
    specs = list(dict.fromkeys(specs)) or [options]
    if options.weights is not None and len(specs) > 1:
        raise AdvbgError("--weights applies to one model; give each of several models as a checkpoint path instead")
    config = EvalConfig(variants=variants, top_k=parse_top_k(top_k), seed=seed, source=source,
                        batch_size=batch_size, amp=amp).validate()
    fmt = results_format_of(results_file, results_format)
    png = _plot_path(plot, results_file)
    inet = _imagenet_path(imagenet_png, results_file)
    if imagenet_png is not None and inet and sum(sp.name in IMAGENET_TOP1 for sp in specs) < 2:
        raise AdvbgError(f"--imagenet-plot needs at least two models with a known ImageNet top-1 "
                         f"({', '.join(IMAGENET_TOP1)})")
    inputs = [Path(store), evalsets, models_file] + [f for spec in specs for f in model_inputs(spec)]
    check_output(results_file, inputs=inputs)
    check_output(png, inputs=inputs + [results_file])
    check_output(inet, inputs=inputs + [results_file, png])
    with Store(store) as s, _open_evalsets(evalsets) as extra:
        plan_variants(s, variants, source=source, seed=seed, evalsets=extra)   # fail fast, before loading models
        clfs = [spec.load() for spec in specs]
        base = None
        if baseline:
            base = next((c for c in clfs if c.config.name == baseline), None) or options.named(baseline).load()
        report = evaluate(s, clfs, config, baseline=base, evalsets=extra, progress=progress)
    echo(format_report(report))
    if results_file:
        write_results(results_file, report, fmt)
        echo(f"results: {results_file}")
    if png:
        bar_chart(report, png)
        echo(f"bar chart: {png}")
    known, unknown = imagenet_points(report)
    if inet and (len(known) >= 2 or imagenet_png is not None):
        imagenet_plot(report, inet)
        echo(f"accuracy vs ImageNet top-1: {inet}"
             + (f" (no known ImageNet top-1, left out: {', '.join(unknown)})" if unknown else ""))
    return report


def _imagenet_path(path: Path | None, results_file: Path | None) -> Path | None:
    if path is not None:
        return None if str(path) == "-" else Path(path)
    return Path(results_file).with_suffix(".imagenet.png") if results_file else None


def _plot_path(plot: Path | None, results_file: Path | None) -> Path | None:
    if plot is not None:
        return None if str(plot) == "-" else Path(plot)
    return Path(results_file).with_suffix(".png") if results_file else None


@contextlib.contextmanager
def _open_evalsets(path: Path | None):
    if path is None:
        yield None
        return
    p = Path(path)
    if not p.is_file() or not h5py.is_hdf5(p):
        raise AdvbgError(f"--evalsets {p} is not an HDF5 file (write one with `advbg variants --out sets.h5`)")
    with h5py.File(p, "r") as f:
        yield f


def run_plot(files: Sequence[str | os.PathLike], out: str | os.PathLike, variants: str = "paper",
             echo=print) -> Path:
    """`advbg plot`: check the output path, draw the scatter, say where it went."""
    out = Path(out)
    check_output(out, inputs=list(files))
    if not files:
        raise AdvbgError("give at least one results JSON file")
    path = scatter_plot(files, out, variants)
    echo(f"scatter: {path}")
    return path
