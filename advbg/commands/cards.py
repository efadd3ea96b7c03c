"""`advbg card` and `advbg leaderboard`: a search result as a result card, and cards ranked into one table."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from advbg.analysis.card import load_card, make_card
from advbg.analysis.leaderboard import build_board, to_html, to_markdown
from advbg.commands.common import DEMO_STORE, WORKING_DEMO
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.files import atomic_write_text, check_output, write_json
from advbg.search.results import load_search
from advbg.stats import format_rate, rate_from_dict


def results_store(store: str | Path) -> Path:
    """The store whose results a reading command uses: for the bundled demo store, its working copy
    ``runs/demo.h5`` (where `advbg search` wrote), which must exist."""
    store = Path(store)
    if DEMO_STORE.exists() and store.exists() and store.resolve() == DEMO_STORE.resolve():
        if not WORKING_DEMO.exists():
            raise AdvbgError(f"no search results of the demo store here ({WORKING_DEMO} does not exist); run "
                             f"`advbg search` in this folder first, or give --store")
        return WORKING_DEMO
    return store


def _locate(results: str, store: str | Path) -> tuple[Path, str]:
    """(store, results name) for a results name in ``store`` or a results file ``<store>.d/results/<name>.h5``."""
    p = Path(results)
    if p.suffix == ".h5" and p.parent.name == "results" and p.parent.parent.name.endswith(".d"):
        if not p.is_file():
            raise AdvbgError(f"results file {p} does not exist")
        return p.parent.parent.with_name(p.parent.parent.name[:-2]), p.stem
    if p.suffix == ".h5":
        raise AdvbgError(f"{p} is not a results file of a store (expected <store>.d/results/<name>.h5)")
    return results_store(store), results


def run_card(results: str, out: str | Path, *, store: str | Path = DEMO_STORE, name: str | None = None,
             echo: Callable[[str], None] = print) -> dict:
    """`advbg card`: the result card of one complete search (a results name of ``store`` or a results file)."""
    store_path, results_name = _locate(results, store)
    check_output(out, (".json",), inputs=[store_path, Path(results)])
    if not store_path.is_file():
        raise AdvbgError(f"store {store_path} does not exist")
    with Store(store_path) as s:
        card = make_card(load_search(s, results_name), s, name=name)
    write_json(out, card)
    acc = card["challenge_accuracy"]
    echo(f"card: {out} ({card['model']['name']}, criterion {card['criterion']}, challenge accuracy "
         f"{format_rate(rate_from_dict(acc))})")
    return card


def run_leaderboard(cards: Sequence[str | Path], out: str | Path, *, echo: Callable[[str], None] = print) -> Path:
    """`advbg leaderboard`: rank checked cards of one store and criterion into Markdown (.md) or HTML (.html)."""
    out = Path(out)
    if out.suffix.lower() not in (".md", ".html"):
        raise AdvbgError(f"--out {out} must end in .md (Markdown) or .html (a self-contained page)")
    check_output(out, (".md", ".html"), inputs=list(cards))
    board = build_board([(str(c), load_card(c)) for c in cards])
    text = to_html(board) if out.suffix.lower() == ".html" else to_markdown(board)
    atomic_write_text(out, text)
    echo(f"leaderboard: {out} ({len(board.entries)} cards, criterion {board.criterion}, data {board.data_name})")
    return out
