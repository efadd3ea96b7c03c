"""Hazard: a store corrupted on disk or edited behind advbg's back. `advbg verify` detects it; opening a broken
file fails with one line (never a traceback)."""
from __future__ import annotations

import re
import shutil

import h5py
import numpy as np
import pytest
from conftest import assert_one_line_error as one_line_error
from conftest import make_random_store
from conftest import run_cli as run

from advbg.data.sidecar import sidecar_folder
from advbg.data.store import Store
from advbg.search.results import verify_all
from advbg.errors import AdvbgError, StoreError
from advbg.search.config import SearchConfig
from advbg.search.runner import search


@pytest.fixture
def store(tmp_path):
    return make_random_store(tmp_path / "s.h5")


def test_intact_store_verifies_with_schema_counts_and_exit_0(store, capsys):
    code, out, err = run(["verify", str(store), "-q"], capsys)
    assert code == 0, err
    assert "schema 1" in out and "foregrounds: 7, checksums verified 7/7" in out
    assert "backgrounds: 11, checksums verified 11/11" in out and out.strip().endswith("is intact")


@pytest.mark.parametrize("where,fg_id,name", [("foregrounds/image", 3, "foreground 3 ('photo3')"),
                                             ("foregrounds/mask", 5, "foreground 5 ('photo5')"),
                                             ("backgrounds/image", 8, "background 8 ('photo8')")])
def test_silently_changed_pixels_are_caught_by_their_checksum(store, capsys, where, fg_id, name):
    with h5py.File(store, "r+") as f:  # plain h5py: the stored checksum is not updated
        ds = f[where]
        item = ds[fg_id]
        item.flat[17] ^= 1
        ds[fg_id] = item
    code, out, err = run(["verify", str(store), "-q"], capsys)
    problems = [ln for ln in out.splitlines() if ln.startswith("PROBLEM")]
    assert len(problems) == 1 and f"{name}: checksum mismatch" in problems[0]
    one_line_error(code, err, r"1 problem\(s\) in .*s\.h5")


def test_bit_rot_inside_a_compressed_chunk_is_detected(store):
    with h5py.File(store, "r") as f:
        info = f["foregrounds/image"].id.get_chunk_info(2)
    with open(store, "r+b") as fh:  # flip bytes in the middle of foreground 2's gzip stream
        fh.seek(info.byte_offset + info.size // 2)
        chunk = bytearray(fh.read(8))
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(b ^ 0xFF for b in chunk))
    report = verify_all(store)
    assert not report.ok
    assert len(report.problems) == 1 and report.problems[0].startswith("foreground 2 ('photo2')")
    assert re.search("cannot be decoded|checksum mismatch", report.problems[0])


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_store_fails_to_open_with_one_line_for_verify_and_search(store, capsys, keep):
    data = store.read_bytes()
    store.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(StoreError, match="not a readable advbg store"):
        Store(store)
    for args in (["verify", str(store), "-q"],
                 ["search", "--store", str(store), "--model", "test/tiny", "--grid", "-", "-q"]):
        code, out, err = run(args, capsys)
        one_line_error(code, err, r"not a readable advbg store.*truncated")


def test_labels_outside_the_class_list_and_bad_mask_values_are_problems(store):
    with h5py.File(store, "r+") as f:
        f["backgrounds/label"][4] = 9
        m = f["foregrounds/mask"][1]
        m[m > 0] = 255
        f["foregrounds/mask"][1] = m
    problems = verify_all(store).problems
    assert any("background 4 ('photo4') has label 9, outside -1..8" in p for p in problems)
    assert any("foreground 1 ('photo1'): checksum mismatch" in p for p in problems)  # the mask bytes changed


def test_mask_values_other_than_0_1_are_a_problem_even_with_a_matching_checksum(store):
    from advbg.data.store import item_checksum

    with h5py.File(store, "r+") as f:
        m = f["foregrounds/mask"][2] * 255
        f["foregrounds/mask"][2] = m
        f["foregrounds/checksum"][2] = item_checksum(f["foregrounds/image"][2], m)
    assert verify_all(store).problems == ["foreground 2 ('photo2') has mask values other than 0/1"]


def test_items_added_after_completion_change_the_recorded_counts(store):
    with h5py.File(store, "r+") as f:
        for k in ("image", "label", "source_id", "checksum"):
            ds = f[f"backgrounds/{k}"]
            ds.resize(ds.shape[0] - 1, axis=0)
    problems = verify_all(store).problems
    assert problems == ["/backgrounds holds 10 items but the store recorded 11 when it was completed (items added "
                        "or removed afterwards)"]


