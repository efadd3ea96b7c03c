"""`advbg compare`, `advbg card`, `advbg leaderboard`: results side by side, as shareable cards, ranked."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from advbg.cli import options as o
from advbg.cli.app import REPORT, app
from advbg.commands.cards import run_card, run_leaderboard
from advbg.commands.compare import run_compare


@app.command(rich_help_panel=REPORT)
def compare(
    inputs: Annotated[Optional[list[Path]], typer.Argument(
        metavar="[STORE.h5|EVAL.json]...", help="Stores (a row per complete search run) and `advbg eval` JSON "
                                                "files (a row per model).", show_default=False)] = None,
    eval_files: Annotated[Optional[list[Path]], typer.Option(
        "--eval", metavar="FILE.json", help="JSON of `advbg eval --results-file`; several after one --eval or "
                                            "--eval repeated.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the table here (default: print).")] = None,
    fmt: Annotated[Optional[str], typer.Option(
        "--format", help="md, csv or json (default: from the --out suffix, else md).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=1000, help="Which top-k accuracy to tabulate.")] = 1,
) -> None:
    """One table per store (every complete search run: model, weights, criterion, mode, n, fooling rate with its
    95% interval, composites, date, a pruned run's recall) and one of evaluations (a row per model, every
    variant's accuracy and BG-Gap with n and 95% intervals)."""
    given = list(inputs or [])
    stores = [p for p in given if p.suffix.lower() != ".json"]
    evals = [*(eval_files or []), *(p for p in given if p.suffix.lower() == ".json")]
    run_compare(evals, stores=stores, out=out, fmt=fmt, top_k=top_k, echo=typer.echo)


@app.command(rich_help_panel=REPORT)
def card(
    results: Annotated[str, typer.Argument(help="A results name of the store (e.g. "
                                                "tf_efficientnet_lite0.embedded.any.exhaustive) or a results file "
                                                "<store>.d/results/<name>.h5.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The card (JSON) to write.")],
    store: o.StoreOpt = o.DEFAULT_STORE,
    name: Annotated[Optional[str], typer.Option("--name", help="Human name of the data (default: the store's file "
                                                               "name).")] = None,
) -> None:
    """Write a result card: a small, versioned JSON of one search (model, data, criterion, counts, rate with its
    95% interval, versions, command), checked against the card schema."""
    run_card(results, out, store=store, name=name, echo=typer.echo)


@app.command(rich_help_panel=REPORT)
def leaderboard(
    cards: Annotated[list[Path], typer.Argument(help="Result cards (`advbg card`) of one store and criterion.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="board.md (Markdown) or board.html (self-contained).")],
) -> None:
    """Rank result cards by challenge accuracy with 95% intervals; refuses cards of different data or criteria and
    cards whose numbers do not add up."""
    run_leaderboard(cards, out, echo=typer.echo)
