"""From fooling backgrounds to a retrained model: `advbg export`, `advbg finetune`, `advbg synth`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from advbg.commands.common import working_store
from advbg.data.synth import SynthConfig, make_synthetic
from advbg.train.export import ExportConfig, ExportResult, export
from advbg.train.finetune import FinetuneConfig, FinetuneResult, finetune


def run_export(store: str | os.PathLike, out: str | os.PathLike, *, results: str | None = None,
               config: ExportConfig = ExportConfig(), overwrite: bool = False,
               echo: Callable[[str], None] = print) -> ExportResult:
    """`advbg export`: a stored search's fooling backgrounds and worst composites, with a manifest, to ``out``.

    The bundled demo store is read through its working copy, where `advbg search` left its results."""
    return export(working_store(store, echo), out, results=results, config=config, overwrite=overwrite, echo=echo)


def run_finetune(model: str, store: str | os.PathLike, out: str | os.PathLike,
                 config: FinetuneConfig = FinetuneConfig(), *, backgrounds: str | os.PathLike | None = None,
                 device: str | None = None, overwrite: bool = False, progress: bool = True,
                 echo: Callable[[str], None] = print) -> FinetuneResult:
    """`advbg finetune`: train ``model`` on ``store`` with a background policy; write OUT.safetensors and OUT.json."""
    return finetune(model, working_store(store, echo), out, config, backgrounds=backgrounds, device=device,
                    overwrite=overwrite, progress=progress, echo=echo)


def run_synth(out: str | os.PathLike, config: SynthConfig = SynthConfig(), *, overwrite: bool = False,
              echo: Callable[[str], None] = print) -> Path:
    """`advbg synth`: write a synthetic store (shapes with exact masks on class-correlated backgrounds)."""
    return make_synthetic(out, config, overwrite=overwrite, echo=echo)
