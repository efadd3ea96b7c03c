"""Property: random stores (sizes, labels, masks, unicode source ids and class names) survive write -> read
unchanged; the released folder layout survives write -> ingest unchanged; exported PNGs decode to the exact
stored / composited pixels."""
from __future__ import annotations

import csv
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from advbg.data.store import Store
from advbg.data.verify import verify_store
from advbg.data.writer import write_store

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                derandomize=True)
# Any Unicode HDF5 can hold: no NUL, no lone surrogates (both refused by StoreWriter, see test_hazard_*).
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12)


@st.composite
def stores(draw, min_items: int = 0):
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    classes = draw(st.lists(TEXT, min_size=1, max_size=5))
    n_fg, n_bg = draw(st.integers(min_items, 5)), draw(st.integers(min_items, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    boxes = None if draw(st.booleans()) else rng.integers(-1, 50, (n_fg, 4))
    return dict(
        class_names=classes,
        fg_images=rng.integers(0, 256, (n_fg, h, w, 3), dtype=np.uint8),
        fg_masks=rng.integers(0, 2, (n_fg, h, w), dtype=np.uint8),
        fg_labels=[draw(st.integers(0, len(classes) - 1)) for _ in range(n_fg)],
        bg_images=rng.integers(0, 256, (n_bg, h, w, 3), dtype=np.uint8),
        bg_labels=[draw(st.integers(-1, len(classes) - 1)) for _ in range(n_bg)],
        fg_source_ids=draw(st.lists(TEXT, min_size=n_fg, max_size=n_fg)),
        bg_source_ids=draw(st.lists(TEXT, min_size=n_bg, max_size=n_bg)),
        fg_boxes=boxes,
    )


def _assert_same(s: Store, spec: dict) -> None:
    assert list(s.class_names) == spec["class_names"]
    assert np.array_equal(s.foregrounds.read(slice(None)), spec["fg_images"])
    assert np.array_equal(s.foregrounds.read_masks(slice(None)), spec["fg_masks"])
    assert np.array_equal(s.backgrounds.read(slice(None)), spec["bg_images"])
    assert s.foregrounds.labels.tolist() == list(spec["fg_labels"])
    assert s.backgrounds.labels.tolist() == list(spec["bg_labels"])
    assert s.foregrounds.source_ids == spec["fg_source_ids"] and s.backgrounds.source_ids == spec["bg_source_ids"]
    want_boxes = spec["fg_boxes"] if spec["fg_boxes"] is not None else np.full((len(spec["fg_labels"]), 4), -1)
    assert np.array_equal(s.foregrounds.boxes.reshape(-1, 4), np.asarray(want_boxes).reshape(-1, 4))


@settings(max_examples=25, **SETTINGS)
@given(spec=stores())
def test_store_write_read_round_trip(spec):
    with tempfile.TemporaryDirectory() as d:
        path = write_store(Path(d) / "s.h5", **spec)
        with Store(path) as s:
            _assert_same(s, spec)
        assert verify_store(path).ok  # every stored checksum matches the bytes read back


# --------------------------------------------------------------------------------------------- ingest
FILE_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\0"),
                    min_size=1, max_size=10).filter(lambda s: s not in (".", "..") and not s.startswith("."))


@st.composite
def releases(draw):
    """The released layout's content: unique stems, each a foreground (image + 0/1 mask) and its background."""
    h, w = draw(st.integers(1, 10)), draw(st.integers(2, 10))
    classes = draw(st.lists(FILE_TEXT, min_size=1, max_size=4, unique=True))
    stems = draw(st.lists(FILE_TEXT, min_size=1, max_size=6, unique_by=lambda s: s.casefold()))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    labels = [draw(st.integers(0, len(classes) - 1)) for _ in stems]
    mask = rng.integers(0, 2, (len(stems), h * w), dtype=np.uint8)
    mask[:, 0], mask[:, -1] = 1, 0  # neither empty nor whole-image: ingest refuses those (imageio.check_mask)
    return dict(classes=classes, stems=stems, labels=labels,
                fg=rng.integers(0, 256, (len(stems), h, w, 3), dtype=np.uint8), mask=mask.reshape(-1, h, w),
                bg=rng.integers(0, 256, (len(stems), h, w, 3), dtype=np.uint8))


def _write_release(root: Path, rel: dict) -> None:
    for k, stem in enumerate(rel["stems"]):
        folder = f"{rel['labels'][k]:02d}_{rel['classes'][rel['labels'][k]]}"
        for variant, arr in (("original", rel["fg"][k]), ("only_bg_t", rel["bg"][k])):
            (root / variant / "val" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / variant / "val" / folder / f"{stem}.png")
        (root / "fg_mask" / "val" / folder).mkdir(parents=True, exist_ok=True)
        np.save(root / "fg_mask" / "val" / folder / f"{stem}.npy", rel["mask"][k])
    for label, name in enumerate(rel["classes"]):  # class folders exist even when empty
        (root / "original" / "val" / f"{label:02d}_{name}").mkdir(parents=True, exist_ok=True)


@settings(max_examples=10, **SETTINGS)
@given(rel=releases())
def test_released_layout_ingest_round_trip(rel):
    from advbg.data.ingest import ingest_in9

    d = Path(tempfile.mkdtemp())
    try:
        _write_release(d / "bg_challenge", rel)
        ingest_in9(d, d / "s.h5", progress=False, on_problem=pytest.fail)
        with Store(d / "s.h5") as s:
            assert list(s.class_names) == rel["classes"]
            got = {sid: k for k, sid in enumerate(s.foregrounds.source_ids)}
            assert sorted(got) == sorted(rel["stems"]) and s.backgrounds.source_ids == s.foregrounds.source_ids
            for k, stem in enumerate(rel["stems"]):
                i = got[stem]
                assert np.array_equal(s.foregrounds.read([i])[0], rel["fg"][k])
                assert np.array_equal(s.foregrounds.read_masks([i])[0], rel["mask"][k])
                assert np.array_equal(s.backgrounds.read([i])[0], rel["bg"][k])
                assert s.foregrounds.labels[i] == s.backgrounds.labels[i] == rel["labels"][k]
    finally:
        shutil.rmtree(d)


# --------------------------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A searched random store (exhaustive, outcome matrix recorded) to export from."""
    from conftest import make_random_store, make_tiny_classifier

    from advbg.search.config import SearchConfig
    from advbg.search.runner import search

    path = make_random_store(tmp_path_factory.mktemp("exp") / "s.h5", n_fg=6, n_bg=8, seed=5)
    with Store(path, "r+") as s:
        search(s, make_tiny_classifier(), SearchConfig(), results_name="r", progress=False)
    return path


@settings(max_examples=6, **SETTINGS)
@given(what=st.sampled_from(["backgrounds", "composites", "both"]), per_class=st.none() | st.integers(1, 3),
       include_unfooled=st.booleans())
def test_export_folder_decodes_to_the_stored_pixels(searched, what, per_class, include_unfooled):
    from advbg.data.imageio import read_image
    from advbg.train.export import ExportConfig, export

    d = Path(tempfile.mkdtemp())
    try:
        cfg = ExportConfig(what=what, per_class=per_class, include_unfooled=include_unfooled)
        res = export(searched, d / "out", results="r", config=cfg)
        rows = list(csv.DictReader(open(d / "out" / "manifest.csv", newline="")))
        assert len(rows) == res.n_backgrounds + res.n_composites
        with Store(searched) as s:
            for row in rows:
                got = read_image(d / "out" / row["file"])
                f, b = int(row["fg_id"]), int(row["bg_id"])
                bg = s.backgrounds.read([b])[0]
                if row["kind"] == "background":
                    want = bg
                else:
                    mask = s.foregrounds.read_masks([f])[0][..., None].astype(bool)
                    want = np.where(mask, s.foregrounds.read([f])[0], bg)
                    assert int(row["fg_label"]) == s.foregrounds.labels[f]
                assert np.array_equal(got, want) and int(row["bg_label"]) == s.backgrounds.labels[b]
    finally:
        shutil.rmtree(d)
