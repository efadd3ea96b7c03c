"""`advbg search`: each foreground's worst-case background."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from advbg.cli import options as o
from advbg.cli.app import SEARCH, app
from advbg.commands.search import run_search
from advbg.search.config import SearchConfig
from advbg.search.strategies import prune_spec


@app.command(rich_help_panel=SEARCH)
def search(
    store: o.StoreOpt = o.DEFAULT_STORE,
    model: o.ModelOpt = "advbg/lite0",
    criterion: o.CriterionOpt = "any",
    early_exit: Annotated[bool, typer.Option(
        "--early-exit", help="Stop each foreground at its first fooling background (fooling rate only; "
                             "the worst background is then the worst seen up to that point).")] = False,
    batch_size: o.AutoBatchOpt = None,
    fg_block: Annotated[int, typer.Option(
        min=1, max=10**6, help="Foregrounds per committed unit (the most a crash can lose).")] = 32,
    amp: o.AmpOpt = "auto",
    label_map: o.LabelMapOpt = "auto",
    arch: o.ArchOpt = None,
    weights: o.WeightsOpt = None,
    norm: o.NormOpt = None,
    device: o.DeviceOpt = None,
    results_name: Annotated[Optional[str], typer.Option(
        help="Results name: written to <store>.d/results/NAME.h5 (default: <model tag>.<criterion>.<mode>).")] = None,
    results_file: o.ResultsFileOpt = None,
    grid: Annotated[Optional[Path], typer.Option(
        help="PNG grid of the worst composites (default: <store stem>.<results name>.worst.png beside the store; "
             "'-' for none).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Accepted for compatibility: an interrupted search with the same settings is resumed "
                         "anyway (the default).")] = False,
    restart: Annotated[bool, typer.Option(
        "--restart", help="Discard an interrupted search of these results (says how many units it drops) and "
                          "start afresh.")] = False,
    recompute: Annotated[bool, typer.Option(
        "--recompute", help="Compute again even when complete results of the same run are stored (they are reused "
                            "otherwise, with no forward pass); the old file stays until the new one is complete. "
                            "Also replaces a results file of other settings or a damaged one, and this "
                            "run's grid and --results-file.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing --results-file or grid PNG that this same search did not write "
                            "(refused otherwise).")] = False,
    no_write: Annotated[bool, typer.Option("--no-write", help="Do not write results (nor a journal) beside the store.")] = False,
    compile: Annotated[bool, typer.Option(
        "--compile", help="torch.compile compositing + model (fused kernels; the first batches compile).")] = False,
    cuda_graphs: Annotated[bool, typer.Option(
        "--cuda-graphs", help="With --compile on CUDA: replay CUDA graphs (less launch overhead).")] = False,
    memory_gb: Annotated[Optional[float], typer.Option(
        "--memory-gb", min=0.01, max=10**6,
        help="Device memory the search may use (CPU: host memory); default 90% of free GPU memory, "
             "2 GB on CPU. Backgrounds beyond half of it are streamed in blocks.")] = None,
    verify_close: Annotated[float, typer.Option(
        "--verify-close", metavar="TOL", min=0, max=1000,
        help="Recompute in fp32 every decision within TOL of flipping (logit "
             "margin), so bf16/fp16 fooling rates match fp32. 0 = off.")] = 0.0,
    journal_dir: Annotated[Optional[Path], typer.Option(
        help="Folder for the resume journal (default: beside the store; under torchrun on several nodes it must "
             "be on storage every node sees).")] = None,
    prune: Annotated[Optional[int], typer.Option(
        "--prune", metavar="K", min=1, max=10**9,
        help="Try each foreground on only K candidate backgrounds chosen with the model's "
             "embeddings (run `advbg index` first); reports the composites skipped.")] = None,
    prune_ratio: Annotated[Optional[float], typer.Option(
        "--prune-ratio", metavar="R", min=0, max=1,
        help="Like --prune with K = R x the number of backgrounds (0 < R <= 1).")] = None,
    prune_rule: Annotated[str, typer.Option(
        "--prune-rule", help="How candidates are chosen: mix (foreground and background class scores mixed by "
                             "object area), score (background class scores alone), neighbours (mix, then FAISS "
                             "neighbours of the worst backgrounds found), random.")] = "mix",
    quiet: o.QuietOpt = False,
) -> None:
    """Find every foreground's worst-case background and print the fooling rate."""
    config = SearchConfig(criterion=criterion, mode="early-exit" if early_exit else "exhaustive",
                          batch_size=batch_size, fg_block=fg_block, amp=amp, device=device, compile=compile,
                          cuda_graphs=cuda_graphs, memory_gb=memory_gb, verify_close=verify_close)
    run_search(store, o.model_spec(model, arch, weights, label_map, norm, device), config,
               prune=prune_spec(prune, prune_ratio, prune_rule), results_name=results_name,
               results_file=results_file, grid=grid, resume=resume, restart=restart, recompute=recompute,
               overwrite=overwrite, write=not no_write, progress=not quiet,
               journal_dir=journal_dir, echo=typer.echo)
