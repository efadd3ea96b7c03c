"""Input normalisation: a robustness-library checkpoint's own normalizer buffers are applied (not IN-9 statistics
in their place), every classifier records where its mean/std came from, and ``norm="reference"`` applies what the
reference evaluation does for that model kind (ImageNet's for 1000-class models, whatever the model's own)."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import TinyNet, make_random_store, register_tiny

from advbg.data.labels import IN9_CLASSES
from advbg.data.store import Store
from advbg.errors import ModelError
from advbg.models.loading import load_classifier
from advbg.models.norm import NORMS
from advbg.search.config import SearchConfig
from advbg.search.runner import search

BUFFER_MEAN, BUFFER_STD = (0.1, 0.2, 0.3), (0.3, 0.2, 0.4)   # neither ImageNet's nor IN-9's


# A 1000-class model whose own pretrained statistics (0.5, 0.5) differ from ImageNet's, as lite0's do.
register_tiny("test/tiny1000-own-norm", lambda: TinyNet(1000, seed=2), weight_tag="seed2", std=(0.5,) * 3,
              class_names=None)


@pytest.fixture(scope="module")
def net():
    from advbg._compat import import_timm

    torch.manual_seed(0)
    return import_timm().create_model("test_resnet", pretrained=False, num_classes=9).eval()


def _robustness(sd: dict, mean, std) -> dict:
    stats = {"new_mean": torch.tensor(mean).view(3, 1, 1), "new_std": torch.tensor(std).view(3, 1, 1)}
    out = {f"module.normalizer.{k}": v for k, v in stats.items()}
    out.update({f"module.model.{k}": v for k, v in sd.items()})
    out.update({f"module.attacker.normalize.{k}": v for k, v in stats.items()})
    out.update({f"module.attacker.model.{k}": v for k, v in sd.items()})
    return {"model": out, "epoch": 1}


@pytest.fixture(scope="module")
def ckpts(net, tmp_path_factory):
    d = tmp_path_factory.mktemp("norm")
    sd = net.state_dict()
    torch.save(_robustness(sd, BUFFER_MEAN, BUFFER_STD), d / "robust.pt")
    torch.save(sd, d / "plain.pt")
    return d / "robust.pt", d / "plain.pt"


def _load(path, **kw):
    return load_classifier(str(path), arch="test_resnet", device="cpu", **kw)


def test_robustness_normalizer_buffers_are_applied(net, ckpts):
    clf = _load(ckpts[0])
    assert clf.config.mean == pytest.approx(BUFFER_MEAN) and clf.config.std == pytest.approx(BUFFER_STD)
    assert clf.config.norm_source == "checkpoint-normalizer"
    x = torch.rand(2, 3, clf.config.input_size[1], clf.config.input_size[2], generator=torch.Generator().manual_seed(1))
    m, s = torch.tensor(BUFFER_MEAN).view(1, 3, 1, 1), torch.tensor(BUFFER_STD).view(1, 3, 1, 1)
    with torch.no_grad():  # oracle: the reference's InputNormalize then the bare network
        assert torch.allclose(clf(x), net((x - m) / s), atol=1e-5)


def test_checkpoint_without_statistics_records_the_default(ckpts):
    clf = _load(ckpts[1])
    assert (clf.config.mean, clf.config.std) == NORMS["in9"] and clf.config.norm_source == "checkpoint-default"


def test_norm_option_overrides_the_buffers_and_says_so(ckpts):
    clf = _load(ckpts[0], norm="imagenet")
    assert (clf.config.mean, clf.config.std) == NORMS["imagenet"] and clf.config.norm_source == "option"


def test_reference_norm_is_imagenet_for_1000_class_models_whatever_their_own():
    own = load_classifier("test/tiny1000-own-norm", device="cpu")
    ref = load_classifier("test/tiny1000-own-norm", device="cpu", norm="reference")
    assert own.config.mean == (0.5,) * 3 and own.config.norm_source == "pretrained"
    assert (ref.config.mean, ref.config.std) == NORMS["imagenet"] and ref.config.norm_source == "reference"


def test_reference_norm_for_9_class_checkpoints_is_the_buffers_else_in9(ckpts):
    robust, plain = _load(ckpts[0], norm="reference"), _load(ckpts[1], norm="reference")
    assert robust.config.mean == pytest.approx(BUFFER_MEAN)
    assert (plain.config.mean, plain.config.std) == NORMS["in9"]


def test_run_record_says_which_statistics_were_used(ckpts, tmp_path):
    store = make_random_store(tmp_path / "s.h5")
    clf = _load(ckpts[0], class_names=IN9_CLASSES)
    with Store(store) as s:
        res = search(s, clf, SearchConfig(), write=False, progress=False)
    c = res.run.classifier
    assert c["norm_source"] == "checkpoint-normalizer" and tuple(c["mean"]) == pytest.approx(BUFFER_MEAN)


@pytest.mark.parametrize("meta", [{"mean": [0.5], "std": [0.2, 0.2, 0.2]}, {"mean": [0.5] * 3, "std": [0, 1, 1]},
                                  {"mean": "abc", "std": [1, 1, 1]}])
def test_bad_recorded_statistics_are_a_model_error(net, tmp_path, meta):
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata={"advbg": json.dumps(dict(architecture="test_resnet", **meta))})
    with pytest.raises(ModelError, match="normalisation"):
        load_classifier(str(path), device="cpu")


def test_bad_norm_option_is_a_model_error(ckpts):
    with pytest.raises(ModelError, match="reference"):
        _load(ckpts[1], norm="bogus")
