"""Traps a new user walked into (issue #24 items 10, 11, 12, 14, 15): no network wait for weights that are not
cached, the paper's ResNet-50 weights named, FAISS checked before any embedding, `universal --no-search` refusing
without claiming to compute, and `--norm reference` applying a checkpoint's own normalizer buffers.

No test here touches the network: "no network" is simulated by a socket layer that raises and counts attempts."""
from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, make_random_store, make_tiny_classifier
from conftest import run_cli as run
from reference import composite, in9_table, margin

from advbg.commands.search import headline
from advbg.data.sidecar import sidecar_folder
from advbg.data.store import Store
from advbg.errors import AdvbgError, ModelError
from advbg.models.loading import load_classifier
from advbg.search.config import SearchConfig
from advbg.search.criteria import Criterion
from advbg.search.runner import search


# --------------------------------------------------------------------------------------------- no network
@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Every DNS look-up and connect raises (and is counted); empty HF and torch hub caches; HF_HUB_OFFLINE unset."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError(101, "Network is unreachable (simulated)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torchhub"))
    yield attempts
    torch.hub.set_dir(old_hub)


def test_embedded_model_never_touches_the_network(no_network):
    clf = load_classifier("advbg/lite0", device="cpu")
    with torch.no_grad():
        out = clf(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (1, 1000) and no_network == []


def test_uncached_timm_weights_fail_at_once_in_one_line_when_the_hub_is_unreachable(no_network):
    with pytest.raises(ModelError) as e:
        load_classifier("test_resnet.r160_in1k", device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and "cannot be reached" in msg and "--weights" in msg
    assert len(no_network) <= 1, f"{len(no_network)} connection attempts: retries"


def test_uncached_timm_weights_with_hf_hub_offline_try_no_connection(no_network, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match="not in the local cache"):
        load_classifier("test_resnet.r160_in1k", device="cpu")
    assert no_network == []


def _fake_hf_cache(cache: Path, repo: str, sd: dict) -> Path:
    """What huggingface_hub leaves after one download: refs/main -> snapshots/<commit>/model.safetensors."""
    from safetensors.torch import save_file

    root = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(snap / "model.safetensors"))
    return snap / "model.safetensors"


def test_cached_timm_weights_load_without_any_connection(no_network, tmp_path):
    from advbg._compat import import_timm

    torch.manual_seed(3)
    net = import_timm().create_model("test_resnet", pretrained=False).eval()
    _fake_hf_cache(tmp_path / "hf", "timm/test_resnet.r160_in1k", net.state_dict())
    clf = load_classifier("test_resnet.r160_in1k", device="cpu")
    x = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    m, s = torch.tensor(clf.config.mean).view(1, 3, 1, 1), torch.tensor(clf.config.std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(clf(x), net((x - m) / s), atol=1e-5)
    assert no_network == [] and clf.config.weight_tag == "r160_in1k"


def test_a_pickle_in_the_cache_is_never_unpickled(no_network, tmp_path):
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    root = tmp_path / "hf" / "models--timm--test_resnet.r160_in1k"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("1" * 40)
    (root / "snapshots" / ("1" * 40)).mkdir(parents=True)
    (root / "snapshots" / ("1" * 40) / "pytorch_model.bin").write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(ModelError, match="refusing to load"):
        load_classifier("test_resnet.r160_in1k", device="cpu")
    assert not marker.exists() and no_network == []


def test_cached_weights_of_another_shape_are_named_not_called_a_failed_download(no_network, tmp_path):
    _fake_hf_cache(tmp_path / "hf", "timm/test_resnet.r160_in1k", {"fc.weight": torch.zeros(3, 3)})
    with pytest.raises(ModelError, match=r"cached weights .*model.safetensors do not load into 'test_resnet"):
        load_classifier("test_resnet.r160_in1k", device="cpu")
    assert no_network == []


def test_plain_resnet50_names_the_papers_weights_and_the_offline_way(no_network, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError) as e:
        load_classifier("resnet50", device="cpu", pretrained=True)
    msg = str(e.value)
    assert "resnet50.tv_in1k" in msg and "torchvision" in msg and "--weights" in msg and "\n" not in msg


def test_a_weight_tag_timm_does_not_have_is_named_without_a_connection(no_network):
    with pytest.raises(ModelError, match=r"timm has no pretrained weights named 'test_resnet.bogus'.*--filter"):
        load_classifier("test_resnet.bogus", device="cpu")
    assert no_network == []


def test_hub_probe_reports_why_and_succeeds_when_a_connection_opens(no_network, monkeypatch):
    from advbg.models import hub

    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert "huggingface.co:443" in hub.unreachable("https://huggingface.co") and len(no_network) == 1

    class Opened:
        def close(self):
            pass
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Opened())
    assert hub.unreachable("https://huggingface.co") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    seen = []
    monkeypatch.setattr(socket, "create_connection", lambda addr, **k: seen.append(addr) or Opened())
    assert hub.unreachable("https://huggingface.co") is None and seen == [("proxy.example", 3128)]


# --------------------------------------------------------------------------------------------- FAISS first
def test_index_without_faiss_refuses_before_any_embedding_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    path = make_random_store(tmp_path / "s.h5")
    before = path.read_bytes()
    monkeypatch.setitem(sys.modules, "faiss", None)      # `import faiss` raises ImportError
    import advbg.search.index as ix

    def never(*a, **k):
        raise AssertionError("embedding started before the FAISS check")
    monkeypatch.setattr(ix, "compute_embeddings", never)
    code, _, err = run(["index", "--store", str(path), "--model", "test/tiny", "--quiet"], capsys)
    assert_one_line_error(code, err, 'pip install "advbg\\[cpu\\]"')
    assert "-e" not in err.split("pip install", 1)[1]
    assert not sidecar_folder(path).exists() and path.read_bytes() == before


# --------------------------------------------------------------------------------------------- universal
def test_universal_no_search_refuses_once_without_saying_computing(tmp_path):
    from advbg.commands.universal import run_universal

    path = make_random_store(tmp_path / "s.h5", n_fg=6, n_bg=6)
    said: list[str] = []
    with pytest.raises(AdvbgError) as e:
        run_universal(store=path, model=make_tiny_classifier(), compute=False, top_png="-", hist_png="-",
                      progress=False, echo=said.append)
    assert "computing" not in str(e.value) and "--no-search" in str(e.value)
    assert not any("computing" in s or "composites" in s for s in said), said


# --------------------------------------------------------------------------------------------- fidelity
BUFFER_MEAN, BUFFER_STD = (0.2, 0.35, 0.5), (0.3, 0.15, 0.25)   # neither ImageNet's nor IN-9's


@pytest.fixture(scope="module")
def robust1000(tmp_path_factory):
    """A 1000-output checkpoint in the robustness library's layout, with its own normalizer buffers."""
    from advbg._compat import import_timm

    torch.manual_seed(5)
    net = import_timm().create_model("test_resnet", pretrained=False, num_classes=1000).eval()
    stats = {"new_mean": torch.tensor(BUFFER_MEAN).view(3, 1, 1), "new_std": torch.tensor(BUFFER_STD).view(3, 1, 1)}
    sd = {f"module.normalizer.{k}": v for k, v in stats.items()}
    sd.update({f"module.model.{k}": v for k, v in net.state_dict().items()})
    sd.update({f"module.attacker.normalize.{k}": v for k, v in stats.items()})
    sd.update({f"module.attacker.model.{k}": v for k, v in net.state_dict().items()})
    path = tmp_path_factory.mktemp("robust1000") / "robust1000.pt"
    torch.save({"model": sd, "epoch": 1}, path)
    return net, path


def test_reference_norm_on_a_1000_class_checkpoint_uses_its_buffers_like_the_reference(robust1000, tmp_path):
    net, ckpt = robust1000
    clf = load_classifier(str(ckpt), arch="test_resnet", device="cpu", norm="reference")
    assert clf.config.mean == pytest.approx(BUFFER_MEAN) and clf.config.std == pytest.approx(BUFFER_STD)
    size = clf.config.input_size[1]
    store = make_random_store(tmp_path / "s.h5", n_fg=3, n_bg=4, size=size, seed=4)
    with Store(store) as s:
        res = search(s, clf, SearchConfig(criterion="any", mode="exhaustive"), write=False, progress=False)
        fg, masks = s.foregrounds.read(slice(None)), s.foregrounds.read_masks(slice(None))
        bg, labels = s.backgrounds.read(slice(None)), np.asarray(s.foregrounds.labels)
    m, sd = torch.tensor(BUFFER_MEAN).view(1, 3, 1, 1), torch.tensor(BUFFER_STD).view(1, 3, 1, 1)
    table = in9_table()
    for i in range(len(fg)):   # the reference: its loader's InputNormalize (the buffers), then the bare network
        with torch.no_grad():
            worst = min(margin(net((composite(fg[i], masks[i], bg[j]) - m) / sd)[0].numpy(), int(labels[i]), table)
                        for j in range(len(bg)))
        assert res.worst_margin[i] == pytest.approx(float(worst), abs=1e-4)


def test_json_model_tag_of_a_checkpoint_is_the_tag_of_its_results_name(robust1000, tmp_path):
    _, ckpt = robust1000
    clf = load_classifier(str(ckpt), arch="test_resnet", device="cpu")
    store = make_random_store(tmp_path / "s.h5", n_fg=2, n_bg=2, size=clf.config.input_size[1])
    with Store(store, mode="r+") as s:
        res = search(s, clf, SearchConfig(criterion="any", mode="exhaustive"), progress=False)
    summary = res.summary()
    sha = clf.config.weights_sha256[:8]
    assert sha in summary["model_tag"]
    assert summary["results_name"] == f"{summary['model_tag']}.any.exhaustive"
    assert f"({summary['model_tag']}, label map" in headline(res, Criterion("any"))
    json.dumps(summary)
