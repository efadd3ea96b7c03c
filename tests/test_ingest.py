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
    assert "escape_item.JPEG: a link leading out of the data folder" in text
    report = ingest_in9(rel.root, tmp_path / "ok.h5", skip_bad=True, evalsets=False, progress=False,
                        on_problem=lambda _: None)
    assert report.skipped == 3
    with Store(tmp_path / "ok.h5") as s:
        assert len(s.foregrounds) == 18
