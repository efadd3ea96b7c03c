"""`advbg report`: one self-contained HTML page of a store's results (plus eval JSON files)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from advbg.analysis.report import GalleryCap, build_report, render_html
from advbg.commands.common import DEMO_STORE, WORKING_DEMO, store_inputs
from advbg.errors import AdvbgError
from advbg.files import atomic_write_text, check_output


def run_report(store: str | Path = DEMO_STORE, out: str | Path | None = None, *,
               eval_files: Sequence[str | Path] = (), saliency_files: Sequence[str | Path] = (),
               cap: GalleryCap = GalleryCap(), verify: bool = True,
               skip_incomplete: bool = False, progress: bool = True,
               echo: Callable[[str], None] = print) -> Path:
    """`advbg report`: read every complete results group, write the page atomically, print where it is.

    ``out``: default ``<store stem>.report.html`` beside the store. The store is only read."""
    store = _results_store(Path(store))
    out = Path(out) if out is not None else store.with_name(f"{store.stem}.report.html")
    check_output(out, (".html", ".htm"), inputs=store_inputs(store) + [Path(f) for f in (*eval_files, *saliency_files)])
    if not os.access(out.parent, os.W_OK):
        raise AdvbgError(f"cannot write {out}: folder {out.parent} is not writable")
    report = build_report(store, eval_files, cap=cap, verify=verify, skip_incomplete=skip_incomplete,
                          progress=progress, echo=echo, saliency_files=saliency_files)
    html = render_html(report)
    try:
        atomic_write_text(out, html)
    except OSError as e:
        raise AdvbgError(f"cannot write {out}: {e.strerror or e}") from None
    echo(f"report: {out} ({len(html.encode()) / 1e6:.2f} MB; {len(report.searches)} search run(s), "
         f"{len(report.universals)} universal analysis(es), {len(report.evals)} evaluation file(s), "
         f"{len(report.saliency)} saliency file(s))")
    return out


def _results_store(store: Path) -> Path:
    """The store holding results: for the bundled demo store (never written), its working copy runs/demo.h5."""
    if not (DEMO_STORE.exists() and store.exists() and store.resolve() == DEMO_STORE.resolve()):
        return store
    if not WORKING_DEMO.exists():
        raise AdvbgError(f"the bundled demo store holds no results and {WORKING_DEMO} does not exist here; "
                         f"run `advbg search` first (it writes {WORKING_DEMO})")
    return WORKING_DEMO
