"""Checkpoint key layouts: match a state dict's keys to an architecture's, and say how well they matched.

Checkpoints of the reference release (the `robustness` library) hold an ``AttackerModel`` wrapped in
``DataParallel``: the weights sit under ``module.model.``, beside ``module.normalizer.`` (the input
normalisation, which advbg's ``Classifier`` does itself) and ``module.attacker.`` (a second reference to the same
weights plus the attacker's normaliser). The reference loader strips the prefixes by hand and, when they are off,
silently loads nothing. Here every key is matched against the architecture's own keys and the load is refused
unless the weights cover the architecture exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advbg.errors import ModelError

# Wrapper prefixes stripped (in any order, repeatedly) until a key names a tensor of the architecture.
WRAPPER_PREFIXES = ("module.", "model.")
# Sub-modules of robustness' AttackerModel that are not part of the classifier.
IGNORED_ROOTS = ("normalizer", "attacker")
# Buffers a checkpoint may lack without changing inference (BatchNorm's step counter).
OPTIONAL_SUFFIXES = ("num_batches_tracked",)


@dataclass(frozen=True)
class KeyReport:
    """How a checkpoint's tensors matched an architecture's (counts of tensors; examples of keys)."""

    expected: int                 # tensors the architecture has
    matched: int                  # of those, found in the checkpoint (under their name or a wrapped one)
    renamed: int                  # matched after stripping wrapper prefixes
    ignored: tuple[str, ...]      # normaliser / attacker entries dropped
    missing: tuple[str, ...]      # architecture tensors absent from the checkpoint
    unexpected: tuple[str, ...]   # checkpoint tensors that match nothing in the architecture
    filled: tuple[str, ...]       # optional buffers absent from the checkpoint, kept at the architecture's value
    normalizer: dict | None = None  # the checkpoint's own normaliser mean/std, when it has one

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unexpected

    def summary(self) -> str:
        """One line, e.g. ``122/122 tensors matched (122 after stripping module./model.; 246 ignored: ...)``."""
        notes = []
        if self.renamed:
            notes.append(f"{self.renamed} after stripping {'/'.join(WRAPPER_PREFIXES)} prefixes")
        if self.ignored:
            notes.append(f"{len(self.ignored)} ignored ({'/'.join(IGNORED_ROOTS)} entries)")
        if self.filled:
            notes.append(f"{len(self.filled)} absent optional buffers kept ({', '.join(OPTIONAL_SUFFIXES)})")
        if self.unexpected:
            notes.append(f"{len(self.unexpected)} unmatched checkpoint tensors")
        return f"{self.matched}/{self.expected} tensors matched" + (f" ({'; '.join(notes)})" if notes else "")

    def to_dict(self) -> dict:
        return dict(expected=self.expected, matched=self.matched, renamed=self.renamed, ignored=len(self.ignored),
                    missing=len(self.missing), unexpected=len(self.unexpected), filled=len(self.filled),
                    normalizer=self.normalizer, summary=self.summary())

    def require_complete(self, path, arch: str) -> None:
        """Raise ModelError unless the checkpoint covers the architecture exactly."""
        if self.complete:
            return
        if self.matched - len(self.filled) <= 0:
            got = f"its keys look like {self.unexpected[0]!r}" if self.unexpected else "it holds no model tensors"
            raise ModelError(f"{path} does not fit architecture {arch!r}: none of its tensors match ({got}); "
                             f"pass the checkpoint's architecture with --arch")
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} of the {self.expected} architecture tensors are missing "
                         f"(e.g. {self.missing[0]!r})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} checkpoint tensors match nothing (e.g. {self.unexpected[0]!r})")
        raise ModelError(f"{path} does not fit architecture {arch!r}: {'; '.join(parts)}; "
                         f"check --arch (loading only part of a model is refused)")


def _root(key: str) -> str:
    k = key
    while k.startswith("module."):
        k = k[len("module."):]
    return k.split(".", 1)[0]


def _match(key: str, wanted: dict) -> str | None:
    k = key
    while k not in wanted:
        prefix = next((p for p in WRAPPER_PREFIXES if k.startswith(p)), None)
        if prefix is None:
            return None
        k = k[len(prefix):]
    return k


def _normalizer(sd: dict[str, torch.Tensor], ignored: list[str]) -> dict | None:
    stats = {}
    for k in ignored:
        if _root(k) == "normalizer" and k.endswith(("new_mean", "new_std")):
            stats["mean" if k.endswith("new_mean") else "std"] = [float(v) for v in sd[k].flatten()]
    return stats or None


def normalize_state_dict_keys(sd: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], KeyReport]:
    """Rename ``sd``'s keys to ``model``'s (stripping ``module.``/``model.``), drop normaliser/attacker entries.

    Returns the renamed state dict (ready for ``load_state_dict(strict=True)`` when the report is complete) and
    a ``KeyReport``. Shapes are not compared here: ``load_state_dict`` does that and names the tensor.
    """
    wanted = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    ignored, unexpected = [], []
    renamed = 0
    for key, value in sd.items():
        if _root(key) in IGNORED_ROOTS:
            ignored.append(key)
            continue
        name = _match(key, wanted)
        if name is None or name in out:  # a second tensor for one name is as wrong as one that fits nothing
            unexpected.append(key)
            continue
        out[name] = value
        renamed += name != key
    filled = [k for k in wanted if k not in out and k.endswith(OPTIONAL_SUFFIXES)]
    for k in filled:
        out[k] = wanted[k]
    missing = [k for k in wanted if k not in out]
    report = KeyReport(expected=len(wanted), matched=len(wanted) - len(missing), renamed=renamed,
                       ignored=tuple(ignored), missing=tuple(missing), unexpected=tuple(unexpected),
                       filled=tuple(filled), normalizer=_normalizer(sd, ignored))
    return out, report
