"""Checkpoint files: read them safely (safetensors, or a state dict loaded with ``weights_only=True``), read their
advbg metadata (safetensors metadata or a JSON sidecar), match their keys to an architecture's and load strictly.

Checkpoints of the reference release (the `robustness` library) hold an ``AttackerModel`` wrapped in
``DataParallel``: the weights sit under ``module.model.``, beside ``module.normalizer.`` (the input
normalisation, which advbg's ``Classifier`` does itself) and ``module.attacker.`` (a second reference to the same
weights plus the attacker's normaliser). The reference loader strips the prefixes by hand and, when they are off,
silently loads nothing. Here every key is matched against the architecture's own keys and the load is refused
unless the weights cover the architecture exactly.
"""
from __future__ import annotations

import difflib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from advbg._compat import import_timm
from advbg.errors import ModelError
from advbg.files import sha256_file
from advbg.models.norm import check_stats

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


# --------------------------------------------------------------------------------------------- files
def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a checkpoint. Never unpickles arbitrary objects."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"checkpoint {p} does not exist")
    if p.suffix == ".safetensors":
        try:
            with safe_open(str(p), "pt") as f:
                meta = dict(f.metadata() or {})
            return load_file(str(p)), meta
        except Exception as e:
            raise ModelError(f"{p} is not a readable safetensors file: {e}") from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: one line is enough
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"refusing to load {p}: it is not a plain tensor checkpoint (torch.load with "
                         f"weights_only=True failed: {reason}); save a state dict or safetensors instead") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{p} does not hold a state dict of tensors")
    return obj, {}


def _sidecar(path: Path, meta: dict[str, str]) -> dict:
    """advbg checkpoint metadata: safetensors metadata key 'advbg', or a JSON file beside the checkpoint."""
    if "advbg" in meta:
        where, text = f"the 'advbg' metadata of {path}", meta["advbg"]
    else:
        side = path.with_suffix(".json")
        if not side.is_file():
            return {}
        try:
            where, text = str(side), side.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ModelError(f"cannot read checkpoint metadata {side}: {e}") from None
    try:
        side = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelError(f"{where} is not valid JSON: {e}") from None
    if not isinstance(side, dict):
        raise ModelError(f"{where} is not a JSON object (got {type(side).__name__})")
    return _check_sidecar(side, where)


def _check_sidecar(side: dict, where: str) -> dict:
    """The metadata fields advbg reads, with the types it needs (ModelError naming the field otherwise)."""
    arch = side.get("architecture")
    if arch is not None and not (isinstance(arch, str) and arch):
        raise ModelError(f"{where}: architecture must be a timm name (a string), got {arch!r}")
    size = side.get("input_size")
    if size is not None:
        ok = (isinstance(size, (list, tuple)) and len(size) == 3 and all(isinstance(v, int) for v in size)
              and size[0] == 3 and all(1 <= v <= 8192 for v in size[1:]))
        if not ok:
            raise ModelError(f"{where}: input_size must be [3, H, W] with 1 <= H, W <= 8192, got {size!r}")
    names = side.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ModelError(f"{where}: class_names must be a list of strings")
    for k in ("label_map", "num_outputs"):
        v = side.get(k)
        if v is not None and not isinstance(v, str if k == "label_map" else int):
            raise ModelError(f"{where}: {k} has the wrong type ({v!r})")
    if "mean" in side or "std" in side:
        check_stats(side.get("mean") or (), side.get("std") or (), "checkpoint-metadata")
    return side


def _classifier_key(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return str(cfg.get("classifier", "fc"))


def load_checkpoint_model(path: str | os.PathLike, arch: str | None = None) -> tuple[nn.Module, dict]:
    """Build ``arch`` (or the architecture recorded in the checkpoint) and load every tensor strictly."""
    p = Path(path)
    sd, meta = read_state_dict(p)
    side = _sidecar(p, meta)
    arch = arch or side.get("architecture")
    if not arch:
        raise ModelError(f"{p} does not record its architecture; pass arch= (--arch), e.g. --arch resnet50")
    timm = import_timm()
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        raise ModelError(f"unknown architecture {arch!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    probe = timm.create_model(arch, pretrained=False)
    # robustness-library layout (module./model. prefixes, normaliser/attacker entries): see the module docstring
    sd, key_report = normalize_state_dict_keys(sd, probe)
    key_report.require_complete(p, arch)
    head = _classifier_key(probe) + ".weight"
    num_classes = int(sd[head].shape[0]) if head in sd else int(side.get("num_outputs", probe.num_classes))
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    load_strict(model, sd, p, arch)
    model.checkpoint_keys = key_report  # how many tensors matched; reported by `advbg eval`
    info = dict(architecture=arch, weight_tag="checkpoint", source="checkpoint", weights_file=str(p),
                weights_sha256=sha256_file(p))
    info.update(normalizer_info(key_report.normalizer))
    for k in ("class_names", "input_size", "label_map"):
        if k in side:
            info[k] = side[k]
    if "mean" in side or "std" in side:
        info.update(mean=side.get("mean"), std=side.get("std"), norm_source="checkpoint-metadata")
    return model, info


def normalizer_info(stats: dict | None) -> dict:
    """mean/std of a robustness checkpoint's normalizer buffers, as ``info`` entries (none when absent)."""
    if not stats or len(stats.get("mean", ())) != 3 or len(stats.get("std", ())) != 3:
        return {}
    return dict(mean=tuple(stats["mean"]), std=tuple(stats["std"]), norm_source="checkpoint-normalizer")


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], path, arch: str) -> None:
    own = model.state_dict()
    # load_state_dict casts silently: int32/bool "weights" would load as whole numbers into a float model
    wrong = [k for k, v in sd.items() if k in own and own[k].is_floating_point() and not v.is_floating_point()]
    if wrong:
        raise ModelError(f"{path}: {len(wrong)} tensors that must be floating point are stored as integers or "
                         f"booleans (e.g. {wrong[0]!r}: {sd[wrong[0]].dtype}); this is not a checkpoint of {arch!r}")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).split("\n\t")[1:3]
        raise ModelError(f"{path} does not fit architecture {arch!r}: {'; '.join(first) or e}") from None