def test_empty_and_full_masks_are_flagged_not_failed(store):
    with h5py.File(store, "r+") as f:  # rewrite two items consistently (checksums updated): legal but odd
        from advbg.data.store import item_checksum

        for i, value in ((0, 0), (6, 1)):
            m = np.full(f["foregrounds/mask"].shape[1:], value, np.uint8)
            f["foregrounds/mask"][i] = m
            f["foregrounds/checksum"][i] = item_checksum(f["foregrounds/image"][i], m)
    report = verify_all(store)
    assert report.ok
    assert any("masks flagged: 1 empty (fg_id 0), 1 whole-image (fg_id 6)" in ln for ln in report.lines)


# --------------------------------------------------------------------------------------------- result groups
def _search(store, tiny_classifier, **kw):
    with Store(store, "r+") as s:
        return search(s, tiny_classifier, SearchConfig(fg_block=2), results_name="r", progress=False, **kw)


def _results_file(store, name="r"):
    return sidecar_folder(store) / "results" / f"{name}.h5"


def test_complete_search_results_verify_with_all_units_done(store, tiny_classifier):
    _search(store, tiny_classifier)
    report = verify_all(store)
    assert report.ok and "s.h5.d/results/r.h5: search, complete, 7/7 foregrounds done" in report.lines


def test_interrupted_search_never_leaves_results_that_read_as_complete(store, tiny_classifier):
    calls = []

    def stop(_):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _search(store, tiny_classifier, on_unit=stop)
    from advbg.search.results import load_search

    with Store(store) as s, pytest.raises(AdvbgError, match="no complete search results"):
        load_search(s)
    assert not _results_file(store).exists()          # units are journalled; no results file until the end
    assert verify_all(store).ok


def test_results_file_edited_to_incomplete_is_a_problem(store, tiny_classifier, capsys):
    _search(store, tiny_classifier)
    with h5py.File(_results_file(store), "r+") as f:  # by hand: advbg never leaves such a file at this name
        f.attrs["complete"] = False
        f["done"][4:] = 0
    report = verify_all(store)
    assert "s.h5.d/results/r.h5: search, INCOMPLETE, 4/7 foregrounds done" in report.lines
    assert report.problems == ["s.h5.d/results/r.h5 is incomplete (its write was interrupted); finish it (`advbg "
                               "search --resume` with the same settings) or delete it"]
    code, out, err = run(["verify", str(store), "-q"], capsys)
    one_line_error(code, err, "1 problem")


def test_results_on_other_store_content_and_forged_completion_are_problems(store, tiny_classifier):
    _search(store, tiny_classifier)
    r, r2 = _results_file(store), _results_file(store, "r2")
    shutil.copyfile(r, r2)
    with h5py.File(r, "r+") as f:
        f["done"][3] = 0                  # marked complete, one unit not done
    with h5py.File(r2, "r+") as f:
        f["fg_id"][0] = 99                # ids that point past the store's items
        del f["n_fooling"]
        f.create_dataset("n_fooling", data=np.zeros(3, np.int64))
    with h5py.File(_results_file(store, "alien"), "w") as f:
        f.create_dataset("x", data=[1])   # no completion flag
    with h5py.File(store, "r+") as f:     # results of an earlier advbg inside the store file
        f.create_group("results/legacy").create_dataset("x", data=[1])
    problems = verify_all(store).problems
    assert "s.h5.d/results/r2.h5: fg_id outside 0..6" in problems
    assert "s.h5.d/results/r2.h5/n_fooling has 3 rows for 7 foregrounds" in problems
    assert "s.h5.d/results/r.h5 is marked complete but only 6/7 units are done" in problems
    assert any(p.startswith("s.h5.d/results/alien.h5 has no completion flag") for p in problems)
    assert any(p.startswith("/results/legacy has no completion flag") for p in problems)
    with h5py.File(store, "r+") as f:
        f["foregrounds/label"][0] = (f["foregrounds/label"][0] + 1) % 9   # the store's content changed under it
    problems = verify_all(store).problems
    assert any(p.startswith("s.h5.d/results/r.h5 was computed on other store content") for p in problems)
    with Store(store) as s:
        assert "r" not in s.results       # readers never see results of other store content


