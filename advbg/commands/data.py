"""Getting data in: `advbg fetch in9`, `advbg ingest in9`, `advbg extract`, `advbg variants`."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from advbg.data.extract import ExtractConfig, ExtractSummary, extract
from advbg.data.fetch import TIMEOUT_S, fetch_in9
from advbg.data.ingest import IngestReport, ingest_in9
from advbg.data.variants import VariantOptions, write_variants


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def run_fetch(dest: str | os.PathLike, *, archive: str | os.PathLike | None = None, sha256: str | None = None,
              timeout: float = TIMEOUT_S, progress: bool = True, echo: Callable[[str], None] = print) -> Path:
    """`advbg fetch in9`: download (or take ``archive``), verify and unpack the IN-9 release; return its root."""
    root = fetch_in9(dest, archive=archive, sha256=sha256, timeout=timeout, progress=progress)
    echo(f"IN-9 release ready at {root}; next: advbg ingest in9 {root} --out in9.h5")
    return root


def run_ingest(path: str | os.PathLike, out: str | os.PathLike, *, skip_bad: bool = False, evalsets: bool = True,
               overwrite: bool = False, progress: bool = True,
               echo: Callable[[str], None] = print) -> IngestReport:
    """`advbg ingest in9`: write the store ``out`` from the released layout at ``path``; print the summary."""
    report = ingest_in9(path, out, skip_bad=skip_bad, overwrite=overwrite, evalsets=evalsets, progress=progress)
    echo(report.summary())
    return report


def run_extract(images: str | os.PathLike, out: str | os.PathLike, *, boxes: str | os.PathLike | None = None,
                masks: str | os.PathLike | None = None, classes: str | Sequence[str] | None = None,
                config: ExtractConfig = ExtractConfig(), workers: int | None = None, resume: bool = False,
                overwrite: bool = False, progress: bool = True,
                echo: Callable[[str], None] = print) -> ExtractSummary:
    """`advbg extract`: build the store ``out`` from photos with boxes and/or masks; print the summary."""
    summary = extract(images, boxes, out, masks=masks, classes=classes, config=config, workers=workers,
                      resume=resume, overwrite=overwrite, progress=progress)
    echo(summary.format())
    return summary


def run_variants(store: str | os.PathLike, out: str | os.PathLike, *,
                 fmt: str | None = None, variants: str | Sequence[str] | None = None, seed: int = 0,
                 options: VariantOptions = VariantOptions(), overwrite: bool = False, progress: bool = True,
                 echo: Callable[[str], None] = print, warn: Callable[[str], None] = _stderr) -> dict[str, int]:
    """`advbg variants`: write the store's variant sets to ``out``; print the count per variant.

    ``variants``: names, or one comma-separated string (None: every variant the store can make; each one it cannot
    is reported to ``warn``). The store is only read, so the bundled demo store needs no working copy."""
    if isinstance(variants, str):
        variants = [n.strip() for n in variants.split(",")] if variants else None
    counts = write_variants(store, out, fmt=fmt, names=variants, seed=seed, options=options,
                            overwrite=overwrite, progress=progress,
                            on_skip=lambda name, why: warn(f"skipped {name}: {why}"))
    echo(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts
