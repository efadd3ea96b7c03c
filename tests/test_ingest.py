"""ingest in9: the released layout (drawn here in miniature) becomes a store plus evaluation sets."""
from __future__ import annotations

import numpy as np
import pytest
from fixtures_data import SIZE, corrupt_released, make_released, run_cli

from advbg.data.ingest import ingest_in9
from advbg.data.labels import IN9_CLASSES, IN9_FOLDERS
from advbg.data.store import Store
from advbg.data.variants import evalset_names, open_evalset
from advbg.errors import AdvbgError

RELEASED_EVALSETS = ["mixed_next", "mixed_rand", "mixed_same", "no_fg", "only_bg_b", "only_fg"]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return make_released(tmp_path_factory.mktemp("rel"), per_class=2)


@pytest.fixture(scope="module")
def ingested(released, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "in9.h5"
    report = ingest_in9(released.root, out, progress=False)
    return released, out, report


def test_counts_labels_shapes_and_source_ids(ingested):
    rel, out, report = ingested
    assert (report.n_foregrounds, report.n_backgrounds, report.skipped) == (18, 18, 0)
    with Store(out) as s:
        assert s.class_names == IN9_CLASSES
        assert s.image_size == (SIZE, SIZE)
        assert len(s.foregrounds) == len(s.backgrounds) == 18
        assert s.foregrounds.source_ids == rel.stems == s.backgrounds.source_ids
        assert s.foregrounds.labels.tolist() == rel.labels == s.backgrounds.labels.tolist()
        assert s.foregrounds.images.shape == (18, SIZE, SIZE, 3)
        assert s.attrs["skipped_items"] == 0


def test_masks_are_the_released_npy_files(ingested):
    rel, out, _ = ingested
    with Store(out) as s:
        for i, stem in enumerate(rel.stems):
            folder = IN9_FOLDERS[rel.labels[i]]
            expected = np.load(rel.root / "fg_mask" / "val" / folder / f"{stem}.npy")
            assert np.array_equal(s.foregrounds.read_masks([i])[0], expected.astype(np.uint8))


def test_other_variants_become_evalsets_with_labels_and_ids(ingested):
    rel, out, report = ingested
    assert sorted(report.evalsets) == RELEASED_EVALSETS and set(report.evalsets.values()) == {18}
    with Store(out) as s:
        assert evalset_names(s.file) == RELEASED_EVALSETS
        only_fg, no_fg = open_evalset(s.file, "only_fg"), open_evalset(s.file, "no_fg")
        assert only_fg.images.shape == (18, SIZE, SIZE, 3)
        assert only_fg.source_ids == rel.stems and only_fg.labels.tolist() == rel.labels
        assert only_fg.fg_id.tolist() == list(range(18)) and set(only_fg.bg_id.tolist()) == {-1}
        assert no_fg.bg_id.tolist() == list(range(18)) and set(no_fg.fg_id.tolist()) == {-1}


def test_mixed_next_provenance_from_names_checked_against_pixels(ingested):
    rel, out, _ = ingested
    with Store(out) as s:
        mn = open_evalset(s.file, "mixed_next")
        src = s.foregrounds.source_ids
        for k, name in enumerate(mn.source_ids):
            fg_stem = name[3:name.index("_bg_")]
            assert mn.fg_id[k] == src.index(fg_stem)
            assert mn.bg_id[k] == src.index(rel.mixed_next_bg[fg_stem])
            assert s.backgrounds.labels[mn.bg_id[k]] == (mn.labels[k] + 1) % 9


def test_mixed_rand_lying_names_do_not_become_provenance(ingested):
    rel, out, _ = ingested
    with Store(out) as s:
        mr = open_evalset(s.file, "mixed_rand")
        src = s.backgrounds.source_ids
        for k, name in enumerate(mr.source_ids):
            fg_stem = name[3:name.index("_bg_")]
            true_bg, named_bg = rel.mixed_rand_bg[fg_stem], rel.mixed_next_bg[fg_stem]
            assert mr.bg_id[k] == (src.index(true_bg) if true_bg == named_bg else -1)
        assert mr.attrs["n_unverified_bg"] == sum(rel.mixed_rand_bg[s] != rel.mixed_next_bg[s] for s in rel.stems)


def test_accepts_the_folder_holding_bg_challenge_and_no_evalsets(released, tmp_path, capsys):
    assert run_cli(["ingest", "in9", str(released.root.parent), "--out", str(tmp_path / "s.h5"), "--no-evalsets",
                    "-q"]) == 0
    assert "18 foregrounds, 18 backgrounds, 9 classes; evaluation sets: none" in capsys.readouterr().out
    with Store(tmp_path / "s.h5") as s:
        assert evalset_names(s.file) == []


@pytest.fixture()
def corrupted(tmp_path):
    rel = make_released(tmp_path / "rel", per_class=2, seed=1)
    return rel, corrupt_released(rel)


def test_corrupted_release_reports_every_file_and_fails(corrupted, tmp_path):
    rel, expected = corrupted
    lines: list[str] = []
    with pytest.raises(AdvbgError, match="4 problem"):
        ingest_in9(rel.root, tmp_path / "bad.h5", progress=False, on_problem=lines.append)
    assert len(lines) == 4
    for file, what in expected.items():
        assert any(line.startswith(file + ":") and what in line for line in lines), (file, what, lines)
    assert list(tmp_path.glob("bad.h5*")) == []


def test_skip_bad_leaves_out_bad_items_and_counts_them(corrupted, tmp_path):
    rel, expected = corrupted
    report = ingest_in9(rel.root, tmp_path / "ok.h5", skip_bad=True, progress=False, on_problem=lambda _: None)
    bad_stems = {f.rsplit("/", 1)[1].split(".")[0] for f in expected}
    with Store(tmp_path / "ok.h5") as s:
        assert len(s.foregrounds) == 14 and s.attrs["skipped_items"] == 4
        assert set(s.foregrounds.source_ids) == set(rel.stems) - bad_stems
        mixed = open_evalset(s.file, "mixed_same")
        assert len(mixed) == 18  # the release's own pixels stay; unknown foregrounds get fg_id -1
        assert sum(mixed.fg_id < 0) == 4
    assert report.skipped == 4


def test_cli_ingest_reports_per_file_then_one_line_error(corrupted, tmp_path, capsys):
    rel, expected = corrupted
    assert run_cli(["ingest", "in9", str(rel.root), "--out", str(tmp_path / "x.h5"), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and err[-1].startswith("advbg: error: 4 problem(s)") and "--skip-bad" in err[-1]
    assert run_cli(["ingest", "in9", str(rel.root), "--out", str(tmp_path / "x.h5"), "--skip-bad", "-q"]) == 0
    assert "14 foregrounds" in capsys.readouterr().out


def test_not_a_release_folder_is_a_clear_error(tmp_path, capsys):
    assert run_cli(["ingest", "in9", str(tmp_path), "--out", str(tmp_path / "x.h5")]) == 1
    assert "not the released IN-9 layout" in capsys.readouterr().err


def test_ingested_store_makes_every_variant_and_the_released_pixels(ingested):
    from PIL import Image

    from advbg.data.variants import make_variant, variant_names

    rel, out, _ = ingested
    with Store(out) as s:
        bgt = make_variant(s, "only_bg_t", range(18))
        for i, stem in enumerate(rel.stems):
            jpeg = rel.root / "only_bg_t" / "val" / IN9_FOLDERS[rel.labels[i]] / f"{stem}.JPEG"
            assert np.array_equal(bgt.images[i], np.asarray(Image.open(jpeg).convert("RGB")))
        for name in variant_names():  # no boxes were released: box-based variants use the mask's box
            b = make_variant(s, name, [0, 17])
            assert b.images.shape == (2, SIZE, SIZE, 3)


def test_mask_header_declaring_a_huge_array_is_a_bad_item_not_a_memory_error(tmp_path):
    """A .npy header may declare 10^10 elements over a few bytes of data: judged from the header, before np.load
    allocates anything, and left out like any bad item under --skip-bad."""
    import numpy.lib.format as npf

    from advbg.data.labels import IN9_FOLDERS

    rel = make_released(tmp_path / "rel", per_class=2, seed=2)
    stem = rel.stems[0]
    path = rel.root / "fg_mask" / "val" / IN9_FOLDERS[0] / f"{stem}.npy"
    with open(path, "wb") as f:
        npf.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000)})
        f.write(b"\0" * 64)
    lines: list[str] = []
    report = ingest_in9(rel.root, tmp_path / "ok.h5", skip_bad=True, evalsets=False, progress=False,
                        on_problem=lines.append)
    assert report.skipped == 1 and len(lines) == 1 and "has shape (100000, 100000)" in lines[0]


