"""Checkpoints in the robustness-library layout (the reference release's): every tensor matched, or refused."""
import json

import pytest
import torch
from test_evaluate import full_store, run
from torch import nn

from advbg.errors import ModelError
from advbg.models.checkpoints import normalize_state_dict_keys
from advbg.models.loading import load_classifier
from advbg.models.norm import NORMS

IMAGENET_MEAN, IMAGENET_STD = NORMS["imagenet"]


def robustness_layout(sd: dict) -> dict:
    """What robustness.train saves: DataParallel(AttackerModel) weights plus optimiser state and epoch."""
    stats = {"new_mean": torch.tensor(IMAGENET_MEAN).view(3, 1, 1), "new_std": torch.tensor(IMAGENET_STD).view(3, 1, 1)}
    model = {f"module.normalizer.{k}": v for k, v in stats.items()}
    model.update({f"module.model.{k}": v for k, v in sd.items()})
    model.update({f"module.attacker.normalize.{k}": v for k, v in stats.items()})
    model.update({f"module.attacker.model.{k}": v for k, v in sd.items()})
    return {"model": model, "epoch": 90, "schedule": None,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]}}


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    """A random-weight 9-class timm resnet18: (state dict, plain .pt, robustness-layout .pt)."""
    from advbg._compat import import_timm

    torch.manual_seed(0)
    net = import_timm().create_model("resnet18", pretrained=False, num_classes=9).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrongly loaded buffer changes the logits
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    d = tmp_path_factory.mktemp("ckpt")
    sd = net.state_dict()
    torch.save(sd, d / "plain.pt")
    torch.save(robustness_layout(sd), d / "robust.pt")
    return sd, d / "plain.pt", d / "robust.pt"


def test_robustness_checkpoint_matches_every_tensor_and_gives_the_plain_logits(resnet18):
    sd, plain, robust = resnet18
    a = load_classifier(str(robust), arch="resnet18", norm="imagenet")
    b = load_classifier(str(plain), arch="resnet18", norm="imagenet")
    rep = a.model.checkpoint_keys
    assert rep.complete and rep.matched == rep.expected == len(sd) and rep.renamed == len(sd)
    assert len(rep.ignored) == 4 + len(sd)        # 2 normaliser + 2 attacker normaliser + the attacker's weights
    assert rep.normalizer == {"mean": pytest.approx(list(IMAGENET_MEAN)), "std": pytest.approx(list(IMAGENET_STD))}
    assert rep.summary().startswith(f"{len(sd)}/{len(sd)} tensors matched")
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(a(x), b(x))
    assert a.config.num_outputs == 9 and a.config.weights_sha256 != b.config.weights_sha256


def test_dataparallel_state_dict_wrapper_and_absent_step_counters_load(resnet18, tmp_path):
    sd, _, _ = resnet18
    kept = {f"module.{k}": v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": kept}, tmp_path / "dp.pt")
    clf = load_classifier(str(tmp_path / "dp.pt"), arch="resnet18")
    rep = clf.model.checkpoint_keys
    assert rep.complete and rep.matched == len(sd) and rep.filled and "absent optional buffers" in rep.summary()
    assert clf.config.mean == NORMS["in9"][0]      # 9-class checkpoint: the IN-9 statistics by default


def test_checkpoint_whose_keys_match_nothing_is_refused(resnet18, tmp_path):
    sd, _, _ = resnet18
    torch.save({"model": {f"backbone.{k}": v for k, v in sd.items()}}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="does not fit architecture 'resnet18': none of its tensors match"):
        load_classifier(str(tmp_path / "other.pt"), arch="resnet18")


def test_partial_or_oversized_checkpoints_are_refused(resnet18, tmp_path):
    sd, _, _ = resnet18
    part = robustness_layout({k: v for k, v in sd.items() if k != "layer1.0.conv1.weight"})
    torch.save(part, tmp_path / "part.pt")
    with pytest.raises(ModelError, match="1 of the .* architecture tensors are missing .*layer1.0.conv1.weight"):
        load_classifier(str(tmp_path / "part.pt"), arch="resnet18")
    extra = robustness_layout(dict(sd, **{"layer1.2.conv1.weight": sd["layer1.0.conv1.weight"]}))
    torch.save(extra, tmp_path / "extra.pt")      # e.g. a resnet34 checkpoint loaded as resnet18
    with pytest.raises(ModelError, match="1 checkpoint tensors match nothing .*layer1.2.conv1.weight"):
        load_classifier(str(tmp_path / "extra.pt"), arch="resnet18")


def test_key_matching_never_strips_a_prefix_the_architecture_uses():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Linear(2, 2)          # the architecture's own keys start with "model."
            self.head = nn.Linear(2, 1)

    net = Wrapped()
    sd = {"module.model.weight": net.model.weight, "module.model.bias": net.model.bias,
          "module.model.head.weight": net.head.weight, "module.model.head.bias": net.head.bias,
          "module.normalizer.new_mean": torch.zeros(3, 1, 1)}
    out, rep = normalize_state_dict_keys(sd, net)
    assert set(out) == {"model.weight", "model.bias", "head.weight", "head.bias"} and rep.complete
    assert len(rep.ignored) == 1


def test_eval_reports_matched_tensors_and_pins_the_checkpoint(resnet18, tmp_path, capsys):
    _, _, robust = resnet18
    store = full_store(tmp_path / "s.h5")
    code, out, err = run(["eval", "--store", str(store), "-m", str(robust), "--arch", "resnet18", "--norm", "in9",
                          "-V", "original", "--results-file", str(tmp_path / "r.json"), "--plot", "-", "-q"], capsys)
    assert code == 0, err
    ident = json.loads((tmp_path / "r.json").read_text())["models"][0]["model"]
    assert ident["checkpoint_keys"]["matched"] == ident["checkpoint_keys"]["expected"] > 0
    assert ident["weights_sha256"] and ident["source"] == "checkpoint" and ident["mean"] == list(NORMS["in9"][0])
    assert "tensors matched" in out and ident["weights_sha256"][:16] in out
