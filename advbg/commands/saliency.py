"""`advbg saliency`: Grad-CAM maps of one model on store variants, and how much of them falls on the object."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from advbg.analysis.saliency import (
    SaliencyConfig,
    SaliencyReport,
    captum_available,
    format_saliency,
    overlay_grid,
    parse_variants,
    saliency,
    save_maps,
    to_csv,
)
from advbg.commands.common import DEMO_STORE, model_inputs, store_inputs
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.files import atomic_write_text, check_output, write_json
from advbg.models.classifier import Classifier
from advbg.models.loading import ModelSpec, as_classifier


def run_saliency(store: str | Path = DEMO_STORE, model: ModelSpec | Classifier | str = ModelSpec(), *,
                 variants: str = "original,mixed_rand", target: str = "true", batch_size: int = 16, seed: int = 0,
                 resamples: int = 2000, limit: int | None = None, results_file: Path | None = None,
                 results_format: str | None = None, grid: Path | None = None, grid_rows: int = 8,
                 maps: Path | None = None, progress: bool = True,
                 echo: Callable[[str], None] = print) -> SaliencyReport:
    """Load the model, compute maps and shares per variant, print the table, write JSON/CSV, the PNG grid and
    the maps (.npz) where asked."""
    config = SaliencyConfig(variants=parse_variants(variants), target=target, batch_size=batch_size, seed=seed,
                            resamples=resamples, limit=limit).validate()
    fmt = _format_of(results_file, results_format)
    png = grid if grid is not None else (Path(results_file).with_suffix(".png") if results_file else None)
    png = None if png is not None and str(png) == "-" else png
    if grid_rows < 1:
        raise AdvbgError(f"--grid-rows must be at least 1 (got {grid_rows})")
    inputs = store_inputs(store) + model_inputs(model)
    check_output(results_file, inputs=inputs)
    check_output(png, (".png",), inputs=inputs + [results_file])
    check_output(maps, (".npz",), inputs=inputs + [results_file, png])
    if not captum_available():
        raise AdvbgError("advbg saliency needs captum: pip install 'advbg[saliency]' (or pip install captum)")
    with Store(store) as s:
        clf = as_classifier(model)
        report = saliency(s, clf, config, progress=progress)
        echo(format_saliency(report))
        if results_file:
            if fmt == "csv":
                atomic_write_text(results_file, to_csv(report))
            else:
                # the maps file, named so that `advbg report --saliency` finds the overlays' maps
                named = {"maps": str(Path(maps).resolve())} if maps else {}
                write_json(results_file, dict(report.to_dict(), **named))
            echo(f"results: {results_file}")
        if maps:
            save_maps(maps, report)
            echo(f"maps: {maps}")
        if png:
            overlay_grid(report, s, png, grid_rows)
            echo(f"overlays: {png}")
    return report


def _format_of(path: Path | None, fmt: str | None) -> str:
    if fmt is None:
        return "csv" if path is not None and Path(path).suffix.lower() == ".csv" else "json"
    if fmt not in ("json", "csv"):
        raise AdvbgError(f"--results-format must be json or csv, got {fmt!r}")
    return fmt
