"""Hazard: hostile or broken checkpoints. Code hidden in a pickle never runs; a misfit is a clear one-line error."""
from __future__ import annotations

import pickle

import pytest
import torch
from conftest import assert_one_line_error as one_line_error
from conftest import make_random_store
from conftest import run_cli as run

from advbg.errors import ModelError
from advbg.models.loading import load_classifier


class Evil:
    """Unpickling this creates ``marker`` (a file open, no shell needed): proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickles(tmp_path, marker):
    """The same payload in every container torch users meet: raw pickle, torch.save zip, nested in a dict."""
    raw = tmp_path / "evil.pt"
    raw.write_bytes(pickle.dumps({"model": Evil(marker)}))
    zipped = tmp_path / "evil_zip.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "extra": Evil(marker)}, zipped)
    assert not marker.exists()  # saving does not unpickle
    return [raw, zipped]


def test_hostile_pickle_is_refused_by_load_classifier_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    for path in _pickles(tmp_path, marker):
        with pytest.raises(ModelError, match="refusing to load .*not a plain tensor checkpoint"):
            load_classifier(str(path), arch="resnet18")
        assert not marker.exists(), path.name


def test_hostile_pickle_is_refused_by_the_search_cli_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    store = make_random_store(tmp_path / "s.h5")
    before = store.read_bytes()
    for path in _pickles(tmp_path, marker):
        code, _, err = run(["search", "--store", str(store), "--model", str(path), "--arch", "resnet18",
                            "--grid", "-", "-q"], capsys)
        one_line_error(code, err, "refusing to load")
        assert not marker.exists(), path.name
    assert store.read_bytes() == before


def test_hostile_pickle_given_as_timm_weights_never_runs(tmp_path, capsys):
    """--weights is read like any checkpoint (weights_only): refused with the real reason, the payload never runs."""
    marker = tmp_path / "pwned"
    store = make_random_store(tmp_path / "s.h5")
    for path in _pickles(tmp_path, marker):
        code, _, err = run(["search", "--store", str(store), "--model", "resnet18", "--weights", str(path),
                            "--grid", "-", "-q"], capsys)
        one_line_error(code, err, "refusing to load")
        assert not marker.exists(), path.name


def test_timm_weights_file_loads_through_the_safe_reader(tmp_path):
    """A plain state dict given with --weights loads into the timm architecture, pinned by its SHA-256."""
    import torch

    from advbg._compat import import_timm
    from advbg.files import sha256_file
    from advbg.models.loading import load_classifier

    net = import_timm().create_model("resnet18", pretrained=False)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "w.pth")
    clf = load_classifier("resnet18.tv_in1k", weights=str(tmp_path / "w.pth"))
    assert clf.config.weight_tag == "tv_in1k" and clf.config.weights_sha256 == sha256_file(tmp_path / "w.pth")
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(clf.model(x), net.eval()(x), atol=1e-5)


def _resnet18_sd():
    from advbg._compat import import_timm

    return import_timm().create_model("resnet18", pretrained=False, num_classes=9).state_dict()


def test_safetensors_with_wrong_shapes_is_a_clear_error(tmp_path, capsys):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in _resnet18_sd().items()}
    sd["conv1.weight"] = torch.zeros(64, 3, 5, 5)  # resnet18's stem is 7x7
    path = tmp_path / "bad.safetensors"
    save_file(sd, path)
    with pytest.raises(ModelError, match=r"does not fit architecture 'resnet18'.*conv1\.weight"):
        load_classifier(str(path), arch="resnet18")
    store = make_random_store(tmp_path / "s.h5")
    code, _, err = run(["search", "--store", str(store), "--model", str(path), "--arch", "resnet18", "--grid", "-",
                        "-q"], capsys)
    one_line_error(code, err, "does not fit architecture 'resnet18'")


def test_safetensors_with_missing_tensors_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in _resnet18_sd().items() if not k.startswith("layer4")}
    save_file(sd, tmp_path / "part.safetensors")
    with pytest.raises(ModelError, match="resnet18"):
        load_classifier(str(tmp_path / "part.safetensors"), arch="resnet18")


@pytest.mark.parametrize("payload", [b"", b"\xff" * 8 + b"{", (10**15).to_bytes(8, "little") + b"{}"],
                         ids=["empty", "garbage-header", "header-length-claims-a-petabyte"])
def test_malformed_safetensors_is_refused(tmp_path, payload):
    (tmp_path / "m.safetensors").write_bytes(payload)
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_classifier(str(tmp_path / "m.safetensors"), arch="resnet18")
