"""`advbg refine` through the real CLI: the start from a stored (or fresh) search, the stored results read back
against the reference definitions, the headline, and one-line errors for bad input."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import reference as ref
import torch
import typer
from conftest import TinyNet, make_random_store
from conftest import assert_one_line_error as one_line_error
from conftest import run_cli as run

from advbg.models.loading import load_classifier
from advbg.models.weights import register


@register("test/refine-tiny")
def _tiny():
    return TinyNet(9), dict(architecture="tinynet", weight_tag="refine0", source="test", weights_file=None,
                            weights_sha256=None, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 32, 32),
                            class_names=("dog", "bird", "vehicle", "reptile", "carnivore", "insect", "instrument",
                                         "primate", "fish"))


NAME = "tinynet.refine0.any.exhaustive"
BUDGETS = "linf:2/255,8/255;photometric;min-eps:1/255,2/255,4/255,8/255"


def _refine(store, tmp_path, capsys, *extra):
    return run(["refine", "--store", str(store), "--budget", BUDGETS, "--steps", "5", "-q",
                "--results-file", str(tmp_path / "r.json"), "--curve", str(tmp_path / "c.png"),
                "--grid", str(tmp_path / "g.png"), *extra], capsys)


def test_refine_searches_first_then_stores_what_it_reports(tmp_path, capsys):
    store = make_random_store(tmp_path / "s.h5")
    code, out, err = _refine(store, tmp_path, capsys, "--model", "test/refine-tiny")
    assert code == 0, err
    assert "searching first" in err
    lines = out.splitlines()
    assert lines[0].startswith("real worst backgrounds: fooling rate ") and "/7) | " in lines[0] and "Clopper-Pearson" in lines[0]
    assert any(ln.startswith("linf:8/255: fooling rate ") for ln in lines)
    assert any(ln.startswith("min-eps: background robustness radius ") for ln in lines)
    for png in ("c.png", "g.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((tmp_path / "r.json").read_text())
    assert [b["budget"] for b in summary["budgets"]] == ["linf:2/255", "linf:8/255", "photometric", "min-eps"]

    clf = load_classifier("test/refine-tiny")
    table = ref.table_for("identity", 9)
    path = tmp_path / "s.h5.d" / "results" / f"{NAME}.refine.h5"
    with h5py.File(path, "r") as f, h5py.File(store, "r") as s:
        assert f.attrs["kind"] == "refine" and f.attrs["complete"] and f.attrs["search"] == NAME
        budgets = [b["name"] for b in json.loads(f.attrs["budgets"])]
        fg_id, start, budget = f["fg_id"][()], f["start_bg"][()], f["budget"][()]
        bg = f["background"][()]
        assert bg.dtype == np.uint8 and len(bg) == 4 * len(set(fg_id))
        fg, mask = s["foregrounds/image"][()][fg_id], s["foregrounds/mask"][()][fg_id]
        start_img = s["backgrounds/image"][()][start]
        with torch.no_grad():   # stored margins are those of the stored (lossless) backgrounds, by the reference
            logits = clf(torch.cat([ref.composite(a, m, b) for a, m, b in zip(fg, mask, bg)])).numpy()
        margin = [ref.margin(row, int(t), table) for row, t in zip(logits, f["true_class"][()])]
        np.testing.assert_allclose(f["margin_after"][()], margin, atol=1e-4)
        assert (f["margin_after"][()] <= f["margin_before"][()]).all()
        linf8 = budget == budgets.index("linf:8/255")
        assert np.abs(bg[linf8].astype(int) - start_img[linf8].astype(int)).max() <= 8
        real = f["fooled_before"][()][linf8]
        assert summary["real_worst"]["k"] == int(real.sum()) and summary["real_worst"]["n"] == int(linf8.sum())
    with h5py.File(tmp_path / "s.h5.d" / "results" / f"{NAME}.h5", "r") as g:   # the start is the search's worst
        assert np.array_equal(start[linf8], g["worst_bg"][()][np.searchsorted(g["fg_id"][()], fg_id[linf8])])


def test_a_stored_search_is_reused_and_gives_the_model(tmp_path, capsys):
    store = make_random_store(tmp_path / "s.h5")
    assert run(["search", "--store", str(store), "--model", "test/refine-tiny", "-q", "--grid", "-"], capsys)[0] == 0
    code, out, err = _refine(store, tmp_path, capsys)           # no --model: the stored search's classifier
    assert code == 0, err
    assert "searching first" not in err and f"search {NAME}" in out
    code, out2, err = _refine(store, tmp_path, capsys, "--model", "test/refine-tiny")
    assert code == 0 and "searching first" not in err
    assert out2.splitlines()[:5] == out.splitlines()[:5], "seeded: the same run gives the same headline"


def test_verify_accepts_a_store_with_refine_results(tmp_path, capsys):
    store = make_random_store(tmp_path / "s.h5")
    assert _refine(store, tmp_path, capsys, "--model", "test/refine-tiny")[0] == 0
    code, out, err = run(["verify", str(store)], capsys)
    assert code == 0, out + err
    assert f"{NAME}.refine.h5: refine, complete" in out


def test_help_documents_every_option(capsys):
    from advbg.cli import app

    command = typer.main.get_command(app).commands["refine"]
    code, out, _ = run(["refine", "--help"], capsys)
    assert code == 0
    for param in command.params:
        assert param.help, f"{param.name} has no help"
        assert param.opts[0] in out


def _no_mask_store(path, drop: bool):
    make_random_store(path)
    with h5py.File(path, "r+") as f:
        if drop:
            del f["foregrounds/mask"]
        else:
            f["foregrounds/mask"][...] = 0
    return path


@pytest.mark.parametrize("args, pattern", [
    (["--budget", "lp:2/255"], "unknown budget 'lp:2/255'"),
    (["--budget", "linf:0"], r"EPS must be in \(0, 1\]"),
    (["--budget", "linf:-2/255"], r"EPS must be in \(0, 1\]"),
    (["--budget", "linf:3"], r"EPS must be in \(0, 1\]"),
    (["--budget", "min-eps:0.5,0.1"], "must increase"),
    ([], "no complete stored search .* and no model"),
    (["--model", "test/refine-tiny", "--criterion", "most"], "unknown criterion"),
    (["--model", "test/refine-tiny", "--batch-size", "0"], "batch-size.*greater than or equal to 1"),
    (["--model", "test/refine-tiny", "--steps", "0"], "steps.*greater than or equal to 1"),
    (["--model", "test/refine-tiny", "--search", "nope"], "no search results named 'nope'"),
    (["--model", "test/refine-tiny", "--results-file", "x.txt"], "json"),
])
def test_bad_input_gets_one_line(tmp_path, capsys, args, pattern):
    store = make_random_store(tmp_path / "s.h5")
    code, _, err = run(["refine", "--store", str(store), "-q", *args], capsys)
    one_line_error(code, err, pattern)


@pytest.mark.parametrize("drop, pattern", [(True, "missing /foregrounds/mask"), (False, "empty mask")])
def test_a_store_without_masks_gets_one_line(tmp_path, capsys, drop, pattern):
    store = _no_mask_store(tmp_path / "s.h5", drop)
    code, _, err = run(["refine", "--store", str(store), "--model", "test/refine-tiny", "-q"], capsys)
    one_line_error(code, _errors_only(err), pattern)


def _errors_only(err: str) -> str:
    """stderr without the note that the search runs first (a note, not an error)."""
    return "\n".join(ln for ln in err.splitlines() if "searching first" not in ln)
