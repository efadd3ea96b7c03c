"""`advbg finetune`: a plain training loop over a store with a background policy, closing the loop
search -> export -> finetune -> search again.

The model comes from ``load_classifier`` (a timm name, ``advbg/lite0`` or an advbg checkpoint). Its head is
replaced by a fresh one with one output per store class unless it already has exactly that many outputs.
Training runs at the store's image size, with the model's own normalisation inside, on batches from
``advbg.train.augment`` (``PairSampler`` + ``CompositeDataset``). AdamW or SGD (momentum 0.9, Nesterov), cosine
learning-rate schedule per step after an optional linear warm-up, AMP on CUDA (bf16 by default).

Output: ``CKPT.safetensors`` whose metadata key ``advbg`` holds JSON {architecture, num_outputs, mean, std,
class_names, label_map: "identity", input_size, recipe, ...} (read by ``advbg.models.load_checkpoint_model``,
so ``advbg search --model CKPT.safetensors`` needs no more flags), plus ``CKPT.json`` beside it with the same
metadata and the per-epoch history. Both are written under temporary names and renamed when complete.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader

from advbg._version import __version__
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.files import atomic_output, check_output, now, sha256_file, write_json
from advbg.models.loading import load_classifier, resolve_device
from advbg.models.precision import AMPS, resolve_amp
from advbg.models.precision import autocast as amp_autocast
from advbg.progress import progress as progress_bar
from advbg.search.compositor import to_device_u8
from advbg.train.augment import (
    CompositeDataset,
    PairSampler,
    Policy,
    fooling_power,
    probe_rows,
)

OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class FinetuneConfig:
    """The training recipe. Saved with the checkpoint."""

    policy: str = "mixed-rand"
    ratio: float = 1.0             # share of samples composited onto a drawn background
    epochs: int = 5
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 0
    seed: int = 0
    amp: str = "auto"              # auto = bf16 on CUDA, off on CPU; off | bf16 | fp16
    num_workers: int = 0
    refresh_every: int = 50        # adversarial: steps between fooling-power refreshes
    probe_per_class: int = 2       # adversarial: probe foregrounds per class and refresh
    floor: float = 0.1             # adversarial: uniform share of every background draw
    pretrained: bool = True        # for timm names: start from pretrained weights (offline cache / --weights)

    def validate(self) -> "FinetuneConfig":
        Policy(self.policy, self.ratio, self.floor).validate()
        checks = ((self.epochs >= 1, "epochs must be at least 1"), (self.batch_size >= 1, "batch size must be >= 1"),
                  (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
                  (self.lr > 0, "learning rate must be positive"), (self.weight_decay >= 0, "weight decay must be >= 0"),
                  (self.warmup_steps >= 0, "warm-up steps must be >= 0"),
                  (self.amp in AMPS, f"amp must be one of {', '.join(AMPS)}"),
                  (self.num_workers >= 0, "num_workers must be >= 0"),
                  (self.refresh_every >= 1, "refresh_every must be at least 1"),
                  (self.probe_per_class >= 1, "probe_per_class must be at least 1"))
        bad = [message for ok, message in checks if not ok]
        if bad:
            raise AdvbgError(f"{'; '.join(bad)} (epochs={self.epochs}, batch_size={self.batch_size}, "
                             f"optimizer={self.optimizer!r}, lr={self.lr}, amp={self.amp!r})")
        return self


@dataclass
class FinetuneResult:
    checkpoint: Path
    recipe_file: Path
    metadata: dict
    history: list[dict]
    model: nn.Module               # the trained model on [0, 1] input (normalisation inside), in eval mode


class Normalised(nn.Module):
    """[0, 1] images -> model(normalised images): the same preprocessing ``Classifier`` applies at search time."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def checkpoint_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """``out`` with or without ``.safetensors`` -> (CKPT.safetensors, CKPT.json)."""
    out = Path(out)
    base = out.with_suffix("") if out.suffix == ".safetensors" else out
    return base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")


def _build(model: str, class_names: tuple[str, ...], pretrained: bool, device: torch.device,
           echo: Callable[[str], None]) -> tuple[nn.Module, dict]:
    clf = load_classifier(model, label_map="identity", pretrained=pretrained, device="cpu")
    net, cfg = clf.model, clf.config
    if cfg.num_outputs != len(class_names):
        if not hasattr(net, "reset_classifier"):
            raise AdvbgError(f"{model} has {cfg.num_outputs} outputs and no reset_classifier(); the store has "
                             f"{len(class_names)} classes")
        net.reset_classifier(len(class_names))
        echo(f"{cfg.architecture}: new {len(class_names)}-way head (the model had {cfg.num_outputs} outputs)")
    elif tuple(c.lower() for c in cfg.class_names) != tuple(c.lower() for c in class_names):
        echo(f"note: keeping the model's {cfg.num_outputs}-way head, whose outputs were {', '.join(cfg.class_names)}; "
             f"they are trained as the store's {', '.join(class_names)}")
    for p in net.parameters():
        p.requires_grad_(True)
    info = dict(architecture=cfg.architecture, mean=list(cfg.mean), std=list(cfg.std),
                start=dict(name=cfg.name, tag=cfg.tag, weights_sha256=cfg.weights_sha256))
    return Normalised(net, cfg.mean, cfg.std).to(device).to(memory_format=torch.channels_last), info


def _optimizer(net: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    # No weight decay on norms and biases (1-D parameters), the usual recipe.
    decay = [p for p in net.parameters() if p.ndim > 1]
    rest = [p for p in net.parameters() if p.ndim <= 1]
    groups = [dict(params=decay, weight_decay=cfg.weight_decay), dict(params=rest, weight_decay=0.0)]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)


def _schedule(opt: torch.optim.Optimizer, cfg: FinetuneConfig, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _amp(device: torch.device, amp: str):
    """(autocast context, GradScaler or None)."""
    amp = resolve_amp(device, amp)
    if amp != "off" and device.type != "cuda":
        raise AdvbgError(f"amp {amp} needs CUDA; on {device.type} use --amp off (or auto)")
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    return amp_autocast(device, amp), scaler


class _Adversary:
    """Refreshes the sampler's background weights with the current model's fooling power."""

    def __init__(self, store: Store, dataset: CompositeDataset, sampler: PairSampler, cfg: FinetuneConfig,
                 device: torch.device, autocast):
        self.dataset, self.sampler, self.cfg, self.autocast = dataset, sampler, cfg, autocast
        self.bg_u8 = to_device_u8(_bg_store_images(dataset, sampler.pool), device)   # (B, H, W, 3) resident
        self.rng = np.random.default_rng([cfg.seed, 7])
        self.store, self.device = store, device
        self.refreshes = 0

    def refresh(self, net: nn.Module) -> None:
        rows = probe_rows(self.dataset.labels, self.cfg.probe_per_class, self.rng)
        ids = self.dataset.fg_ids[rows]
        fg = to_device_u8(self.store.foregrounds.read(ids), self.device)
        mask = to_device_u8(self.store.foregrounds.read_masks(ids), self.device)
        labels = torch.as_tensor(self.dataset.labels[rows], device=self.device)
        was_training = net.training
        net.eval()
        power = fooling_power(net, fg, mask, labels, self.bg_u8, self.sampler.n_classes,
                              batch_size=max(64, self.cfg.batch_size * 4), autocast=self.autocast)
        net.train(was_training)
        self.sampler.set_weights(power)
        self.refreshes += 1


def _bg_store_images(dataset: CompositeDataset, pool: np.ndarray) -> np.ndarray:
    with Store(dataset.bg_path) as b:
        return b.backgrounds.read(pool)


def finetune(model: str, store: str | os.PathLike, out: str | os.PathLike, config: FinetuneConfig = FinetuneConfig(),
             *, backgrounds: str | os.PathLike | None = None, device: str | None = None, overwrite: bool = False,
             progress: bool = True, echo: Callable[[str], None] = print) -> FinetuneResult:
    """Train ``model`` on ``store`` under ``config.policy`` and write the checkpoint; see the module docstring.

    ``backgrounds``: draw backgrounds from this store (e.g. an ``advbg export --format h5`` file) instead of
    ``store``'s own.
    """
    config.validate()
    ckpt, recipe_file = checkpoint_paths(out)
    for p in (ckpt, recipe_file):
        if p.exists() and not overwrite:
            raise AdvbgError(f"{p} already exists; pass --overwrite to replace it")
    inputs = [Path(store), backgrounds] + ([Path(model), Path(model).with_suffix(".json")]
                                          if Path(model).is_file() else [])
    check_output(ckpt, inputs=inputs)
    check_output(recipe_file, inputs=inputs)
    dev = resolve_device(device)
    torch.manual_seed(config.seed)
    with Store(store) as s:
        s.require_nonempty()
        class_names, (h, w), digest = s.class_names, s.image_size, s.digest()
        dataset = CompositeDataset(store, backgrounds=backgrounds)
        n_bg = len(dataset.bg_labels)
        sampler = PairSampler(dataset.labels, np.arange(n_bg), Policy(config.policy, config.ratio, config.floor),
                              seed=config.seed, n_classes=len(class_names))
        net, info = _build(model, class_names, config.pretrained, dev, echo)
        autocast, scaler = _amp(dev, config.amp)
        adversary = _Adversary(s, dataset, sampler, config, dev, autocast) if config.policy == "adversarial" else None
        history, seconds = _train(net, dataset, sampler, config, dev, autocast, scaler, adversary, progress, echo)
    meta = dict(info, num_outputs=len(class_names), class_names=list(class_names), label_map="identity",
                input_size=[3, h, w], advbg_version=__version__, created=now(),
                recipe=dict(asdict(config), model=model, store=str(store), store_digest=digest,
                            backgrounds=str(backgrounds) if backgrounds else None, device=str(dev),
                            steps=sum(e["steps"] for e in history), seconds=round(seconds, 2),
                            adversarial_refreshes=adversary.refreshes if adversary else 0,
                            torch_version=torch.__version__))
    _save(net.model, meta, ckpt)
    record = dict(meta, checkpoint=ckpt.name, checkpoint_sha256=sha256_file(ckpt), history=history)

    write_json(recipe_file, record)
    echo(f"wrote {ckpt} and {recipe_file.name} ({meta['recipe']['steps']} steps in {seconds:.1f} s); "
         f"evaluate with: advbg search --model {ckpt} --store {store}")
    return FinetuneResult(ckpt, recipe_file, meta, history, net)


def _train(net: Normalised, dataset: CompositeDataset, sampler: PairSampler, cfg: FinetuneConfig,
           dev: torch.device, autocast, scaler, adversary: _Adversary | None, progress: bool,
           echo: Callable[[str], None]) -> tuple[list[dict], float]:

    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        drop_last=len(dataset) > cfg.batch_size, pin_memory=dev.type == "cuda",
                        persistent_workers=False)
    total = cfg.epochs * len(loader)
    opt = _optimizer(net, cfg)
    sched = _schedule(opt, cfg, total)
    net.train()
    step, history, t0 = 0, [], time.perf_counter()
    if adversary:
        adversary.refresh(net)   # before the first epoch's batches are drawn
    bar = progress_bar(total=total, enabled=progress, desc=f"finetune {cfg.policy}", unit="step")
    try:
        for epoch in range(cfg.epochs):
            sampler.set_epoch(epoch)
            loss_sum, correct, seen = 0.0, 0, 0
            for x, y in loader:
                x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
                y = y.to(dev, non_blocking=True)
                with autocast:
                    logits = net(x)
                    loss = nn.functional.cross_entropy(logits.float(), y)
                if not torch.isfinite(loss):
                    raise AdvbgError(f"the loss became {loss.item()} at step {step}; lower --lr")
                opt.zero_grad(set_to_none=True)
                if scaler:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                sched.step()
                step += 1
                loss_sum += float(loss.detach()) * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                bar.update(1)
                if adversary and step % cfg.refresh_every == 0 and step < total:
                    adversary.refresh(net)
            history.append(dict(epoch=epoch + 1, steps=len(loader), loss=loss_sum / max(seen, 1),
                                train_accuracy=100.0 * correct / max(seen, 1), lr=sched.get_last_lr()[0],
                                seconds=round(time.perf_counter() - t0, 2)))
            h = history[-1]
            (bar.write if progress else echo)(f"epoch {h['epoch']}/{cfg.epochs}: loss {h['loss']:.4f}, train accuracy "
                      f"{h['train_accuracy']:.1f}% ({cfg.policy})")
    finally:
        bar.close()
        dataset.close()
    net.eval()
    return history, time.perf_counter() - t0


def _save(model: nn.Module, meta: dict, path: Path) -> None:
    """safetensors with metadata key ``advbg``, written atomically (``atomic_output``)."""
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_output(path) as tmp:
        save_file(sd, str(tmp), metadata={"advbg": json.dumps(meta)})
