"""Hazard: an output path that is one of the command's inputs (the store, the checkpoint), a symbolic link, or not a
regular file (FIFO, device). Writing there would replace the data set or what the link points to; every command
refuses such a path in one line before any work, and every input stays byte for byte as it was."""
from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest
from conftest import assert_one_line_error, make_random_store, run_cli

from advbg.errors import AdvbgError
from advbg.files import check_output


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def store(tmp_path):
    return make_random_store(tmp_path / "s.h5")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 9-class timm test_resnet checkpoint (.safetensors with its architecture in the advbg metadata)."""
    import torch
    from safetensors.torch import save_file

    from advbg._compat import import_timm

    torch.manual_seed(0)
    net = import_timm().create_model("test_resnet", pretrained=False, num_classes=9).eval()
    path = tmp_path_factory.mktemp("ckpt") / "net.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata={"advbg": json.dumps({"architecture": "test_resnet", "input_size": [3, 32, 32]})})
    return path


def _search(store, *extra):
    return ["search", "--store", str(store), "--model", "test/tiny", "-q", *extra]


def test_results_file_equal_to_the_store_is_refused_and_the_store_kept(store, capsys):
    before = digest(store)
    code, _, err = run_cli(_search(store, "--results-file", str(store)), capsys)
    assert_one_line_error(code, err, "is an input of this command")
    assert digest(store) == before


def test_results_file_equal_to_the_store_by_another_name_is_refused(store, tmp_path, capsys):
    os.link(store, tmp_path / "hard.h5")
    code, _, err = run_cli(_search(store, "--results-file", str(tmp_path / "hard.h5")), capsys)
    assert_one_line_error(code, err, "is an input of this command")


def test_results_file_equal_to_the_checkpoint_is_refused(store, checkpoint, capsys):
    before = digest(checkpoint)
    code, _, err = run_cli(["search", "--store", str(store), "--model", str(checkpoint), "-q", "--results-file",
                            str(checkpoint)], capsys)
    assert_one_line_error(code, err, "is an input of this command")
    assert digest(checkpoint) == before


def test_results_file_through_a_symlink_is_refused_and_the_target_kept(store, tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "link.json").symlink_to(target)
    code, _, err = run_cli(_search(store, "--results-file", str(tmp_path / "link.json")), capsys)
    assert_one_line_error(code, err, "symbolic link")
    assert (tmp_path / "link.json").is_symlink() and target.read_text() == "keep me"


def test_grid_through_a_symlink_is_refused(store, tmp_path, capsys):
    (tmp_path / "link.png").symlink_to(tmp_path / "elsewhere.png")
    code, _, err = run_cli(_search(store, "--grid", str(tmp_path / "link.png")), capsys)
    assert_one_line_error(code, err, "symbolic link")
    assert (tmp_path / "link.png").is_symlink() and not (tmp_path / "elsewhere.png").exists()


def test_results_file_on_a_fifo_is_refused_and_stays_a_fifo(store, tmp_path, capsys):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    code, _, err = run_cli(_search(store, "--results-file", str(fifo)), capsys)
    assert_one_line_error(code, err, "not a regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_device_node_is_refused_before_any_work():
    with pytest.raises(AdvbgError, match="not a regular file"):
        check_output("/dev/null")


def test_universal_results_file_equal_to_the_store_is_refused(tmp_path, capsys):
    store = make_random_store(tmp_path / "s.csv")   # a store named like a results file: only the input check is left
    before = digest(store)
    code, _, err = run_cli(["universal", "--store", str(store), "--model", "test/tiny", "-q",
                            "--results-file", str(store)], capsys)
    assert_one_line_error(code, err, "is an input of this command")
    assert digest(store) == before


def test_eval_results_file_equal_to_the_store_is_refused(store, capsys):
    before = digest(store)
    code, _, err = run_cli(["eval", "--store", str(store), "--model", "test/tiny", "-q", "--variants", "original",
                            "--results-file", str(store)], capsys)
    assert_one_line_error(code, err, "is an input of this command")
    assert digest(store) == before


def test_plot_onto_its_own_input_is_refused(tmp_path, capsys):
    src = tmp_path / "r.png"
    src.write_text("{}")
    code, _, err = run_cli(["plot", str(src), "--out", str(src)], capsys)
    assert_one_line_error(code, err, "is an input of this command")
    assert src.read_text() == "{}"


def test_variants_out_equal_to_its_store_is_refused_even_with_overwrite(store, capsys):
    before = digest(store)
    code, _, err = run_cli(["variants", "--store", str(store), "--out", str(store), "--format", "h5",
                            "--variants", "original", "--overwrite", "-q"], capsys)
    assert_one_line_error(code, err, "is an input of this command")
    assert digest(store) == before


def test_export_out_holding_the_store_is_refused_even_with_overwrite(store, tmp_path, capsys):
    code, _, err = run_cli(_search(store, "--grid", "-"), capsys)
    assert code == 0, err
    before = digest(store)
    code, _, err = run_cli(["export", "--store", str(store), "--out", str(tmp_path), "--overwrite"], capsys)
    assert_one_line_error(code, err, "is an input of this command")
    assert digest(store) == before


def test_finetune_out_equal_to_its_checkpoint_is_refused(store, checkpoint, capsys):
    before = digest(checkpoint)
    code, _, err = run_cli(["finetune", "--model", str(checkpoint), "--store", str(store), "--out",
                            str(checkpoint), "--overwrite", "--epochs", "1", "-q"], capsys)
    assert_one_line_error(code, err, "is an input of this command")
    assert digest(checkpoint) == before


def test_synth_out_through_a_symlink_is_refused(tmp_path, capsys):
    (tmp_path / "link.h5").symlink_to(tmp_path / "target.h5")
    code, _, err = run_cli(["synth", "--out", str(tmp_path / "link.h5"), "--overwrite"], capsys)
    assert_one_line_error(code, err, "symbolic link")
    assert not (tmp_path / "target.h5").exists()


def test_a_symlink_at_the_default_grid_path_is_refused_before_the_search(store, tmp_path, capsys):
    """No --grid: the grid's default name (beside the store, from the results name) is checked before any work."""
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    default = tmp_path / f"{store.stem}.tinynet.seed0.any.exhaustive.worst.png"
    default.symlink_to(target)
    code, _, err = run_cli(["search", "--store", str(store), "--model", "test/tiny", "-q"], capsys)
    assert_one_line_error(code, err, "symbolic link|symlink")
    assert target.read_text() == "keep me" and default.is_symlink()
    assert not (tmp_path / f"{store.name}.d" / "results").exists(), "the search ran before the refusal"


