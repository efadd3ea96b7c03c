"""What can be evaluated offline right now, and what would need a download (``advbg models``).

Three places hold usable weights without a network:
  - the registered models (``advbg/lite0``, and with the ``[lite]`` extra ``advbg/lite1``/``advbg/lite2``:
    weights inside installed packages),
  - checkpoint files in a folder (``--dir``, else ``$ADVBG_CHECKPOINTS``, else ~/.cache/advbg/checkpoints),
  - timm pretrained weights already downloaded once: the Hugging Face cache (``models--timm--<name>.<tag>``) or
    torch hub's checkpoint folder (older URL-hosted weights).
Suggested timm weights that are in neither cache are listed with the one command that fetches them.
"""
from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from safetensors import safe_open

from advbg._compat import import_timm
from advbg.errors import AdvbgError
from advbg.models.hub import (
    cached_weights_file,  # noqa: F401  (re-exported: the eval record and cards use it)
    hf_cache_dir,
    hf_cached_file,
    pretrained_cfg,
    torch_hub_checkpoints,
)
from advbg.models.weights import lite_weights_path, registered_names

CHECKPOINT_EXTS = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
DEFAULT_CHECKPOINT_DIR = Path.home() / ".cache" / "advbg" / "checkpoints"

# (timm name with weight tag, why a user would want it)
SUGGESTED: tuple[tuple[str, str], ...] = (
    ("resnet50.tv_in1k", "ResNet-50 with torchvision's original ImageNet weights: the paper's ImageNet-pretrained "
                         "column (76.1% ImageNet top-1)"),
    ("resnet50.a1_in1k", "timm's default for plain 'resnet50' (NOT the paper's weights)"),
    ("resnet18.tv_in1k", "ResNet-18, torchvision's original weights"),
    ("tf_efficientnet_lite0.in1k", "timm's own weights for the embedded default's architecture"),
    ("convnext_tiny.fb_in1k", "ConvNeXt-T"),
    ("vit_base_patch16_224.augreg2_in21k_ft_in1k", "ViT-B/16, ImageNet-21k pretrained"),
)


@dataclass(frozen=True)
class ZooEntry:
    """One model a user could pass to ``--model``."""

    name: str          # what to pass to --model
    kind: str          # embedded | checkpoint | timm
    ready: bool        # evaluable offline now
    note: str


def checkpoint_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit``, else $ADVBG_CHECKPOINTS, else ~/.cache/advbg/checkpoints."""
    return Path(explicit or os.environ.get("ADVBG_CHECKPOINTS") or DEFAULT_CHECKPOINT_DIR).expanduser()


# --------------------------------------------------------------------------------------------- the three places
def embedded_entries() -> list[ZooEntry]:

    checks: dict[str, Callable[[], object]] = {f"advbg/lite{n}": (lambda n=n: lite_weights_path(n)) for n in (0, 1, 2)}
    out = []
    for name in registered_names():
        try:
            checks.get(name, lambda: None)()
            out.append(ZooEntry(name, "embedded", True, "registered; weights installed"
                                + (" (default model)" if name == "advbg/lite0" else "")))
        except AdvbgError as e:
            out.append(ZooEntry(name, "embedded", False, str(e)))
    return out


def _recorded_arch(path: Path) -> str | None:
    """The architecture a checkpoint records (safetensors metadata 'advbg' or a .json beside it)."""
    meta = {}
    try:
        if path.suffix == ".safetensors":

            with safe_open(str(path), "pt") as f:
                raw = (f.metadata() or {}).get("advbg")
            meta = json.loads(raw) if raw else {}
        if not meta and path.with_suffix(".json").is_file():
            meta = json.loads(path.with_suffix(".json").read_text())
    except Exception:  # an unreadable file is listed as such, never fatal for the listing
        return None
    return meta.get("architecture") if isinstance(meta, dict) else None


def checkpoint_entries(folder: Path) -> list[ZooEntry]:
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(q for q in folder.rglob("*") if q.is_file() and q.suffix.lower() in CHECKPOINT_EXTS):
        arch = _recorded_arch(p)
        size = f"{p.stat().st_size / 2**20:.1f} MB"
        note = f"architecture {arch}, {size}" if arch else f"{size}; architecture not recorded: add --arch ARCH"
        out.append(ZooEntry(str(p), "checkpoint", True, note))
    return out


def _cached_timm_names() -> dict[str, Path]:
    """timm name.tag -> weights file, for every timm model in the HF cache or torch hub's checkpoint folder."""
    found: dict[str, Path] = {}
    cache = hf_cache_dir()
    if cache.is_dir():
        for d in sorted(cache.glob("models--timm--*")):
            repo = "timm/" + d.name[len("models--timm--"):]
            hit = hf_cached_file(repo)
            if hit:
                found[repo[len("timm/"):]] = hit
    old = torch_hub_checkpoints()
    if old.is_dir() and any(old.iterdir()):
        files = {p.name: p for p in old.iterdir() if p.is_file()}

        timm = import_timm()
        for name in timm.list_pretrained():
            cfg = pretrained_cfg(name)
            base = os.path.basename((cfg.url or "").split("?", 1)[0]) if cfg else ""
            if base in files:
                found.setdefault(name, files[base])
    return found


def timm_entries(pattern: str | None = None) -> list[ZooEntry]:
    """Cached timm weights (ready), then suggested or ``pattern``-matching ones that need a download."""
    cached = _cached_timm_names()
    out = [ZooEntry(n, "timm", True, f"in the local cache ({p})") for n, p in sorted(cached.items())]
    if pattern:

        wanted = [(n, "") for n in import_timm().list_pretrained(pattern)]
        if not wanted and not cached:
            raise AdvbgError(f"no timm pretrained weights match {pattern!r} (timm.list_pretrained)")
    else:
        wanted = list(SUGGESTED)
    for name, why in wanted:
        if name not in cached:
            fetch = f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\""
            out.append(ZooEntry(name, "timm", False, (f"{why}; " if why else "") + f"download once with network: {fetch}"))
    if pattern:

        out = [e for e in out if fnmatch.fnmatch(e.name, pattern)]
    return out


def list_models(folder: str | os.PathLike | None = None, pattern: str | None = None) -> list[ZooEntry]:
    """Everything ``advbg models`` shows: embedded, local checkpoints, timm (cached first)."""
    return embedded_entries() + checkpoint_entries(checkpoint_dir(folder)) + timm_entries(pattern)


def format_models(entries: list[ZooEntry], folder: Path) -> str:
    ready = [e for e in entries if e.ready]
    later = [e for e in entries if not e.ready]
    lines = [f"evaluable offline now ({len(ready)}); checkpoints searched in {folder}:"]
    lines += [f"  {e.name:<44} {e.kind:<10} {e.note}" for e in ready] or ["  (none)"]
    if later:
        lines += ["", f"would need a download or a missing package ({len(later)}):"]
        lines += [f"  {e.name:<44} {e.kind:<10} {e.note}" for e in later]
    return "\n".join(lines)
