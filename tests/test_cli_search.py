"""`advbg search` through the real CLI: outputs, and one-line errors for bad input."""
import json
import pickle

import h5py
import numpy as np
import pytest
from conftest import assert_one_line_error as one_line_error
from conftest import make_random_store
from conftest import run_cli as run

from advbg.data.store import Store


def test_search_writes_results_json_and_grid(tmp_path, capsys):
    store = make_random_store(tmp_path / "s.h5")
    code, out, err = run(["search", "--store", str(store), "--model", "test/tiny", "--results-file",
                          str(tmp_path / "r.json"), "--grid", str(tmp_path / "g.png"), "-q"], capsys)
    assert code in (0, None), err
    assert "fooling rate" in out and "challenge accuracy" in out and "criterion any" in out
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["criterion"].startswith("Criterion('any'") and summary["n_foregrounds"] == 7
    assert summary["run"]["classifier"]["weight_tag"] == "seed0"
    assert len(summary["foregrounds"]) == 7
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    with Store(store) as s:
        assert s.results["tinynet.seed0.any.exhaustive"].attrs["complete"]


def test_help_documents_every_option(capsys):
    code, out, _ = run(["search", "--help"], capsys)
    assert code in (0, None)
    for opt in ("--store", "--model", "--criterion", "--early-exit", "--batch-size", "--label-map",
                "--results-file", "--grid", "--resume", "--device", "--amp"):
        assert opt in out


def _bad_mask_store(path):
    make_random_store(path)
    with h5py.File(path, "r+") as f:
        del f["foregrounds/mask"]
        f.create_dataset("foregrounds/mask", data=np.zeros((7, 16, 16), np.uint8))
    return path


def _empty_store(path):
    from advbg.data.writer import write_store

    return write_store(path, class_names=["a"], fg_images=np.zeros((0, 8, 8, 3), np.uint8),
                       fg_masks=np.zeros((0, 8, 8)), fg_labels=[], bg_images=np.zeros((2, 8, 8, 3), np.uint8),
                       bg_labels=[0, 0])


def _pickle_ckpt(path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path.write_bytes(pickle.dumps({"model": Evil()}))
    return path


@pytest.mark.parametrize("case,pattern", [
    ("missing", r"does not exist"),
    ("not-hdf5", r"not an HDF5 file"),
    ("bad-mask", r"masks have shape .* must match"),
    ("empty", r"0 foregrounds .* at least one of each"),
    ("unknown-model", r"unknown model 'resnet5O'; did you mean"),
    ("offline-weights", r"not available offline .*--weights PATH"),
    ("pickle-ckpt", r"refusing to load"),
    ("label-map", r"label map 'identity' gives 1000 classes but the store has 9"),
    ("batch-0", r"batch size must be at least 1"),
    ("bad-criterion", r"unknown criterion 'foo'"),
])
def test_bad_input_gets_one_line_and_no_output(tmp_path, capsys, case, pattern):
    store = tmp_path / "s.h5"
    args = ["--model", "test/tiny"]
    if case == "missing":
        store = tmp_path / "nope.h5"
    elif case == "not-hdf5":
        store.write_text("hello")
    elif case == "bad-mask":
        _bad_mask_store(store)
    elif case == "empty":
        _empty_store(store)
    else:
        make_random_store(store)
    if case == "unknown-model":
        args = ["--model", "resnet5O"]
    elif case == "offline-weights":
        args = ["--model", "resnet18.a1_in1k"]
    elif case == "pickle-ckpt":
        args = ["--model", str(_pickle_ckpt(tmp_path / "evil.pt")), "--arch", "resnet18"]
    elif case == "label-map":
        args = ["--model", "resnet18", "--weights", str(_resnet18_weights(tmp_path)), "--label-map", "identity"]
    elif case == "batch-0":
        args += ["--batch-size", "0"]
    elif case == "bad-criterion":
        args += ["--criterion", "foo"]
    results = tmp_path / "r.json"
    code, out, err = run(["search", "--store", str(store), *args, "--results-file", str(results), "-q"], capsys)
    one_line_error(code, err, pattern)
    assert not results.exists()
    assert not list(tmp_path.glob("*.partial*"))


def _resnet18_weights(tmp_path):
    import torch

    from advbg._compat import import_timm

    path = tmp_path / "r18.pth"
    torch.save(import_timm().create_model("resnet18", pretrained=False).state_dict(), path)
    return path
