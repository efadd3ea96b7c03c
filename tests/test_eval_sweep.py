"""`advbg eval` as a model sweep: comma-separated --model, the sweep group, the accuracy-vs-ImageNet plot."""
import json

import pytest
from conftest import TinyNet
from conftest import run_cli as run
from test_evaluate import full_store

from advbg.analysis import evaluate as evaluate_mod
from advbg.analysis.evaluate import IN9_VARIANTS
from advbg.data.labels import IN9_CLASSES
from advbg.models import weights as model_weights


def _builder(seed: int):
    def build():
        return TinyNet(9, seed), dict(architecture="tinynet", weight_tag=f"seed{seed}", source="test",
                                      weights_file=None, weights_sha256=None, mean=(0.5,) * 3, std=(0.25,) * 3,
                                      input_size=(3, 32, 32), class_names=IN9_CLASSES)
    return build


@pytest.fixture(autouse=True)
def sweep_models(monkeypatch):
    for i in range(3):
        monkeypatch.setitem(model_weights._REGISTRY, f"test/sweep{i}", _builder(10 + i))


def _rows(out: str) -> list[str]:
    lines = out.splitlines()
    start = lines.index("top-1 accuracy (%):")
    return [ln.split()[0] for ln in lines[start + 2:] if ln.strip()][:3]


def test_comma_separated_and_repeated_models_give_one_row_each(tmp_path, capsys):
    store = full_store(tmp_path / "s.h5")
    code, out, err = run(["eval", "-s", str(store), "-m", "test/sweep0,test/sweep1", "-m", "test/sweep2",
                          "-V", "original", "--plot", "-", "-q"], capsys)
    assert code == 0, err
    assert _rows(out) == ["test/sweep0", "test/sweep1", "test/sweep2"]
    code, _, err = run(["eval", "-s", str(store), "-m", "test/sweep0,,", "-m", ",", "-V", "original", "-q"], capsys)
    assert code != 0 and "no model name" in err


def test_sweep_group_is_in9_plus_the_three_probes(tmp_path, capsys):
    store = full_store(tmp_path / "s.h5")
    code, _, err = run(["eval", "-s", str(store), "-m", "test/sweep0", "-V", "sweep", "--results-file",
                        str(tmp_path / "r.json"), "--plot", "-", "-q"], capsys)
    assert code == 0, err
    got = set(json.loads((tmp_path / "r.json").read_text())["variants"])
    assert got == set(IN9_VARIANTS) | {"fg_white", "bg_white", "bg_texture"}


def test_imagenet_plot_for_models_with_known_top1(tmp_path, capsys, monkeypatch):
    store = full_store(tmp_path / "s.h5")
    for i, acc in enumerate((70.0, 72.5, 75.0)):
        monkeypatch.setitem(evaluate_mod.IMAGENET_TOP1, f"test/sweep{i}", acc)
    code, out, err = run(["eval", "-s", str(store), "-m", "test/sweep2,test/sweep0,test/sweep1", "--baseline",
                          "test/sweep0", "-V", "paper,fg_white", "--results-file", str(tmp_path / "r.json"), "-q"],
                         capsys)
    assert code == 0, err
    assert "ImageNet-1k top-1" in out and "test/sweep1 72.50" in out
    png = tmp_path / "r.imagenet.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and f"accuracy vs ImageNet top-1: {png}" in out
    models = json.loads((tmp_path / "r.json").read_text())["models"]
    assert {m["model"]["name"]: m["model"]["imagenet_top1"] for m in models} == {
        "test/sweep0": 70.0, "test/sweep1": 72.5, "test/sweep2": 75.0}
    assert all(m["model"]["imagenet_top1_source"].startswith("timm results") for m in models)


def test_no_imagenet_plot_without_two_known_models(tmp_path, capsys, monkeypatch):
    store = full_store(tmp_path / "s.h5")
    monkeypatch.setitem(evaluate_mod.IMAGENET_TOP1, "test/sweep0", 70.0)
    code, out, err = run(["eval", "-s", str(store), "-m", "test/sweep0,test/sweep1", "-V", "original",
                          "--results-file", str(tmp_path / "r.json"), "-q"], capsys)
    assert code == 0, err
    assert not (tmp_path / "r.imagenet.png").exists()
    code, _, err = run(["eval", "-s", str(store), "-m", "test/sweep0,test/sweep1", "-V", "original",
                        "--imagenet-plot", str(tmp_path / "x.png"), "-q"], capsys)
    assert code == 1 and "needs at least two models with a known ImageNet top-1" in err
    assert not (tmp_path / "x.png").exists()


def test_registered_lite_models_have_their_timm_table_top1():
    assert evaluate_mod.IMAGENET_TOP1 == {"advbg/lite0": 74.830, "advbg/lite1": 76.644, "advbg/lite2": 77.464}


def test_negative_seed_is_one_line(tmp_path, capsys):
    store = full_store(tmp_path / "s.h5")
    code, _, err = run(["eval", "-s", str(store), "-m", "test/sweep0", "-V", "mixed_rand", "--seed", "-1"], capsys)
    assert code == 1 and err.startswith("advbg: error: seed must be a non-negative integer") and "Traceback" not in err
