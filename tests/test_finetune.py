"""`advbg finetune`: a short CPU run writes a checkpoint that `advbg search --model CKPT` accepts."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from advbg.cli import main
from advbg.data.store import Store
from advbg.data.synth import SynthConfig, make_synthetic
from advbg.errors import AdvbgError
from advbg.models.checkpoints import read_state_dict
from advbg.models.loading import load_classifier
from advbg.search.results import load_search
from advbg.train.finetune import FinetuneConfig, _schedule, checkpoint_paths, finetune

ARCH = "test_resnet"     # timm's own tiny test model: random init, no download


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("synth") / "synth.h5",
                          SynthConfig(n_classes=3, n_per_class=8, image_size=32, seed=1))


def test_two_epoch_finetune_writes_a_checkpoint_that_loads_and_that_search_accepts(tiny_synth, tmp_path, capsys):
    res = finetune(ARCH, tiny_synth, tmp_path / "ck", FinetuneConfig(
        policy="mixed-rand", epochs=2, batch_size=8, pretrained=False, lr=3e-3), progress=False, echo=print)
    assert res.checkpoint == tmp_path / "ck.safetensors" and res.recipe_file == tmp_path / "ck.json"
    assert [h["epoch"] for h in res.history] == [1, 2] and all(np.isfinite(h["loss"]) for h in res.history)
    _, meta = read_state_dict(res.checkpoint)
    adv = json.loads(meta["advbg"])
    assert adv["architecture"] == ARCH and adv["num_outputs"] == 3 and adv["label_map"] == "identity"
    assert adv["class_names"] == ["circle", "square", "triangle"] and adv["input_size"] == [3, 32, 32]
    assert adv["recipe"]["policy"] == "mixed-rand" and adv["recipe"]["epochs"] == 2 and adv["recipe"]["steps"] == 6
    recipe = json.loads(res.recipe_file.read_text())
    assert recipe["recipe"] == adv["recipe"] and len(recipe["history"]) == 2

    clf = load_classifier(str(res.checkpoint))
    assert clf.config.class_names == ("circle", "square", "triangle") and clf.config.input_size == (3, 32, 32)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), res.model(x), rtol=1e-4, atol=1e-4)

    capsys.readouterr()
    main(["search", "--store", str(tiny_synth), "--model", str(res.checkpoint), "--results-name", "after",
          "--grid", "-", "--quiet"])
    assert "fooling rate" in capsys.readouterr().out
    with Store(tiny_synth) as s:
        r = load_search(s, "after")
        assert r.run.classifier["architecture"] == ARCH and r.run.classifier["weight_tag"] == "checkpoint"
        assert len(r) == 24


def test_cli_adversarial_finetune_on_exported_backgrounds_refreshes_weights_and_refuses_to_overwrite(
        tiny_synth, tmp_path, capsys):
    other = make_synthetic(tmp_path / "other.h5", SynthConfig(n_classes=3, n_per_class=2, image_size=32, seed=7))
    out = tmp_path / "adv.safetensors"
    args = ["finetune", "--model", ARCH, "--no-pretrained", "--store", str(tiny_synth), "--policy", "adversarial",
            "--backgrounds", str(other),
            "--epochs", "1", "--batch-size", "8", "--refresh-every", "1", "--optimizer", "sgd", "--lr", "0.01",
            "--out", str(out), "--quiet"]
    main(args)
    recipe = json.loads(checkpoint_paths(out)[1].read_text())["recipe"]
    assert recipe["policy"] == "adversarial" and recipe["optimizer"] == "sgd" and recipe["backgrounds"] == str(other)
    assert recipe["adversarial_refreshes"] == 3       # one before training, then after steps 1 and 2 (of 3)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 1 and "already exists; pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("kw, match", [(dict(policy="random"), "unknown policy"), (dict(epochs=0), "epochs"),
                                       (dict(optimizer="adam"), "optimizer"), (dict(amp="fp8"), "amp")])
def test_bad_recipes_are_refused_before_any_work(tiny_synth, tmp_path, kw, match):
    with pytest.raises(AdvbgError, match=match):
        finetune(ARCH, tiny_synth, tmp_path / "ck", FinetuneConfig(**kw))
    assert not any(tmp_path.iterdir())


def test_amp_on_cpu_is_refused_with_the_fix(tiny_synth, tmp_path):
    with pytest.raises(AdvbgError, match="needs CUDA"):
        finetune(ARCH, tiny_synth, tmp_path / "ck", FinetuneConfig(amp="bf16", pretrained=False), device="cpu")


def test_cosine_schedule_warms_up_then_decays_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = _schedule(opt, FinetuneConfig(warmup_steps=2), total=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:3] == [0.5, 1.0, 1.0] and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
