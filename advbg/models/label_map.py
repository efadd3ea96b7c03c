"""Label maps: how a model's outputs become the store's classes (one documented reduction)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from advbg.data.labels import IN9_CLASSES, UNMAPPED, imagenet_to_in9
from advbg.errors import ModelError

_INDEX_CACHE: dict[tuple, torch.Tensor] = {}


@dataclass(frozen=True)
class LabelMap:
    """Maps a model's outputs to the store's classes.

    One documented reduction: the score of a class is the max logit over the model outputs mapped to it, and
    outputs mapped to no class form one extra "none" group. The predicted class is the group of the top-1
    logit, so for ``in9`` this equals the reference rule (top-1 over all 1000, then look up; unmapped = wrong).
    ``margin`` = score of the true class minus the best other score ("none" included): fooled <=> margin < 0.
    """

    name: str
    table: tuple[int, ...]            # model output index -> class index, or -1 (unmapped)
    class_names: tuple[str, ...]

    @property
    def num_inputs(self) -> int:
        return len(self.table)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_none(self) -> bool:
        return UNMAPPED in self.table

    def _index(self, device: torch.device) -> torch.Tensor:
        # Cached per device: building it from the table is a blocking host->device copy, i.e. a GPU sync per batch.
        key = (self.table, self.num_classes, str(torch.device(device)))
        t = _INDEX_CACHE.get(key)
        if t is None:
            t = torch.tensor(self.table, dtype=torch.int64, device=device)
            t = _INDEX_CACHE[key] = torch.where(t < 0, torch.full_like(t, self.num_classes), t)
        return t

    def reduce(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, num_inputs) logits -> (N, num_classes [+1 "none" column]) group scores."""
        if self.name == "identity":
            return logits
        groups = self.num_classes + 1
        idx = self._index(logits.device).expand_as(logits)
        out = torch.full((logits.shape[0], groups), float("-inf"), device=logits.device, dtype=logits.dtype)
        out = out.scatter_reduce(1, idx, logits, reduce="amax", include_self=True)
        return out if self.has_none else out[:, : self.num_classes]

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """(N,) mapped prediction, -1 for an unmapped top-1: the reference rule, top-1 over all outputs then look it
        up. On an exact tie the lowest output index wins (torch.argmax), as in the reference; an argmax over the
        reduced groups would give the lowest class index instead."""
        top = logits.argmax(1)
        if self.name == "identity":
            return top
        pred = self._index(logits.device)[top]
        return torch.where(pred >= self.num_classes, torch.full_like(pred, UNMAPPED), pred)

    def margin(self, logits: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        """(N,) true-class score minus the best other score, in logit units."""
        scores = self.reduce(logits).float()
        true_score = scores.gather(1, true.view(-1, 1)).squeeze(1)
        others = scores.scatter(1, true.view(-1, 1), float("-inf"))
        return true_score - others.max(1).values

    def differs_from(self, class_names: Sequence[str]) -> bool:
        """True when this map's classes are not ``class_names`` in the same order (case-insensitive). An identity
        map whose names are placeholders ("0".."n-1": the model recorded none) can only be checked by count."""
        have, want = [c.lower() for c in self.class_names], [c.lower() for c in class_names]
        if len(have) != len(want):
            return True
        placeholders = self.name == "identity" and list(self.class_names) == [str(i) for i in range(len(have))]
        return not placeholders and have != want

    def require_store_classes(self, class_names: Sequence[str], model: str) -> None:
        """Raise ModelError unless this map gives exactly the store's classes, in the store's order."""
        if len(self.class_names) != len(class_names):
            raise ModelError(f"label map {self.name!r} gives {len(self.class_names)} classes but the store has "
                             f"{len(class_names)} ({', '.join(class_names)}) for model {model!r}; use a label map "
                             f"that fits (--label-map in9 for ImageNet-1k models on IN-9 stores)")
        if self.differs_from(class_names):
            raise ModelError(f"label map {self.name!r} of model {model!r} gives the classes "
                             f"{', '.join(self.class_names)}; the store's are {', '.join(class_names)} (class k of "
                             f"the model must be class k of the store)")

    def check_fits(self, num_outputs: int) -> None:
        if num_outputs != self.num_inputs:
            raise ModelError(f"label map {self.name!r} expects {self.num_inputs} model outputs, "
                             f"the model has {num_outputs}")


def identity_map(class_names: Sequence[str]) -> LabelMap:
    return LabelMap("identity", tuple(range(len(class_names))), tuple(class_names))


def in9_map() -> LabelMap:
    return LabelMap("in9", tuple(int(v) for v in imagenet_to_in9()), IN9_CLASSES)


def make_label_map(kind: str, num_outputs: int, class_names: Sequence[str] | None = None) -> LabelMap:
    """'in9' (ImageNet-1k -> IN-9), 'identity' (the model's own classes) or 'auto' (in9 for 1000 outputs)."""
    if kind == "auto":
        kind = "in9" if num_outputs == 1000 else "identity"
    if kind == "in9":
        lm = in9_map()
    elif kind == "identity":
        names = list(class_names) if class_names else [str(i) for i in range(num_outputs)]
        if len(names) != num_outputs:
            raise ModelError(f"{len(names)} class names for a model with {num_outputs} outputs")
        lm = identity_map(names)
    else:
        raise ModelError(f"unknown label map {kind!r}; use 'in9', 'identity' or 'auto'")
    lm.check_fits(num_outputs)
    return lm