def test_fifos_device_links_and_links_out_of_the_release_are_reported_not_dropped(tmp_path):
    """Such entries were skipped without a word ("skipped 0 bad item(s)") or read from outside the data folder;
    opening a FIFO would block. Each is now a reported bad item, left out under --skip-bad."""
    import os

    rel = make_released(tmp_path / "rel", per_class=2, seed=3)
    folder = rel.root / "original" / "val" / IN9_FOLDERS[1]
    os.mkfifo(folder / "fifo_item.JPEG")
    (folder / "zero_item.JPEG").symlink_to("/dev/zero")
    outside = tmp_path / "outside.JPEG"
    outside.write_bytes((folder / f"{rel.stems[2]}.JPEG").read_bytes())
    (folder / "escape_item.JPEG").symlink_to(outside)
    lines: list[str] = []
    with pytest.raises(AdvbgError, match="problem"):   # each also lacks its mask and only_bg_t image
        ingest_in9(rel.root, tmp_path / "bad.h5", evalsets=False, progress=False, on_problem=lines.append)
    text = "\n".join(lines)
    assert "fifo_item.JPEG: not a regular file" in text and "zero_item.JPEG: a link leading out" in text
    assert "escape_item.JPEG: a link leading out of the release folder" in text
    report = ingest_in9(rel.root, tmp_path / "ok.h5", skip_bad=True, evalsets=False, progress=False,
                        on_problem=lambda _: None)
    assert report.skipped == 3
    with Store(tmp_path / "ok.h5") as s:
        assert len(s.foregrounds) == 18


