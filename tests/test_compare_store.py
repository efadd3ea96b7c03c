"""`advbg compare STORE` (#21 item 5): a row per complete search run of the store, equal to its results files
read here with plain h5py; Markdown, CSV and JSON; a store without results is one line and a non-zero exit."""
import json

import h5py
import numpy as np
import reference
from conftest import make_random_store, run_cli
from test_cards import _eval_file

from advbg.data.sidecar import sidecar_folder


def _assert_one_line_error(code, err, text):
    assert code != 0 and len(err.strip().splitlines()) == 1 and text in err, err


def _search(store, capsys, *extra):
    code, _, err = run_cli(["search", "--store", str(store), "--model", "test/tiny", "--grid", "-", "-q", *extra],
                           capsys)
    assert code == 0, err


def test_compare_store_rows_equal_the_results_files(tmp_path, capsys):
    store = make_random_store(tmp_path / "s.h5", n_fg=9, n_bg=12, seed=4)
    _search(store, capsys)
    _search(store, capsys, "--early-exit")
    _search(store, capsys, "--criterion", "bg-class")
    out = tmp_path / "t.json"
    code, printed, err = run_cli(["compare", str(store), "--out", str(out)], capsys)
    assert code == 0, err
    rows = {r["results"]: r for r in json.loads(out.read_text())["rows"]}
    files = sorted((sidecar_folder(store) / "results").glob("*.h5"))
    assert len(files) == 3 and set(rows) == {f.stem for f in files}
    for f in files:
        with h5py.File(f, "r") as h:
            first, run = h["first_fooling_bg"][()], json.loads(h.attrs["run"])
        k, n = int((first >= 0).sum()), len(first)
        row = rows[f.stem]
        lo, hi = reference.clopper_pearson(k, n)
        assert (row["fooling rate"]["k"], row["fooling rate"]["n"], row["n"]) == (k, n, n)
        assert np.isclose(row["fooling rate"]["low"], 100 * lo) and np.isclose(row["fooling rate"]["high"], 100 * hi)
        assert row["challenge accuracy"]["k"] == n - k
        assert row["composites"] == run["forwards"] and row["date"] == run["started"]
        assert row["mode"] == run["mode"]
    for fmt in ("md", "csv"):
        code, printed, err = run_cli(["compare", str(store), "--format", fmt], capsys)
        assert code == 0, err
        assert all(name in printed for name in rows)
    assert "fooling rate_low" in printed.splitlines()[0]


def test_compare_a_store_and_eval_files_in_markdown(tmp_path, capsys):
    store = make_random_store(tmp_path / "s.h5")
    _search(store, capsys)
    e = _eval_file(tmp_path)
    code, printed, err = run_cli(["compare", str(store), str(e)], capsys)
    assert code == 0, err
    assert "## Search runs: s.h5" in printed and "| m1 |" in printed
    code, _, err = run_cli(["compare", str(store), "--eval", str(e), "--format", "csv"], capsys)
    _assert_one_line_error(code, err, "one table")


def test_compare_a_store_without_results_is_one_line(tmp_path, capsys):
    store = make_random_store(tmp_path / "s.h5")
    code, _, err = run_cli(["compare", str(store)], capsys)
    _assert_one_line_error(code, err, "no complete search results")
    code, _, err = run_cli(["compare", str(tmp_path / "none.h5")], capsys)
    _assert_one_line_error(code, err, "does not exist")
