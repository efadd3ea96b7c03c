"""`advbg compare [STORE...] [--eval FILE...]`: every complete search run of a store, a row each, and `advbg eval`
results, a row per model: one table each, with n and 95% intervals."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from advbg.analysis.compare import Table, detect_format, eval_table, search_table
from advbg.commands.cards import results_store
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.files import atomic_write_text, check_output
from advbg.search.results import complete_searches


def run_compare(eval_files: Sequence[str | os.PathLike] = (), *, stores: Sequence[str | os.PathLike] = (),
                out: str | os.PathLike | None = None, fmt: str | None = None, top_k: int = 1,
                echo: Callable[[str], None] = print) -> list[Table]:
    """The comparison tables of ``stores`` (search runs) and ``eval_files``; print them (``out`` None) or write
    them to ``out``."""
    if not eval_files and not stores:
        raise AdvbgError("nothing to compare: give a STORE (its search runs) or `advbg eval` JSON results with "
                         "--eval FILE ...")
    fmt = detect_format(out, fmt)
    if eval_files and stores and fmt != "md":
        raise AdvbgError(f"--format {fmt} holds one table: compare stores and eval files separately (or use md)")
    check_output(out, inputs=[*map(Path, eval_files), *map(Path, stores)])
    tables = [store_table(st) for st in stores] + ([eval_table(list(eval_files), k=top_k)] if eval_files else [])
    text = "\n".join(t.render(fmt) for t in tables)
    if out is None:
        echo(text.rstrip("\n"))
    else:
        atomic_write_text(Path(out), text)
        echo(f"comparison: {out} ({sum(len(t.rows) for t in tables)} rows, {fmt})")
    return tables


def store_table(store: str | os.PathLike) -> Table:
    """A row per complete search run of ``store`` (read through the results owner, checked)."""
    path = results_store(store)
    if not Path(path).is_file():
        raise AdvbgError(f"store {path} does not exist")
    with Store(path) as s:
        results = complete_searches(s)
        if not results:
            raise AdvbgError(f"{path} has no complete search results to compare; run `advbg search` first")
        table = search_table(results)
    return Table(f"{table.title}: {Path(path).name}", table.columns, table.rows, table.notes)
