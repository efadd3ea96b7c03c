"""Reruns never lose work (#21 item 2): the same run's complete results are reused without a forward pass, an
interrupted run is resumed by default, --restart says what it drops, --recompute keeps the old file until the new
one is complete, other settings never share a results file, and an existing JSON summary or grid PNG is replaced
only by the same run or with --overwrite. Plus the journal's clean-up order (#24 item 9)."""
import json

import numpy as np
import pytest
from PIL import Image
from conftest import assert_one_line_error, make_random_store, make_tiny_classifier, run_cli

from advbg.data.sidecar import sidecar_folder
from advbg.data.store import Store
from advbg.search import journal as journal_mod
from advbg.search.config import SearchConfig
from advbg.search.journal import Journal, journal_folder
from advbg.search.results import FIELDS, load_search
from advbg.search.runner import search

NAME = "r"


@pytest.fixture
def store(tmp_path):
    return make_random_store(tmp_path / "s.h5", n_fg=8, n_bg=6, seed=21)


def args(path, *extra):
    return ["search", "--store", str(path), "--model", "test/tiny", "--results-name", NAME, "--fg-block", "2",
            "--batch-size", "8", "-q", *extra]


def results_file(path):
    return sidecar_folder(path) / "results" / f"{NAME}.h5"


def interrupt_after(n):
    seen = []

    def hook(_):
        seen.append(1)
        if len(seen) == n:
            raise KeyboardInterrupt
    return hook


def api(path, **kw):
    with Store(path, "r+") as s:
        return search(s, make_tiny_classifier(), SearchConfig(fg_block=2, batch_size=8), results_name=NAME,
                      progress=False, **kw)


def columns(path):
    with Store(path) as s:
        r = load_search(s, NAME)
    return {k: getattr(r, k) for k in FIELDS}


def same(a, b):
    return all(np.array_equal(a[k], b[k], equal_nan=True) for k in FIELDS)


# --------------------------------------------------------------------------------------------- reuse
def test_complete_results_are_reused_without_a_forward_and_the_stored_headline_printed(store, forwards, capsys):
    rc, out1, _ = run_cli(args(store), capsys)
    assert rc == 0 and forwards
    before = results_file(store).read_bytes()
    forwards.clear()
    rc, out2, err = run_cli(args(store), capsys)
    assert rc == 0, err
    assert forwards == []                                           # no composite evaluated
    assert "reusing the complete results 'r'" in err and "--recompute" in err
    assert out2.splitlines()[0] == out1.splitlines()[0]              # the stored headline, word for word
    assert results_file(store).read_bytes() == before                # the file is not even rewritten


def test_recompute_computes_again_and_keeps_the_old_file_until_the_new_one_is_complete(store, forwards, capsys):
    api(store)
    want, before = columns(store), results_file(store).read_bytes()
    forwards.clear()
    with pytest.raises(KeyboardInterrupt):                           # a failure mid-way through the recompute
        api(store, recompute=True, on_unit=interrupt_after(2))
    assert forwards and results_file(store).read_bytes() == before   # the old file intact
    assert same(columns(store), want)
    forwards.clear()
    rc, _, err = run_cli(args(store, "--recompute"), capsys)         # continues the interrupted recompute
    assert rc == 0, err
    assert "resuming the interrupted search of 'r': 2 committed unit(s)" in err
    assert forwards and results_file(store).read_bytes() != before   # replaced once complete
    assert same(columns(store), want)
    assert not journal_folder(store, NAME).exists()


# --------------------------------------------------------------------------------------------- resume / restart
def test_interrupted_run_is_resumed_by_default(store, forwards, capsys):
    ref = make_random_store(store.with_name("ref.h5"), n_fg=8, n_bg=6, seed=21)
    api(ref)
    with pytest.raises(KeyboardInterrupt):
        api(store, on_unit=interrupt_after(3))
    forwards.clear()
    rc, _, err = run_cli(args(store), capsys)                        # no --resume
    assert rc == 0, err
    assert "resuming the interrupted search of 'r': 3 committed unit(s)" in err
    assert sum(forwards) == 2 * 6                                    # only the last unit: 2 foregrounds x 6 backgrounds
    assert same(columns(store), columns(ref))
    with Store(store) as s:
        assert load_search(s, NAME).run.resumed_units == 3


def test_resume_flag_is_still_accepted(store, capsys):
    with pytest.raises(KeyboardInterrupt):
        api(store, on_unit=interrupt_after(1))
    rc, _, err = run_cli(args(store, "--resume"), capsys)
    assert rc == 0 and "resuming" in err, err
    rc, _, err = run_cli(args(store, "--resume", "--restart"), capsys)
    assert_one_line_error(rc, err, "contradict")


def test_restart_discards_the_interrupted_run_saying_how_many_units(store, forwards, capsys):
    with pytest.raises(KeyboardInterrupt):
        api(store, on_unit=interrupt_after(3))
    forwards.clear()
    rc, _, err = run_cli(args(store, "--restart"), capsys)
    assert rc == 0, err
    assert "--restart: dropping 3 committed unit(s)" in err
    assert sum(forwards) == 8 * 6                                    # everything again
    with Store(store) as s:
        assert load_search(s, NAME).run.resumed_units == 0


