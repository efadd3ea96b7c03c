"""What every command shares: the bundled demo store and its working copy."""
from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import Callable

import h5py

from advbg.files import atomic_output
from advbg.models.classifier import Classifier
from advbg.models.loading import ModelSpec

# The demo store ships inside the package (advbg/data/demo.h5), so a wheel install runs `advbg search` with no
# options. It is never written: commands that write work on a copy in the current folder (WORKING_DEMO).
DEMO_STORE = Path(str(resources.files("advbg.data") / "demo.h5"))
WORKING_DEMO = Path("runs") / "demo.h5"


def working_store(store: str | Path, echo: Callable[[str], None] | None = None) -> Path:
    """``store`` itself, or for the bundled demo store its working copy ``runs/demo.h5`` in the current folder,
    made on first use and refreshed when the bundled store changes."""
    store = Path(store)
    if not (DEMO_STORE.exists() and store.exists() and store.resolve() == DEMO_STORE.resolve()):
        return store
    copy = WORKING_DEMO
    if not _same_build(copy, store):
        copy.parent.mkdir(exist_ok=True)
        with atomic_output(copy) as tmp:
            shutil.copyfile(store, tmp)
        if echo:
            echo(f"working copy of the demo store: {copy} (the bundled {DEMO_STORE.name} stays unchanged)")
    return copy


def _same_build(copy: Path, store: Path) -> bool:
    if not copy.exists():
        return False
    try:
        with h5py.File(copy, "r") as a, h5py.File(store, "r") as b:
            return a.attrs.get("created") == b.attrs.get("created")
    except OSError:
        return False


def store_inputs(store: str | Path) -> list[Path]:
    """The store a command reads, and for the bundled demo store also its working copy: outputs must not be these."""
    store = Path(store)
    same_demo = DEMO_STORE.exists() and store.exists() and store.resolve() == DEMO_STORE.resolve()
    return [store, WORKING_DEMO] if same_demo else [store]


def model_inputs(model: "ModelSpec | Classifier | str | None") -> list[Path]:
    """The files a model option reads (a checkpoint and its JSON metadata, --weights): outputs must not be these."""
    if model is None:
        return []
    if isinstance(model, Classifier):
        names = [model.config.weights_file]
    elif isinstance(model, ModelSpec):
        names = [model.name, model.weights]
    else:
        names = [str(model)]
    files = [Path(n) for n in names if n and Path(n).is_file()]
    return files + [f.with_suffix(".json") for f in files if f.suffix != ".json"]
