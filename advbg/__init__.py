"""advbg: adversarial background search for image classifiers.

The Python API mirrors the CLI: ``Store`` (the HDF5 store), ``load_classifier`` (a timm model or checkpoint with
its preprocessing and label map attached), ``search`` (worst-case background per foreground).
"""
from advbg._version import __version__
from advbg.data.store import Store  # noqa: E402
from advbg.data.writer import StoreWriter, write_store  # noqa: E402
from advbg.errors import AdvbgError, ModelError, StoreError  # noqa: E402

__all__ = ["__version__", "AdvbgError", "ModelError", "StoreError", "Store", "StoreWriter", "write_store"]