# --------------------------------------------------------------------------------------------- links out (#26)
def _snapshot(root):
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _link_out(rel, relpath: str, outside):
    """Move ``relpath`` of the release out of it and leave a symbolic link to it in its place."""
    import shutil

    src = rel.root / relpath
    dest = outside / src.name
    outside.mkdir(parents=True, exist_ok=True)
    shutil.move(src, dest)
    src.symlink_to(dest, target_is_directory=dest.is_dir())
    return dest


# (path made a link out of the release, foregrounds left with --skip-bad, evaluation sets left, images of only_fg)
LINKED_OUT = {
    "a class folder of original": (f"original/val/{IN9_FOLDERS[0]}", 16, RELEASED_EVALSETS, 18),
    "a class folder of fg_mask": (f"fg_mask/val/{IN9_FOLDERS[1]}", 16, RELEASED_EVALSETS, 18),
    "a class folder of an evaluation set": (f"only_fg/val/{IN9_FOLDERS[3]}", 18, RELEASED_EVALSETS, 16),
    "a variant folder": ("only_fg", 18, [v for v in RELEASED_EVALSETS if v != "only_fg"], None),
    "a val folder": ("mixed_same/val", 18, [v for v in RELEASED_EVALSETS if v != "mixed_same"], 18),
    "a file": (f"only_bg_t/val/{IN9_FOLDERS[2]}/n00000002_100.JPEG", 17, RELEASED_EVALSETS, 18),
}


