"""`advbg models`: which classifiers are available offline and which need a download."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from advbg.errors import AdvbgError
from advbg.models.zoo import ZooEntry, checkpoint_dir, format_models, list_models


def run_models(*, folder: str | os.PathLike | None = None, pattern: str | None = None,
               echo: Callable[[str], None] = print) -> list[ZooEntry]:
    """`advbg models`: list and print."""
    d = checkpoint_dir(folder)
    if folder is not None and not Path(folder).is_dir():
        raise AdvbgError(f"checkpoint folder {folder} does not exist")
    entries = list_models(d, pattern)
    echo(format_models(entries, d))
    return entries