def test_a_symlink_at_universals_default_png_is_refused_before_any_work(store, tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / f"{store.stem}.universal.all.bg-class.hist.png").symlink_to(target)
    code, _, err = run_cli(["universal", "--store", str(store), "--model", "test/tiny", "-q"], capsys)
    assert_one_line_error(code, err, "symbolic link|symlink")
    assert target.read_text() == "keep me"
    assert not (tmp_path / f"{store.name}.d" / "results").exists(), "universal searched before the refusal"


def test_saliency_and_report_outputs_equal_to_their_inputs_are_refused(store, tmp_path, capsys):
    """Every command that writes guards its inputs, saliency and report included: the store survives."""
    before = digest(store)
    code, _, err = run_cli(["saliency", "--store", str(store), "--model", "test/tiny", "--results-file", str(store),
                            "-q"], capsys)
    assert_one_line_error(code, err, "input")
    evals = tmp_path / "eval.html"          # an eval file with the page's suffix: only the input check refuses it
    evals.write_text("{}")
    code, _, err = run_cli(["report", "--store", str(store), "--eval", str(evals), "--out", str(evals)], capsys)
    assert_one_line_error(code, err, "input")
    assert digest(store) == before and evals.read_text() == "{}"


# --------------------------------------------------------------------------------------------- inside an input folder
# `advbg extract PHOTOS --masks MASKS --out PHOTOS/cat/p0.jpg --overwrite` replaced the photo with a store (#24 item 1)
def _photos_and_masks(tmp_path):
    import numpy as np
    from fixtures_data import save_png

    rng = np.random.default_rng(5)
    photos, masks = tmp_path / "photos", tmp_path / "masks"
    for stem in ("p0", "p1"):
        save_png(photos / "cat" / f"{stem}.png", rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
        m = np.zeros((24, 24), np.uint8)
        m[6:18, 6:18] = 255
        save_png(masks / "cat" / f"{stem}.png", m)
    return photos, masks


def _tree(root) -> dict:
    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["a photo", "a mask", "a new store in a photo folder", "a new store in the masks"])
def test_extract_output_inside_an_input_folder_is_refused_even_with_overwrite(where, tmp_path, capsys):
    photos, masks = _photos_and_masks(tmp_path)
    out = {"a photo": photos / "cat" / "p0.png", "a mask": masks / "cat" / "p1.png",
           "a new store in a photo folder": photos / "cat" / "s.h5", "a new store in the masks": masks / "s.h5"}[where]
    before = _tree(tmp_path)
    code, _, err = run_cli(["extract", str(photos), "--masks", str(masks), "--out", str(out), "--overwrite",
                            "--workers", "1", "-q"], capsys)
    assert_one_line_error(code, err, "inside the input folder")
    assert _tree(tmp_path) == before


def test_extract_store_output_must_end_in_h5(tmp_path, capsys):
    photos, masks = _photos_and_masks(tmp_path)
    code, _, err = run_cli(["extract", str(photos), "--masks", str(masks), "--out", str(tmp_path / "s.jpg"),
                            "--workers", "1", "-q"], capsys)
    assert_one_line_error(code, err, r"must end in \.h5")
    assert not (tmp_path / "s.jpg").exists()
    code, _, err = run_cli(["synth", "--out", str(tmp_path / "s.png")], capsys)
    assert_one_line_error(code, err, r"must end in \.h5")
    code, _, err = run_cli(["variants", "--out", str(tmp_path / "v.png"), "--format", "h5", "-q"], capsys)
    assert_one_line_error(code, err, r"must end in \.h5")


def test_extract_beside_its_inputs_still_works(tmp_path, capsys):
    photos, masks = _photos_and_masks(tmp_path)
    code, _, err = run_cli(["extract", str(photos), "--masks", str(masks), "--out", str(tmp_path / "s.h5"),
                            "--resize", "0", "--crop", "24", "--workers", "1", "-q"], capsys)
    assert code == 0, err
    assert (tmp_path / "s.h5").is_file()


def test_check_output_refuses_any_path_under_a_folder_input_links_followed(tmp_path):
    """The one check every writer (extract, ingest, variants, export, finetune, synth) calls with its inputs."""
    (tmp_path / "in" / "deep").mkdir(parents=True)
    with pytest.raises(AdvbgError, match="inside the input folder"):
        check_output(tmp_path / "in" / "deep" / "x.h5", inputs=[tmp_path / "in"])
    (tmp_path / "alias").symlink_to(tmp_path / "in")
    with pytest.raises(AdvbgError, match="inside the input folder"):
        check_output(tmp_path / "alias" / "x.h5", inputs=[tmp_path / "in"])
    check_output(tmp_path / "x.h5", inputs=[tmp_path / "in"])            # beside the folder: fine
    check_output(tmp_path / "in" / "x.h5", inputs=[tmp_path / "in.h5"])  # a file input holds nothing
