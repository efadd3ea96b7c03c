"""The classifier: a frozen model with its preprocessing and label map attached, and the config that owns its
identity. Made by ``advbg.models.loading.load_classifier``."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from advbg.models.label_map import LabelMap

# --------------------------------------------------------------------------------------------- classifier
# What decides a classifier's outputs for a given [0,1] input. Every reuse check (resuming a search, universal's
# stored outcome matrices, embeddings and FAISS indexes) compares exactly these; the user-given name, the weights
# file's path and library versions do not count.
IDENTITY_FIELDS = ("architecture", "weight_tag", "weights_sha256", "label_map", "mean", "std", "input_size",
                   "interpolation", "num_outputs", "class_names")


def identity_of(config: dict) -> dict:
    """The identity fields of a ClassifierConfig given as a dict (e.g. read back from a results file), JSON-normal."""
    return json.loads(json.dumps({k: config.get(k) for k in IDENTITY_FIELDS}))


def results_tag(config: dict) -> str:
    """The model part of a results name and of a summary's ``model_tag``: ``<architecture>.<weight tag>``, plus
    ``-<first 8 hex digits of the weights' SHA-256>`` for weights read from a file (a checkpoint, --weights), so
    two checkpoints of one architecture never share (and overwrite) a results group. ``config``: a
    ClassifierConfig as a dict (e.g. a run record's ``classifier``)."""
    tag = f"{config['architecture']}.{config['weight_tag']}"
    if config.get("weights_sha256") and config.get("source") in ("checkpoint", "timm"):
        tag += f"-{config['weights_sha256'][:8]}"
    return tag


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
