"""`advbg export`, `advbg finetune`, `advbg synth`: from fooling backgrounds to a retrained model."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from advbg.cli import options as o
from advbg.cli.app import DATA_IN, TRAIN, app
from advbg.commands.train import run_export, run_finetune, run_synth
from advbg.data.synth import MAX_PER_CLASS, MAX_SIZE, MIN_SIZE, SynthConfig
from advbg.train.export import ExportConfig
from advbg.train.finetune import MAX_EPOCHS, MAX_LR, MAX_PROBE, MAX_STEPS, FinetuneConfig

MAX_ITEMS = 10**9   # --top / --per-class: more than any store holds


@app.command(rich_help_panel=TRAIN)
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (must be empty or absent).")],
    store: o.StoreOpt = o.DEFAULT_STORE,
    results: Annotated[Optional[str], typer.Option(
        help="Search results name in the store (default: the most recent complete search).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="folder (ImageFolder PNGs, lossless) or h5 (one advbg "
                                                      "store: backgrounds + composites with masks).")] = "folder",
    what: Annotated[str, typer.Option(help="backgrounds, composites or both.")] = "both",
    top: Annotated[Optional[int], typer.Option(min=1, max=MAX_ITEMS, help="Keep the first N of each kind.")] = None,
    per_class: Annotated[Optional[int], typer.Option(
        min=1, max=MAX_ITEMS, help="Keep the first N of each class and kind.")] = None,
    rank: Annotated[str, typer.Option(
        help="Background ranking: fooled (foregrounds fooled under the search's criterion) or asr (share of "
             "other-class foregrounds predicted as the background's class).")] = "fooled",
    include_unfooled: Annotated[bool, typer.Option(
        "--include-unfooled", help="Composites: also foregrounds no background fooled (their worst case).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")] = False,
    source: Annotated[str, typer.Option(
        "--from", help="search (fooling real backgrounds of a search) or refine (the refined backgrounds of "
                       "`advbg refine` results, ranked by margin after, and their composites; --results then "
                       "names refine results, default the latest).")] = "search",
    budget: Annotated[Optional[str], typer.Option(
        help="With --from refine: the budget exported, e.g. linf:8/255 or photometric (default: the largest "
             "linf EPS, else the first).")] = None,
) -> None:
    """Export fooling backgrounds and worst composites of a search (or refined ones), with a manifest."""
    run_export(store, out, results=results, overwrite=overwrite, echo=typer.echo,
               config=ExportConfig(what=what, fmt=fmt, top=top, per_class=per_class, rank=rank,
                                   include_unfooled=include_unfooled, source=source, budget=budget))


@app.command(rich_help_panel=TRAIN)
def finetune(
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint path; writes OUT.safetensors and OUT.json.")],
    model: o.ModelOpt = "advbg/lite0",
    store: o.StoreOpt = o.DEFAULT_STORE,
    policy: Annotated[str, typer.Option(help="original, mixed-rand (random backgrounds) or adversarial "
                                             "(backgrounds drawn by fooling power for the current model).")] = "mixed-rand",
    ratio: Annotated[float, typer.Option(min=0, max=1,
                                         help="Share of samples composited onto a drawn background.")] = 1.0,
    epochs: Annotated[int, typer.Option("--epochs", "-e", min=1, max=MAX_EPOCHS, help="Passes over the store.")] = 5,
    batch_size: o.BatchOpt = 64,
    optimizer: Annotated[str, typer.Option(help="adamw or sgd (momentum 0.9, Nesterov).")] = "adamw",
    lr: Annotated[float, typer.Option(min=0, max=MAX_LR,
                                      help="Peak learning rate, > 0 (cosine schedule per step).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(min=0, max=MAX_LR,
                                                help="Weight decay (not on norms and biases).")] = 0.05,
    warmup_steps: Annotated[int, typer.Option(min=0, max=MAX_STEPS, help="Linear warm-up steps.")] = 0,
    seed: Annotated[int, o.seed_option("Seed of the initialisation and of every background draw.")] = 0,
    refresh_every: Annotated[int, typer.Option(
        min=1, max=MAX_STEPS, help="adversarial: steps between fooling-power refreshes.")] = 50,
    probe_per_class: Annotated[int, typer.Option(
        min=1, max=MAX_PROBE, help="adversarial: probe foregrounds per class per refresh.")] = 2,
    backgrounds: Annotated[Optional[Path], typer.Option(
        help="Draw backgrounds from this store instead (e.g. the export.h5 of `advbg export --format h5`).")] = None,
    pretrained: Annotated[bool, typer.Option(
        "--pretrained/--no-pretrained", help="timm names: start from pretrained weights (offline cache) or random.")] = True,
    amp: o.AmpOpt = "auto",
    workers: o.LoaderWorkersOpt = None,
    device: o.DeviceOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing checkpoint.")] = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Fine-tune a model on a store with a background policy; the checkpoint works with `advbg search --model`."""
    run_finetune(model, store, out, FinetuneConfig(
        policy=policy, ratio=ratio, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
        weight_decay=weight_decay, warmup_steps=warmup_steps, seed=seed, amp=amp, num_workers=workers or 0,
        refresh_every=refresh_every, probe_per_class=probe_per_class, pretrained=pretrained),
        backgrounds=backgrounds, device=device, overwrite=overwrite, progress=not quiet, echo=typer.echo)


@app.command(rich_help_panel=DATA_IN)
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Store file to write (.h5).")],
    classes: Annotated[int, typer.Option(min=2, max=9, help="Number of shape classes (circle, square, triangle, "
                                                            "cross, ring, diamond, star, hexagon, crescent).")] = 6,
    per_class: Annotated[int, typer.Option(min=1, max=MAX_PER_CLASS, help="Photos per class.")] = 100,
    size: Annotated[int, typer.Option(min=MIN_SIZE, max=MAX_SIZE, help="Image side in pixels.")] = 32,
    correlation: Annotated[float, typer.Option(
        min=0, max=1, help="Background-class correlation strength: P(own class style) before a uniform draw.")] = 0.9,
    seed: Annotated[int, o.seed_option("Seed (use different seeds for train and test stores).")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing store.")] = False,
) -> None:
    """Write a synthetic store: shapes with exact masks on class-correlated backgrounds."""
    run_synth(out, SynthConfig(n_classes=classes, n_per_class=per_class, image_size=size, correlation=correlation,
                               seed=seed), overwrite=overwrite, echo=typer.echo)