@pytest.mark.parametrize("case", list(LINKED_OUT))
def test_a_link_out_of_the_release_anywhere_on_the_way_is_reported_and_never_read(case, tmp_path):
    """A class folder linked to a folder elsewhere was followed: exit 0, "skipped 0", and the store held photos
    from outside the release (#26). Now each folder and file is judged by where it really is."""
    relpath, n_fg, sets, n_only_fg = LINKED_OUT[case]
    rel = make_released(tmp_path / "rel", per_class=2, seed=4)
    outside = _link_out(rel, relpath, tmp_path / "elsewhere")
    # what lies outside is not the release's: another photo under each name, so reading it would show
    for p in [outside] if outside.is_file() else outside.rglob("*.JPEG"):
        p.write_bytes((rel.root / "original" / "val" / IN9_FOLDERS[8] / f"{rel.stems[-1]}.JPEG").read_bytes())
    lines: list[str] = []
    with pytest.raises(AdvbgError, match="problem"):
        ingest_in9(rel.root, tmp_path / "bad.h5", progress=False, on_problem=lines.append)
    assert any(line.startswith(f"{relpath}: a link leading out of the release folder") for line in lines), lines
    assert list(tmp_path.glob("*bad.h5*")) == []
    report = ingest_in9(rel.root, tmp_path / "ok.h5", skip_bad=True, progress=False, on_problem=lambda _: None)
    assert report.n_foregrounds == n_fg and sorted(report.evalsets) == sets
    with Store(tmp_path / "ok.h5") as s:
        assert len(s.foregrounds) == n_fg and s.attrs["skipped_items"] == 18 - n_fg
        assert evalset_names(s.file) == sets
        if n_only_fg is not None:
            assert len(open_evalset(s.file, "only_fg")) == n_only_fg


def test_links_that_stay_inside_the_release_are_followed(tmp_path):
    rel = make_released(tmp_path / "rel", per_class=2, seed=5)
    (rel.root / "kept").mkdir()
    folder = f"original/val/{IN9_FOLDERS[0]}"
    moved = rel.root / "kept" / IN9_FOLDERS[0]
    (rel.root / folder).rename(moved)
    (rel.root / folder).symlink_to(moved, target_is_directory=True)
    photo = rel.root / "original" / "val" / IN9_FOLDERS[1] / f"{rel.stems[2]}.JPEG"
    photo.rename(rel.root / "kept" / photo.name)
    photo.symlink_to(f"../../../kept/{photo.name}")      # relative, still inside
    report = ingest_in9(rel.root, tmp_path / "s.h5", progress=False, on_problem=pytest.fail)
    assert (report.n_foregrounds, report.skipped) == (18, 0)


