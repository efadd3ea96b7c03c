"""Hazard: inputs that used to end in an internal error (a traceback's last line, exit 3) or ran for minutes. Each
is now one `advbg: error:` line and exit 1, before work where the input is an option, and no input is changed."""
from __future__ import annotations

import hashlib
import json

import h5py
import pytest
from conftest import assert_one_line_error, make_random_store, run_cli

from advbg.data.sidecar import sidecar_files


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def store(tmp_path):
    return make_random_store(tmp_path / "s.h5")


def _search(store, *extra):
    return ["search", "--store", str(store), "--model", "test/tiny", "-q", "--grid", "-", *extra]


def _one_line(capsys, args, pattern):
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, pattern)
    assert code == 1, err      # 3 would be an internal error


# --------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("extra, pattern", [
    (["--memory-gb", "inf"], "memory budget"),
    (["--device", "meta"], "cannot run a model"),
    (["--results-name", "."], "bad results name"),
    (["--results-name", ".."], "bad results name"),
    (["--results-name", "a\nb"], "control characters"),
    (["--results-name", "x" * 300], "shorter name|at most 200 bytes"),
    (["--results-file", "x" * 300 + ".json"], "shorter name|at most 200 bytes"),
    (["--grid", "x" * 300 + ".png"], "shorter name|at most 200 bytes"),
])
def test_bad_search_options_are_one_line(store, capsys, extra, pattern):
    before = digest(store)
    _one_line(capsys, _search(store, *extra), pattern)
    assert digest(store) == before


def test_journal_dir_that_is_a_file_is_one_line(store, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    _one_line(capsys, _search(store, "--journal-dir", str(tmp_path / "afile")), "not a folder")


@pytest.mark.parametrize("extra, pattern", [(["--seed", "-1"], "seed"), (["--blur-kernel", "100001"], "blur kernel")])
def test_bad_variant_options_are_refused_before_any_work(store, tmp_path, capsys, extra, pattern):
    _one_line(capsys, ["variants", "--store", str(store), "--out", str(tmp_path / "v.h5"), "-q", *extra], pattern)
    assert not list(tmp_path.glob("v.h5*"))


# --------------------------------------------------------------------------------------------- damaged stores
def test_corrupt_compressed_chunk_during_search_is_one_line(store, capsys):
    with h5py.File(store, "r") as f:
        info = f["backgrounds/image"].id.get_chunk_info(3)
    raw = bytearray(open(store, "rb").read())
    for i in range(info.byte_offset + 8, info.byte_offset + info.size - 8, 5):
        raw[i] ^= 0x5A
    open(store, "wb").write(bytes(raw))
    _one_line(capsys, _search(store, "--no-write"), "damaged")


def test_foreground_label_outside_the_classes_is_one_line(store, capsys):
    with h5py.File(store, "r+") as f:
        labels = f["foregrounds/label"][()]
        labels[0] = 99
        f["foregrounds/label"][...] = labels
    _one_line(capsys, _search(store, "--no-write"), "outside 0..8")


@pytest.fixture
def searched(store, capsys):
    code, _, err = run_cli(_search(store), capsys)
    assert code == 0, err
    name = next(iter(sidecar_files(store, "results")))
    return store, name


def _tamper(path, name, how):
    """Damage the results file of ``name`` (a sidecar beside the store; its root is the results group)."""
    with h5py.File(sidecar_files(path, "results")[name], "r+") as f:
        g = f
        if how == "short":
            d = g["worst_bg"][()]
            del g["worst_bg"]
            g["worst_bg"] = d[:3]
        elif how in ("fg_id", "bg_pool", "worst_bg"):
            d = g[how][()]
            d[0] = 1000
            g[how][...] = d
        elif how == "width":
            d = g["outcome"][()]
            del g["outcome"]
            g["outcome"] = d[:, :5]
        elif how == "run":
            g.attrs["run"] = "{not json"
        elif how == "run-list":
            g.attrs["run"] = "[1, 2]"


@pytest.mark.parametrize("how", ["short", "fg_id", "bg_pool", "worst_bg", "width", "run", "run-list"])
def test_tampered_results_are_one_line_in_export(searched, tmp_path, capsys, how):
    store, name = searched
    _tamper(store, name, how)
    _one_line(capsys, ["export", "--store", str(store), "--out", str(tmp_path / "ex")], "damaged")
    assert not (tmp_path / "ex").exists()


@pytest.mark.parametrize("how", ["fg_id", "bg_pool", "width", "run", "run-list"])
def test_tampered_outcomes_are_not_reused_by_universal(searched, capsys, how):
    """A damaged group is never read as an outcome matrix: with --no-search it is missing, so one line."""
    store, name = searched
    _tamper(store, name, how)
    _one_line(capsys, ["universal", "--store", str(store), "--model", "test/tiny", "-q", "--no-search",
                       "--top-png", "-", "--hist-png", "-"], "no stored outcome matrix")


# --------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def state_dict():
    import torch

    from advbg._compat import import_timm

    torch.manual_seed(0)
    net = import_timm().create_model("test_resnet", pretrained=False, num_classes=9)
    return {k: v.contiguous() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("meta, pattern", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"architecture": 5}), "architecture must be"),
    (json.dumps({"architecture": "test_resnet", "mean": [0.5], "std": [0.2]}), "3 means"),
    (json.dumps({"architecture": "test_resnet", "input_size": [3, -4, 32]}), "input_size"),
])
def test_bad_checkpoint_metadata_is_one_line(store, state_dict, tmp_path, capsys, meta, pattern):
    from safetensors.torch import save_file

    ck = tmp_path / "m.safetensors"
    save_file(state_dict, str(ck), metadata={"advbg": meta})
    _one_line(capsys, ["search", "--store", str(store), "--model", str(ck), "-q", "--grid", "-", "--no-write"],
              pattern)


def test_bad_sidecar_json_of_a_pt_checkpoint_is_one_line(store, state_dict, tmp_path, capsys):
    import torch

    torch.save(state_dict, tmp_path / "m.pt")
    (tmp_path / "m.json").write_text("[1]")
    _one_line(capsys, ["search", "--store", str(store), "--model", str(tmp_path / "m.pt"), "-q", "--grid", "-",
                       "--no-write"], "not a JSON object")
