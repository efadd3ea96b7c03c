"""Hazard: a damaged results file is never used. `advbg verify` reports it, and every reader (load_search,
load_outcome, universal, export, report) refuses it in one line, by the same rules (search.results.rules); bit rot is
caught by the fletcher32 checksum on every dataset; the sidecar folder and the names in it are checked."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from conftest import assert_one_line_error as one_line_error
from conftest import make_random_store, make_tiny_classifier
from conftest import run_cli as run

from advbg.data.sidecar import sidecar_folder
from advbg.data.store import Store
from advbg.errors import StoreError
from advbg.search.config import SearchConfig
from advbg.search.results import load_outcome, load_search, verify_all
from advbg.search.runner import search

NAME = "tiny.any.exhaustive"      # advbg's own naming pattern: <model>.<criterion>.<mode>


@pytest.fixture
def cli_model(monkeypatch):
    from advbg.models.loading import ModelSpec

    clf = make_tiny_classifier()
    monkeypatch.setattr(ModelSpec, "load", lambda spec: clf)
    return clf


@pytest.fixture
def searched(tmp_path, cli_model):
    """A store with one complete exhaustive search (outcomes recorded) named as advbg names it."""
    path = make_random_store(tmp_path / "s.h5", n_fg=7, n_bg=11)
    with Store(path, "r+") as s:
        search(s, cli_model, SearchConfig(fg_block=2), results_name=NAME, progress=False)
    return path


def _file(store, name=NAME):
    return sidecar_folder(store) / "results" / f"{name}.h5"


def _problems(store) -> list[str]:
    return verify_all(store).problems


def _refused_by_every_reader(store, tmp_path, capsys, pattern: str, outcome: bool = True) -> None:
    with Store(store) as s, pytest.raises(StoreError, match=pattern):
        load_search(s, NAME)
    if outcome:
        with Store(store) as s, pytest.raises(StoreError, match=pattern):
            load_outcome(s, NAME)
    code, _, err = run(["export", "--store", str(store), "--results", NAME, "--out", str(tmp_path / "exp")], capsys)
    one_line_error(code, err, pattern)
    assert not (tmp_path / "exp").exists()
    code, _, err = run(["report", "--store", str(store), "--out", str(tmp_path / "r.html"), "-q"], capsys)
    one_line_error(code, err, "damaged")
    assert not (tmp_path / "r.html").exists()


# --------------------------------------------------------------------------------------------- item 2
def test_an_outcome_matrix_of_invalid_values_is_refused_by_every_reader(searched, tmp_path, capsys):
    with h5py.File(_file(searched), "r+") as f:
        f["outcome"][...] = 200                   # not a class (9 classes) nor an OUTCOME_* code
    assert any("outcome holds 77 value(s)" in p for p in _problems(searched))
    _refused_by_every_reader(searched, tmp_path, capsys, "outcome holds 77 value")
    code, out, err = run(["universal", "--store", str(searched), "--model", "tiny", "--no-search", "-q"], capsys)
    one_line_error(code, err, "rerun without --no-search")
    assert "skipped stored outcomes" in out and "outcome holds 77" in out      # said, never used


def test_datasets_all_cut_to_fewer_foregrounds_are_reported_and_refused(searched, tmp_path, capsys):
    with h5py.File(_file(searched), "r+") as f:      # every per-foreground dataset cut consistently: 5 of 7
        for k in [k for k in f if k != "bg_pool"]:
            data = f[k][()]
            del f[k]
            f.create_dataset(k, data=data[:5])
    want = f"s.h5.d/results/{NAME}.h5 has 5 foreground rows but its run searched 7: its datasets were cut"
    assert want in _problems(searched)
    _refused_by_every_reader(searched, tmp_path, capsys, "its run searched 7")


def test_a_search_over_a_foreground_selection_is_not_a_cut(tmp_path, cli_model):
    path = make_random_store(tmp_path / "s.h5", n_fg=7, n_bg=5)
    with Store(path, "r+") as s:
        search(s, cli_model, SearchConfig(foregrounds=(1, 4, 6)), results_name="sel", progress=False)
    assert verify_all(path).ok
    with Store(path) as s:
        assert len(load_search(s, "sel")) == 3


# --------------------------------------------------------------------------------------------- item 3
def _flip(path, dataset: str, chunk: int = 0, at: int = 3) -> None:
    """Flip two bytes inside the stored data of ``dataset`` (its chunk ``chunk``), nothing else."""
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        offset = ds.id.get_offset() if ds.chunks is None else ds.id.get_chunk_info(chunk).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + at)
        two = bytearray(fh.read(2))
        fh.seek(offset + at)
        fh.write(bytes(b ^ 0x5A for b in two))


def test_every_results_and_embeddings_dataset_carries_a_checksum(searched, cli_model):
    from advbg.search.index import build_index

    with Store(searched, "r+") as s:
        build_index(s, cli_model, progress=False)
    for kind in ("results", "embeddings"):
        for p in (sidecar_folder(searched) / kind).glob("*.h5"):
            with h5py.File(p) as f:
                assert [k for k in f if not f[k].fletcher32] == [], p
    assert not any("no checksum" in line for line in verify_all(searched).lines)


@pytest.mark.parametrize("dataset", ["worst_margin", "first_fooling_bg"])
def test_bit_rot_in_a_results_dataset_is_refused_and_reported(searched, tmp_path, capsys, dataset):
    _flip(_file(searched), dataset)
    problems = _problems(searched)
    assert any(NAME in p and "damaged" in p and "checksum" in p.lower() for p in problems), problems
    _refused_by_every_reader(searched, tmp_path, capsys, "checksum")


def test_bit_rot_in_the_outcome_matrix_is_skipped_by_universal_and_reported(searched, capsys):
    _flip(_file(searched), "outcome", chunk=1, at=1)
    assert any(NAME in p and "damaged" in p for p in _problems(searched))
    code, out, err = run(["universal", "--store", str(searched), "--model", "tiny", "--no-search", "-q"], capsys)
    one_line_error(code, err, "rerun without --no-search")
    assert "skipped stored outcomes" in out


def test_bit_rot_in_embeddings_is_one_line(searched, cli_model):
    from advbg.search.index import build_index, load_embeddings

    with Store(searched, "r+") as s:
        build_index(s, cli_model, progress=False)
    path = next((sidecar_folder(searched) / "embeddings").glob("*.h5"))
    _flip(path, "bg_scores")
    with Store(searched) as s, pytest.raises(StoreError, match="damaged.*rerun `advbg index`"):
        load_embeddings(s, cli_model)
    assert any(path.name in p and "damaged" in p for p in _problems(searched))


def test_results_written_without_checksums_still_read_and_verify_says_so(searched):
    old = _file(searched, "old")
    with h5py.File(_file(searched)) as src, h5py.File(old, "w") as dst:     # as earlier builds wrote them
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        dst.attrs["name"] = "old"
        for k in src:
            dst.create_dataset(k, data=src[k][()])
    report = verify_all(searched)
    assert report.ok, report.problems
    assert any(line.startswith("s.h5.d/results/old.h5: no checksum on ") for line in report.lines)
    with Store(searched) as s:
        assert np.array_equal(load_search(s, "old").worst_margin, load_search(s, NAME).worst_margin)


# --------------------------------------------------------------------------------------------- item 4
@pytest.mark.parametrize("key", ["worst_bg", "first_fooling_bg"])
@pytest.mark.parametrize("value", [11, -2])
def test_a_background_id_out_of_range_is_reported_and_refused(searched, key, value):
    with h5py.File(_file(searched), "r+") as f:
        f[key][1] = value
    assert f"s.h5.d/results/{NAME}.h5/{key} outside -1..10" in _problems(searched)
    with Store(searched) as s, pytest.raises(StoreError, match=f"{key} outside"):
        load_search(s, NAME)


@pytest.mark.parametrize("record", ["{not json", "[1, 2]"])
def test_a_run_record_that_is_not_json_is_reported_and_refused(searched, record):
    with h5py.File(_file(searched), "r+") as f:
        f.attrs["run"] = record
    assert any(p.startswith(f"s.h5.d/results/{NAME}.h5 has a run record that is not JSON")
               for p in _problems(searched))
    with Store(searched) as s, pytest.raises(StoreError, match="not JSON"):
        load_search(s, NAME)


def test_a_result_renamed_to_another_criterion_is_reported(searched):
    other = _file(searched, "tiny.bg-class.early-exit")
    os.rename(_file(searched), other)
    problems = _problems(searched)
    assert any("was written as results 'tiny.any.exhaustive': it was renamed" in p and
               "the run record says criterion any, mode exhaustive" in p for p in problems), problems
    with Store(searched) as s, pytest.raises(StoreError, match="renamed"):
        load_search(s, "tiny.bg-class.early-exit")


def test_a_recorded_mode_that_disagrees_with_the_run_record_is_reported(searched):
    with h5py.File(_file(searched), "r+") as f:
        f.attrs["mode"] = "early-exit"
    assert f"s.h5.d/results/{NAME}.h5: attribute mode='early-exit' but the run record says 'exhaustive'" \
        in _problems(searched)


@pytest.mark.parametrize("what", ["folder", "fifo", "device", "dangling"])
def test_a_results_path_that_is_no_file_is_reported(searched, what):
    p = _file(searched, "odd")
    if what == "folder":
        p.mkdir()
    elif what == "fifo":
        os.mkfifo(p)
    elif what == "device":
        p.symlink_to("/dev/null")
    else:
        p.symlink_to(p.parent / "gone.h5")
    problems = _problems(searched)
    word = {"folder": "is a folder", "fifo": "is not a regular file", "device": "is not a regular file",
            "dangling": "is a dangling link"}[what]
    assert any(p.startswith(f"s.h5.d/results/odd.h5 {word}") for p in problems), problems


@pytest.mark.parametrize("what", ["file", "loop", "fifo", "dangling"])
def test_an_unusable_sidecar_folder_is_reported(tmp_path, what):
    store = make_random_store(tmp_path / "s.h5", n_fg=3, n_bg=3)
    d = sidecar_folder(store)
    if what == "file":
        d.write_text("x")
    elif what == "loop":
        d.symlink_to(d)
    elif what == "fifo":
        os.mkfifo(d)
    else:
        d.symlink_to(tmp_path / "gone")
    report = verify_all(store)                      # must not raise
    assert not report.ok
    word = {"file": "is not a folder", "loop": "is unusable", "fifo": "is not a folder", "dangling": "dangling link"}
    assert any(str(d) in p and word[what] in p for p in report.problems), report.problems


def test_an_intact_search_verifies_and_reads(searched):
    report = verify_all(searched)
    assert report.ok, report.problems
    with Store(searched) as s:
        r = load_search(s, NAME)
        o, _, _ = load_outcome(s, NAME)
    assert len(r) == 7 and o.shape == (7, 11)
    assert json.loads(h5py.File(_file(searched))["/"].attrs["run"])["config"]["mode"] == "exhaustive"
