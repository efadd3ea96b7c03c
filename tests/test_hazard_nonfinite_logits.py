"""Hazard: NaN/inf logits (an fp16 overflow). Such composites are counted as invalid, reported, and never count
as fooled or as a worst background: the result equals a search that never saw them."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TinyNet, register_tiny
from conftest import run_cli as run
from torch import nn

from advbg.data.labels import IN9_CLASSES
from advbg.data.store import Store
from advbg.data.writer import write_store
from advbg.models.classifier import Classifier, ClassifierConfig
from advbg.models.label_map import identity_map
from advbg.search.config import SearchConfig
from advbg.search.runner import search

POISON = [2, 4]  # background ids whose composites overflow
N_FG, N_BG = 4, 6


class OverflowNet(nn.Module):
    """TinyNet, except that composites showing a poison background (a 255 marker pixel at (0, 0)) give the
    logits an fp16 overflow would: +inf for class 0 ('inf'), or NaN everywhere ('nan')."""

    def __init__(self, kind: str):
        super().__init__()
        self.net, self.kind, self.num_classes = TinyNet(9), kind, 9

    def forward(self, x):
        out = self.net(x)
        poison = x[:, 0, 0, 0] > 1.5  # normalised with mean 0.5, std 0.25: 255 -> 2.0, <= 150 -> <= 0.36
        if self.kind == "inf":
            out[poison, 0] = torch.tensor(7e4).half().float()  # 70,000 does not fit fp16: inf
        else:
            out[poison] = float("nan")
        return out


register_tiny("test/overflow-inf", lambda: OverflowNet("inf"), architecture="overflownet")
register_tiny("test/overflow-nan", lambda: OverflowNet("nan"), architecture="overflownet")


def classifier(kind: str) -> Classifier:
    lm = identity_map(IN9_CLASSES)
    cfg = ClassifierConfig(name=f"overflow-{kind}", architecture="overflownet", weight_tag="seed0", source="test",
                           weights_file=None, weights_sha256=None, input_size=(3, 32, 32), mean=(0.5,) * 3,
                           std=(0.25,) * 3, interpolation="bilinear", num_outputs=9, label_map=lm.name,
                           class_names=lm.class_names)
    return Classifier(OverflowNet(kind), cfg, lm)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(3)
    masks = np.zeros((N_FG, 32, 32), np.uint8)
    masks[:, 8:24, 8:24] = 1                      # the corner pixel always shows the background
    bg = rng.integers(0, 151, (N_BG, 32, 32, 3), dtype=np.uint8)
    bg[POISON, 0, 0, 0] = 255
    return write_store(tmp_path_factory.mktemp("nf") / "s.h5", class_names=IN9_CLASSES,
                       fg_images=rng.integers(0, 151, (N_FG, 32, 32, 3), dtype=np.uint8), fg_masks=masks,
                       fg_labels=[1, 2, 3, 4], bg_images=bg, bg_labels=[0, 1, 2, 3, 4, 5])


@pytest.mark.parametrize("kind", ["inf", "nan"])
@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
def test_nonfinite_composites_are_invalid_and_never_fooled(store, kind, mode):
    clean = [j for j in range(N_BG) if j not in POISON]
    with Store(store) as s:
        got = search(s, classifier(kind), SearchConfig(mode=mode), write=False, progress=False)
        ref = search(s, classifier(kind), SearchConfig(mode=mode, backgrounds=clean), write=False, progress=False)
    assert got.n_invalid.sum() > 0 and set(got.n_invalid) <= set(range(len(POISON) + 1))
    if mode == "exhaustive":
        assert (got.n_invalid == len(POISON)).all()
    assert not np.isin(got.worst_bg, POISON).any() and not np.isin(got.first_fooling_bg, POISON).any()
    assert np.array_equal(got.n_fooling, ref.n_fooling) and got.fooling_rate == ref.fooling_rate
    assert np.array_equal(got.worst_bg, ref.worst_bg) and np.allclose(got.worst_margin, ref.worst_margin)
    assert np.isfinite(got.worst_margin).all()


def test_only_nonfinite_composites_give_no_fooling_and_no_worst_background(store):
    with Store(store) as s:
        got = search(s, classifier("inf"), SearchConfig(backgrounds=POISON), write=False, progress=False)
    assert got.fooling_rate == 0.0 and (got.worst_bg == -1).all() and np.isnan(got.worst_margin).all()
    assert (got.n_invalid == len(POISON)).all()


def test_cli_reports_invalid_composites_in_the_json_summary(store, tmp_path, capsys):
    code, out, err = run(["search", "--store", str(store), "--model", "test/overflow-inf", "--no-write",
                          "--results-file", str(tmp_path / "r.json"), "--grid", "-", "-q"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["invalid_composites"] == N_FG * len(POISON)
    assert summary["fooling_rate"] is not None and all(r["worst_bg"] not in POISON for r in summary["foregrounds"])


def test_cli_headline_mentions_invalid_composites(store, capsys):
    code, out, err = run(["search", "--store", str(store), "--model", "test/overflow-inf", "--no-write",
                          "--grid", "-", "-q"], capsys)
    assert code == 0, err
    assert "invalid" in out.lower() and str(N_FG * len(POISON)) in out
