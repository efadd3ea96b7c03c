"""`advbg index`: embed a store's backgrounds and foregrounds and write the FAISS indexes."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from advbg.commands.common import DEMO_STORE, working_store
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.models.classifier import Classifier
from advbg.models.loading import ModelSpec, as_classifier
from advbg.search.index import IndexKind, IndexReport, build_index, choose_kind, require_faiss


def run_index(store: str | Path = DEMO_STORE, model: ModelSpec | Classifier | str = ModelSpec(), *,
              batch_size: int = 64, kind: IndexKind = "auto", progress: bool = True,
              echo: Callable[[str], None] = print) -> IndexReport:
    """`advbg index`: what the command does, callable from Python (the bundled demo store gets a working copy)."""

    choose_kind(0, kind)
    require_faiss()   # before the demo's working copy and any embedding
    if batch_size < 1:
        raise AdvbgError(f"batch size must be at least 1 (got {batch_size})")
    path = working_store(store, echo)
    with Store(path, mode="r+") as s:
        s.require_nonempty()
        clf = as_classifier(model)
        report = build_index(s, clf, batch_size=batch_size, kind=kind, progress=progress)
    echo(report.line())
    return report