# --------------------------------------------------------------------------------------------- items a variant has and original/ lacks (#26)
def test_a_photo_missing_from_original_is_reported_and_refused(tmp_path, capsys):
    """One photo deleted from original/ while its mask, background and evaluation images stayed: ingest said
    "skipped 0" and wrote 17 foregrounds against 18 in every evaluation set (#26)."""
    rel = make_released(tmp_path / "rel", per_class=2, seed=6)
    stem = rel.stems[0]
    (rel.root / "original" / "val" / IN9_FOLDERS[0] / f"{stem}.JPEG").unlink()
    code = run_cli(["ingest", "in9", str(rel.root), "--out", str(tmp_path / "x.h5"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("advbg: error: 1 problem(s)") and "--skip-bad" in err[-1]
    assert len(err) == 2 and err[0].startswith(f"original/val/{IN9_FOLDERS[0]}/{stem}: ")
    assert "fg_mask" in err[0] and "only_bg_t" in err[0] and "mixed_same" in err[0]
    assert list(tmp_path.glob("*x.h5*")) == []
    assert run_cli(["ingest", "in9", str(rel.root), "--out", str(tmp_path / "x.h5"), "--skip-bad", "-q"]) == 0
    out, err = capsys.readouterr()
    assert "17 foregrounds" in out and "skipped 1 bad item(s), 1 of them without a photo in original/" in out
    assert f"original/val/{IN9_FOLDERS[0]}/{stem}: " in err     # the dropped item is named
    with Store(tmp_path / "x.h5") as s:
        assert stem not in s.foregrounds.source_ids and stem not in s.backgrounds.source_ids
        assert s.attrs["skipped_items"] == 1 and s.attrs["items_without_photo"] == 1


def test_an_item_a_variant_lacks_is_reported_and_refused(tmp_path):
    rel = make_released(tmp_path / "rel", per_class=2, seed=7)
    stem, folder = rel.stems[2], IN9_FOLDERS[1]
    (rel.root / "only_fg" / "val" / folder / f"{stem}.JPEG").unlink()
    (rel.root / "mixed_rand" / "val" / folder / f"fg_{stem}_bg_{rel.mixed_next_bg[stem]}.JPEG").unlink()
    lines: list[str] = []
    with pytest.raises(AdvbgError, match="1 problem"):
        ingest_in9(rel.root, tmp_path / "bad.h5", progress=False, on_problem=lines.append)
    assert lines == [f"original/val/{folder}/{stem}.JPEG: missing from mixed_rand, only_fg"]
    report = ingest_in9(rel.root, tmp_path / "ok.h5", skip_bad=True, progress=False, on_problem=lambda _: None)
    assert (report.n_foregrounds, report.skipped, report.missing_from_evalsets) == (18, 0, 1)
    assert "1 photo(s) missing from some evaluation set" in report.summary()
    with Store(tmp_path / "ok.h5") as s:
        assert len(open_evalset(s.file, "only_fg")) == len(open_evalset(s.file, "mixed_rand")) == 17
        assert s.attrs["missing_from_evalsets"] == 1
    # evaluation sets not read are not compared
    report = ingest_in9(rel.root, tmp_path / "no.h5", evalsets=False, progress=False, on_problem=pytest.fail)
    assert report.n_foregrounds == 18


def test_a_class_folder_original_lacks_is_reported(tmp_path):
    rel = make_released(tmp_path / "rel", per_class=1, seed=8)
    extra = rel.root / "fg_mask" / "val" / "09_extra"
    extra.mkdir()
    np.save(extra / "n00000009_100.npy", np.ones((SIZE, SIZE), np.float32))
    lines: list[str] = []
    with pytest.raises(AdvbgError, match="1 problem"):
        ingest_in9(rel.root, tmp_path / "bad.h5", evalsets=False, progress=False, on_problem=lines.append)
    assert len(lines) == 1 and lines[0].startswith("fg_mask/val/09_extra: a class folder that original/val lacks")


# --------------------------------------------------------------------------------------------- --out (#24 item 1)
@pytest.mark.parametrize("where", ["a release photo", "a new store in a class folder", "the release folder"])
def test_an_output_inside_the_release_is_refused_before_any_work_even_with_overwrite(where, tmp_path, capsys):
    """`ingest in9 FX --out FX/bg_challenge/original/val/00_dog/X.JPEG --overwrite` replaced a release image."""
    from conftest import assert_one_line_error
    from conftest import run_cli as run_cli_captured

    rel = make_released(tmp_path / "rel", per_class=1, seed=9)
    out = {"a release photo": rel.root / "original" / "val" / IN9_FOLDERS[0] / f"{rel.stems[0]}.JPEG",
           "a new store in a class folder": rel.root / "original" / "val" / IN9_FOLDERS[0] / "s.h5",
           "the release folder": rel.root / "s.h5"}[where]
    before = _snapshot(tmp_path)
    code, _, err = run_cli_captured(["ingest", "in9", str(rel.root.parent), "--out", str(out), "--overwrite",
                                     "-q"], capsys)
    assert_one_line_error(code, err, "inside the input folder")
    assert _snapshot(tmp_path) == before and not out.with_name(f"{out.name}.partial").exists()


def test_a_store_output_must_end_in_h5(tmp_path, capsys):
    from conftest import assert_one_line_error
    from conftest import run_cli as run_cli_captured

    rel = make_released(tmp_path / "rel", per_class=1, seed=10)
    code, _, err = run_cli_captured(["ingest", "in9", str(rel.root), "--out", str(tmp_path / "s.JPEG"), "-q"],
                                    capsys)
    assert_one_line_error(code, err, r"must end in \.h5")
    assert not (tmp_path / "s.JPEG").exists()
