"""Shared fixtures: a tiny fixed-weight classifier and small random stores. Nothing here downloads."""
from __future__ import annotations

import os
import random
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
import torch
from torch import nn

from advbg.data.labels import IN9_CLASSES
from advbg.data.writer import write_store
from advbg.models.classifier import Classifier, ClassifierConfig
from advbg.models.label_map import identity_map, in9_map
from advbg.models.weights import register

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed_global_generators():
    """Every test starts from the same global random state (torch, numpy, random): the few that draw from it
    (torch.rand inputs, timm's weight initialisation) are seeded like those that pass their own generator."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


class TinyNet(nn.Module):
    """A small fixed-weight CNN: sensitive to both foreground and background pixels."""

    def __init__(self, num_outputs: int = 9, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 5, stride=4)
        self.fc = nn.Linear(8 * 4, num_outputs)
        self.num_classes = num_outputs
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)
        return self.fc(h) * 4.0


# What a registered test model says about itself: the pretrained-config overrides of make_tiny_classifier().
TINY_INFO = dict(architecture="tinynet", weight_tag="seed0", source="test", weights_file=None, weights_sha256=None,
                 mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 32, 32), class_names=IN9_CLASSES)


def register_tiny(name: str, net: Callable[[], nn.Module] = lambda: TinyNet(9), **info) -> None:
    """Make ``--model name`` load ``net()`` with TINY_INFO updated by ``info`` (the one way tests register models).

    The default, TinyNet(9), has the weights of make_tiny_classifier()."""
    register(name)(lambda: (net(), dict(TINY_INFO, **info)))


register_tiny("test/tiny")   # the model of every in-process CLI test


def make_tiny_classifier(num_outputs: int = 9, label_map: str = "identity", seed: int = 0, size: int = 32) -> Classifier:
    lm = identity_map(IN9_CLASSES) if label_map == "identity" else in9_map()
    cfg = ClassifierConfig(name=f"tiny{num_outputs}", architecture="tinynet", weight_tag=f"seed{seed}",
                           source="test", weights_file=None, weights_sha256=None, input_size=(3, size, size),
                           mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bilinear",
                           num_outputs=num_outputs, label_map=lm.name, class_names=lm.class_names)
    return Classifier(TinyNet(num_outputs, seed), cfg, lm).to(memory_format=torch.channels_last)


@pytest.fixture
def tiny_classifier() -> Classifier:
    """9 outputs, identity label map over the IN-9 class names, 32x32 input."""
    return make_tiny_classifier()


@pytest.fixture
def tiny_classifier_1000() -> Classifier:
    """1000 outputs (ImageNet-shaped) with the in9 label map."""
    return make_tiny_classifier(1000, "in9", seed=1)


def make_random_store(path, n_fg: int = 7, n_bg: int = 11, size: int = 32, seed: int = 0, classes=IN9_CLASSES):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_fg, size, size), np.uint8)
    for i in range(n_fg):  # a random rectangle per foreground, so masks are neither empty nor full
        y0, x0 = rng.integers(0, size // 2, 2)
        y1, x1 = y0 + rng.integers(4, size // 2), x0 + rng.integers(4, size // 2)
        masks[i, y0:y1, x0:x1] = 1
    return write_store(
        path, class_names=classes,
        fg_images=rng.integers(0, 256, (n_fg, size, size, 3), dtype=np.uint8), fg_masks=masks,
        fg_labels=rng.integers(0, len(classes), n_fg),
        bg_images=rng.integers(0, 256, (n_bg, size, size, 3), dtype=np.uint8),
        bg_labels=rng.integers(-1, len(classes), n_bg),
        fg_source_ids=[f"photo{i}" for i in range(n_fg)], bg_source_ids=[f"photo{j}" for j in range(n_bg)])


@pytest.fixture
def random_store(tmp_path):
    """Path of a small random 9-class store: 7 foregrounds, 11 backgrounds, 32x32."""
    return make_random_store(tmp_path / "store.h5")


def run_cli(args, capsys):
    """Run the real `advbg` CLI in-process: (exit code, stdout, stderr)."""
    from advbg.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code or 0, out.out, out.err


def assert_one_line_error(code, err, pattern: str = "") -> None:
    """Bad input: non-zero exit, no traceback, exactly one `advbg: error:` line matching ``pattern``."""
    import re

    assert code not in (0, None) and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("advbg: error:"), err
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture
def forwards(monkeypatch):
    """The batch sizes of every TinyNet forward run during the test (in-process CLI included): [] = no forward."""
    calls = []
    plain = TinyNet.forward

    def counted(self, x):
        calls.append(len(x))
        return plain(self, x)

    monkeypatch.setattr(TinyNet, "forward", counted)
    return calls