# --------------------------------------------------------------------------------------------- other settings
def test_other_settings_never_share_a_results_file(store, forwards, capsys):
    rc, _, _ = run_cli(args(store), capsys)
    before = results_file(store).read_bytes()
    forwards.clear()
    for other in (["--criterion", "bg-class"], ["--verify-close", "0.5"]):
        rc, _, err = run_cli(args(store, *other), capsys)
        assert_one_line_error(rc, err, r"holds another run.*--recompute replaces it.*--results-name")
        assert forwards == [] and results_file(store).read_bytes() == before
    with Store(store, "r+") as s:                                    # another foreground selection, same default name
        with pytest.raises(Exception, match="holds another run"):
            search(s, make_tiny_classifier(), SearchConfig(fg_block=2, foregrounds=[0, 1, 2]), results_name=NAME,
                   progress=False)
    rc, _, err = run_cli(args(store, "--criterion", "bg-class", "--recompute"), capsys)
    assert rc == 0, err
    with Store(store) as s:
        assert "bg-class" in load_search(s, NAME).run.criterion


def test_interrupted_run_of_other_settings_is_refused_not_dropped(store, capsys):
    with pytest.raises(KeyboardInterrupt):
        api(store, on_unit=interrupt_after(2))
    capsys.readouterr()                                   # what the interrupted API run said
    rc, _, err = run_cli(args(store, "--criterion", "bg-class"), capsys)
    assert_one_line_error(rc, err, r"other settings.*2 committed unit\(s\).*--restart discards it")
    assert Journal(journal_folder(store, NAME)).units() == 2


# --------------------------------------------------------------------------------------------- outputs
def test_json_and_png_are_replaced_only_by_the_same_run_or_with_overwrite(store, tmp_path, forwards, capsys):
    summary, png = tmp_path / "sum.json", tmp_path / "grid.png"
    out = ["--results-file", str(summary), "--grid", str(png)]
    rc, _, err = run_cli(args(store, *out), capsys)
    assert rc == 0, err
    rc, _, err = run_cli(args(store, *out), capsys)                  # the same run: reused, outputs redrawn
    assert rc == 0, err
    for path, flag in ((summary, "--results-file"), (png, "--grid")):
        if path.suffix == ".json":                                   # someone else's file
            path.write_text(json.dumps({"advbg-run": "another run"}))
        else:
            Image.new("RGB", (4, 4)).save(path)
        mine = path.read_bytes()
        forwards.clear()
        rc, _, err = run_cli(args(store, *out), capsys)
        assert_one_line_error(rc, err, f"{flag} {path} exists and was not written by this same search.*--overwrite")
        assert path.read_bytes() == mine and forwards == []          # untouched, refused before any work
        rc, _, err = run_cli(args(store, *out, "--overwrite"), capsys)
        assert rc == 0, err
        assert path.read_bytes() != mine
    rc, _, err = run_cli(args(store, *out, "--criterion", "bg-class", "--results-name", "other"), capsys)
    assert_one_line_error(rc, err, "exists and was not written by this same search")
    assert json.loads(summary.read_text())["advbg-run"]


def test_default_grid_of_another_run_is_not_replaced(store, capsys):
    rc, _, err = run_cli(args(store, "--results-name", "a"), capsys)
    png = store.with_name(f"{store.stem}.a.worst.png")
    assert rc == 0 and png.exists(), err
    png.write_bytes(b"not the picture this run drew")
    rc, _, err = run_cli(args(store, "--results-name", "a"), capsys)
    assert_one_line_error(rc, err, "--grid .* exists and was not written by this same search")


# --------------------------------------------------------------------------------------------- journal clean-up
def test_kill_while_the_journal_is_deleted_leaves_nothing_that_looks_interrupted(store, forwards, monkeypatch, capsys):
    """#24 item 9: a kill half-way through deleting the finished journal; the rerun sees the complete results."""
    real = journal_mod.shutil.rmtree

    def killed_half_way(folder, ignore_errors=False):
        files = sorted(p for p in __import__("pathlib").Path(folder).iterdir())
        for p in files[:len(files) // 2]:
            p.unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(journal_mod.shutil, "rmtree", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        api(store)
    monkeypatch.setattr(journal_mod.shutil, "rmtree", real)
    assert not journal_folder(store, NAME).exists()                  # renamed away before deletion began
    forwards.clear()
    rc, _, err = run_cli(args(store), capsys)
    assert rc == 0, err
    assert forwards == [] and "reusing" in err
    assert not list(store.parent.glob(f"{store.name}.{NAME}.journal*"))   # the leftover is cleaned up


def test_kill_after_the_merge_before_the_clean_up_reuses_the_results(store, forwards, monkeypatch, capsys):
    real = Journal.remove

    def killed(self):
        if self.run() is not None:      # the finished journal's clean-up, not a fresh run's start
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(Journal, "remove", killed)
    with pytest.raises(KeyboardInterrupt):
        api(store)
    monkeypatch.undo()
    assert Journal(journal_folder(store, NAME)).run() is not None    # a finished journal, already merged
    forwards.clear()
    rc, _, err = run_cli(args(store), capsys)
    assert rc == 0, err
    assert forwards == [] and "reusing" in err and "interrupted" not in err
    assert not journal_folder(store, NAME).exists()
