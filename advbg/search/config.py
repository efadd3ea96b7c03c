"""How a search runs: one frozen config, saved with its results."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from advbg.errors import AdvbgError
from advbg.models.precision import check_amp
from advbg.search.criteria import Criterion

MODES = ("exhaustive", "early-exit")



@dataclass(frozen=True)
class SearchConfig:
    """How a search runs. Saved with its results."""

    criterion: str = "any"
    mode: str = "exhaustive"
    batch_size: int | None = None  # composites per forward; None = auto (64 on CPU, sized to free memory on CUDA)
    fg_block: int = 32             # foregrounds per committed unit: the most work a crash can lose
    amp: str = "auto"              # auto = bf16 on CUDA; on a CPU measured (models.precision.choose_precision)
    device: str | None = None      # None = the classifier's device
    foregrounds: tuple[int, ...] | None = None   # fg_ids to search (None = all)
    backgrounds: tuple[int, ...] | None = None   # the background pool as bg_ids (None = all)
    record_outcomes: bool = True   # keep the fg x bg matrix of mapped predictions (for `universal`)
    prune: str | None = None       # description of the candidate rule when the search is given candidates
    channels_last: bool = True     # NHWC activations (the composites are NHWC already)
    compile: bool = False          # torch.compile compositing + model (fuses composite, resize, normalisation)
    cuda_graphs: bool = False      # with compile on CUDA: replay CUDA graphs (mode reduce-overhead)
    memory_gb: float | None = None  # device memory this search may use (CPU: host memory); None = 90% of free
    verify_close: float = 0.0      # recompute in fp32 every pair whose decision is this close (0 = never)

    def __post_init__(self):
        self.validate()   # a SearchConfig is valid by construction: callers never validate again

    def validate(self) -> None:
        Criterion(self.criterion)
        if self.mode not in MODES:
            raise AdvbgError(f"unknown mode {self.mode!r}; use one of: {', '.join(MODES)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise AdvbgError(f"batch size must be at least 1 (got {self.batch_size}); leave it unset for automatic")
        if self.fg_block < 1:
            raise AdvbgError(f"fg_block must be at least 1 (got {self.fg_block})")
        check_amp(self.amp)
        if self.memory_gb is not None and not (self.memory_gb > 0 and math.isfinite(self.memory_gb)):
            raise AdvbgError(f"the memory budget must be a positive number of GB (got {self.memory_gb})")
        if not (self.verify_close >= 0 and math.isfinite(self.verify_close)):
            raise AdvbgError(f"verify_close must be a finite margin >= 0 (got {self.verify_close})")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("foregrounds", "backgrounds"):
            if d[k] is not None:
                d[k] = f"{len(d[k])} ids"
        return d


@dataclass(frozen=True)
class Candidates:
    """Which backgrounds each foreground is tried on, as data handed to the search loop: fg_id -> pool positions
    in the order to try them (a foreground not listed gets none). advbg.search.strategies makes these."""

    lists: dict[int, np.ndarray]

    def for_foregrounds(self, fg_ids: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(self.lists.get(int(f), ()), np.int64) for f in fg_ids]
