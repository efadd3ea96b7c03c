"""`advbg compare --eval FILE...`: one table of `advbg eval` results, a row per model, with n and intervals."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from advbg.analysis.compare import Table, detect_format, eval_table
from advbg.errors import AdvbgError
from advbg.files import atomic_write_text, check_output


def run_compare(eval_files: Sequence[str | os.PathLike] = (), *, out: str | os.PathLike | None = None,
                fmt: str | None = None, top_k: int = 1, echo: Callable[[str], None] = print) -> Table:
    """Build the comparison table of ``eval_files``; print it (``out`` None) or write it to ``out``."""
    if not eval_files:
        raise AdvbgError("nothing to compare: give `advbg eval` JSON results with --eval FILE ...")
    fmt = detect_format(out, fmt)
    check_output(out, inputs=list(eval_files))
    table = eval_table(list(eval_files), k=top_k)
    text = table.render(fmt)
    if out is None:
        echo(text.rstrip("\n"))
    else:
        atomic_write_text(Path(out), text)
        echo(f"comparison: {out} ({len(table.rows)} rows, {fmt})")
    return table