def test_outcome_matrix_of_the_wrong_width_is_a_problem(store, tiny_classifier):
    _search(store, tiny_classifier)
    with h5py.File(_results_file(store), "r+") as f:
        o = f["outcome"][()]
        del f["outcome"]
        f.create_dataset("outcome", data=np.concatenate([o, o[:, :1]], axis=1))   # 12 columns for 11 backgrounds
    assert verify_all(store).problems == ["s.h5.d/results/r.h5/outcome has shape (7, 12); it must be (7, 11) "
                                            "foregrounds x pool backgrounds"]


@pytest.mark.parametrize("value,bad", [(200, True), (9, True), (8, False), (254, False), (255, False)])
def test_outcome_values_beyond_the_classes_are_a_problem(store, tiny_classifier, value, bad):
    _search(store, tiny_classifier)
    with h5py.File(_results_file(store), "r+") as f:
        f["outcome"][2, 5] = value
    problems = verify_all(store).problems
    assert problems == (["s.h5.d/results/r.h5/outcome holds 1 value(s) that are neither a class index (0..8) nor "
                         "253 (invalid) / 254 (none) / 255 (not evaluated)"] if bad else [])


@pytest.mark.parametrize("key", ["worst_bg", "done", "outcome"])
def test_datasets_cut_short_in_a_complete_results_file_are_a_problem(store, tiny_classifier, key):
    _search(store, tiny_classifier)
    with h5py.File(_results_file(store), "r+") as f:
        data = f[key][()]
        del f[key]
        f.create_dataset(key, data=data[:5])
        assert f.attrs["complete"]
    problems = verify_all(store).problems
    assert f"s.h5.d/results/r.h5/{key} has 5 rows for 7 foregrounds" in problems


@pytest.mark.parametrize("damage", ["truncate", "garble"])
@pytest.mark.parametrize("kind", ["results", "embeddings"])
def test_a_damaged_results_or_embeddings_file_is_reported_and_replaced_never_a_crash(store, tiny_classifier,
                                                                                     damage, kind):
    from advbg.search.index import build_index

    with Store(store, "r+") as s:
        if kind == "results":
            search(s, tiny_classifier, SearchConfig(fg_block=2), results_name="r", progress=False)
        else:
            build_index(s, tiny_classifier, progress=False)
    path = next((sidecar_folder(store) / kind).glob("*.h5"))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        rng = np.random.default_rng(3)
        for at in rng.integers(0, len(data), 64):    # garble bytes everywhere, header included
            data[at] ^= 0xA5
        path.write_bytes(bytes(data))
    report = verify_all(store)                      # must not raise
    assert not report.ok
    assert any(f"{path.name}" in p and "damaged" in p for p in report.problems), report.problems
    with Store(store, "r+") as s:                    # the store itself is untouched: a new write replaces the file
        assert isinstance(s.results, dict) and isinstance(s.embeddings, dict)   # listing never raises
        if kind == "results":                        # never reused nor replaced silently: --recompute writes it
            with pytest.raises(AdvbgError, match=f"{path}.*(damaged|another run).*--recompute"):
                search(s, tiny_classifier, SearchConfig(fg_block=2), results_name="r", progress=False)
            search(s, tiny_classifier, SearchConfig(fg_block=2), results_name="r", recompute=True, progress=False)
        else:
            build_index(s, tiny_classifier, progress=False)
    assert verify_all(store).ok


def test_verify_of_a_missing_or_non_store_file_is_one_line(tmp_path, capsys):
    code, _, err = run(["verify", str(tmp_path / "nope.h5")], capsys)
    one_line_error(code, err, "does not exist")
    (tmp_path / "x.h5").write_bytes(b"\0" * 100)
    code, _, err = run(["verify", str(tmp_path / "x.h5")], capsys)
    one_line_error(code, err, "not an HDF5 file")
    with pytest.raises(AdvbgError):
        verify_all(tmp_path / "x.h5")


def test_results_inside_a_store_of_an_earlier_build_are_still_read(store, tiny_classifier):
    from advbg.search.results import load_search

    _search(store, tiny_classifier)
    with h5py.File(_results_file(store), "r") as src, h5py.File(store, "r+") as dst:
        src.copy(src["/"], dst.require_group("results"), name="old")     # the layout earlier builds wrote
    with Store(store) as s:
        old, new = load_search(s, "old"), load_search(s, "r")
        assert np.array_equal(old.worst_bg, new.worst_bg) and np.array_equal(old.n_fooling, new.n_fooling)
    report = verify_all(store)
    assert report.ok and "/results/old: search, complete, 7/7 foregrounds done" in report.lines
