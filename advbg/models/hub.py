"""Where timm's pretrained weights come from without a download, and whether a download could happen at all.

``cached_weights_file(name)`` finds the file timm would load from the local Hugging Face cache (or torch hub's
checkpoint folder, for older URL-hosted weights). ``download_blocker(name)`` says in words why weights that are not
cached cannot be fetched now (offline mode set, or the hub not reachable within a few seconds), so a machine without
network gets one line at once instead of a minute of retries.
"""
from __future__ import annotations

import os
import socket
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import torch

from advbg._compat import import_timm

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONNECT_TIMEOUT_S = 3.0   # a reachable hub answers a TCP connect in well under a second


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache (HF_HUB_CACHE / HF_HOME aware)."""
    from huggingface_hub import constants  # deferred: heavy or optional dependency, loaded only when used

    return Path(constants.HF_HUB_CACHE)


def torch_hub_checkpoints() -> Path:
    """torch hub's checkpoint folder (TORCH_HOME aware), where timm kept URL-hosted weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def pretrained_cfg(name: str):
    """timm's pretrained config of ``name`` (timm name[.tag]), or None when timm has none."""
    import_timm()
    from timm.models import get_pretrained_cfg  # deferred: heavy or optional dependency, loaded only when used

    try:
        return get_pretrained_cfg(name)
    except (RuntimeError, KeyError, ValueError):
        return None


def hf_cached_file(repo_id: str, filename: str | None = None) -> Path | None:
    """A weights file of ``repo_id`` already in the local Hugging Face cache, or None (never a network call)."""
    from huggingface_hub import try_to_load_from_cache  # deferred: heavy or optional dependency, loaded only when used

    for fname in ([filename] if filename else []) + list(HF_WEIGHT_FILES):
        hit = try_to_load_from_cache(repo_id, fname, cache_dir=hf_cache_dir())
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def cached_weights_file(name: str) -> Path | None:
    """The local file timm would load for ``name`` (timm name[.tag]) without a download, or None."""
    cfg = pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        hit = hf_cached_file(cfg.hf_hub_id.split("@", 1)[0], cfg.hf_hub_filename)
        if hit:
            return hit
    if cfg.url:
        old = torch_hub_checkpoints() / os.path.basename(cfg.url.split("?", 1)[0])
        if old.is_file():
            return old
    return None


def offline_mode() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it at import, or as set in the environment since."""
    from huggingface_hub import constants  # deferred: heavy or optional dependency, loaded only when used

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _download_url(name: str) -> str | None:
    from huggingface_hub import constants  # deferred: heavy or optional dependency, loaded only when used

    cfg = pretrained_cfg(name)
    if cfg is None:
        return None
    return constants.ENDPOINT if cfg.hf_hub_id else (cfg.url or None)


def unreachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when a TCP connection to ``url``'s host (or the HTTPS proxy, when one is set) opens within
    ``timeout`` seconds, else why not. DNS gets the same limit (it runs in a thread that is left behind)."""
    parsed = urlparse(url)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    target = urlparse(proxy if "://" in proxy else f"http://{proxy}") if proxy else parsed
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    if not host:
        return f"{url} names no host"
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e.strerror or str(e) or type(e).__name__)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    where = f"{host}:{port}" + (" (the proxy)" if proxy else "")
    if not outcome:
        return f"{where}: no answer within {timeout:.0f} s"
    return f"{where}: {outcome[0]}" if outcome[0] else None


def download_blocker(name: str) -> str | None:
    """Why the pretrained weights of ``name`` cannot be downloaded now (a phrase), or None when they can be tried."""
    if offline_mode():
        return "HF_HUB_OFFLINE is set"
    url = _download_url(name)
    if url is None:
        return None
    why = unreachable(url)
    return f"the hub cannot be reached: {why}" if why else None
