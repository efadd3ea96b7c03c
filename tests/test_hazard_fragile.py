"""Hazard: the fragile spots of issue 13 — a refused fetch leaves no folder, archive errors say what they are,
integer/bool tensors never load into a float model, and an export killed part-way is recovered on the next run."""
from __future__ import annotations

import os
import tarfile

import pytest
from conftest import make_random_store

from advbg.data.fetch import fetch_in9, safe_unpack
from advbg.errors import AdvbgError, ModelError


def test_refused_fetch_does_not_create_dest(tmp_path):
    with pytest.raises(AdvbgError, match="does not exist"):
        fetch_in9(tmp_path / "new", archive=tmp_path / "missing.tar.gz")
    (tmp_path / "junk.tar.gz").write_bytes(os.urandom(4096))
    with pytest.raises(AdvbgError, match="SHA-256 mismatch"):
        fetch_in9(tmp_path / "new2", archive=tmp_path / "junk.tar.gz", sha256="0" * 64)
    assert not (tmp_path / "new").exists() and not (tmp_path / "new2").exists()


def _archive(tmp_path):
    src = tmp_path / "src" / "bg_challenge"
    src.mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(300_000))
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as t:
        t.add(src, arcname="bg_challenge")
    return (tmp_path / "a.tar.gz").read_bytes()


def test_truncated_and_non_archives_are_told_apart(tmp_path):
    data = _archive(tmp_path)
    (tmp_path / "trunc.tar.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.tar.gz").write_bytes(os.urandom(5000))
    with pytest.raises(AdvbgError, match=r"ends early \(truncated\)") as e:
        safe_unpack(tmp_path / "trunc.tar.gz", tmp_path / "o1")
    assert "not a (compressed) tar" not in str(e.value)
    with pytest.raises(AdvbgError, match="not a \\(compressed\\) tar archive") as e:
        safe_unpack(tmp_path / "junk.tar.gz", tmp_path / "o2")
    assert "ends early" not in str(e.value)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("dtype", ["int32", "bool"])
def test_integer_or_bool_weights_are_refused(tmp_path, dtype):
    import json

    import torch
    from safetensors.torch import save_file

    from advbg._compat import import_timm
    from advbg.models.loading import load_classifier

    net = import_timm().create_model("test_resnet", pretrained=False, num_classes=9)
    sd = {k: (v.to(getattr(torch, dtype)) if v.is_floating_point() else v).contiguous()
          for k, v in net.state_dict().items()}
    save_file(sd, str(tmp_path / "m.safetensors"), metadata={"advbg": json.dumps({"architecture": "test_resnet"})})
    with pytest.raises(ModelError, match="integers or booleans"):
        load_classifier(str(tmp_path / "m.safetensors"), device="cpu")


@pytest.fixture
def searched(tmp_path):
    from conftest import make_tiny_classifier

    from advbg.data.store import Store
    from advbg.search.runner import search

    store = make_random_store(tmp_path / "s.h5")
    with Store(store, mode="r+") as s:
        search(s, make_tiny_classifier(), progress=False)
    return store


def test_export_killed_between_its_renames_gets_out_back(searched, tmp_path):
    from advbg.train.export import export

    out = tmp_path / "ex"
    export(searched, out)
    before = sorted(p.name for p in out.rglob("*"))
    os.replace(out, tmp_path / ".ex.old")                 # what a kill after the first rename leaves
    with pytest.raises(AdvbgError, match="not empty"):
        export(searched, out)                                 # no --overwrite: nothing replaced, out is back
    assert sorted(p.name for p in out.rglob("*")) == before
    assert not list(tmp_path.glob(".ex.old*"))


def test_partial_folders_of_killed_exports_are_removed(searched, tmp_path):
    from advbg.train.export import export

    stale = tmp_path / ".ex.partial"                      # what a kill while writing leaves
    (stale / "backgrounds").mkdir(parents=True)
    export(searched, tmp_path / "ex")
    assert not stale.exists() and (tmp_path / "ex" / "manifest.json").is_file()
