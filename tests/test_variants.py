"""variants: each variant's defining property, provenance (fg_id/bg_id), reproducibility, and both writers."""
from __future__ import annotations

import csv
import json

import cv2
import h5py
import numpy as np
import pytest
from fixtures_data import make_store, run_cli
from PIL import Image

import advbg.data.variants as V
from advbg.data import segment
from advbg.data.labels import IN9_FOLDERS
from advbg.data.store import Store
from advbg.data.writer import write_store
from advbg.data.variants import (
    VariantOptions,
    make_variant,
    open_evalset,
    variant_names,
    write_variants,
)
from advbg.errors import AdvbgError

ALL = ("original", "only_bg_b", "only_bg_t", "no_fg", "only_fg", "mixed_same", "mixed_rand", "mixed_next",
       "fg_white", "bg_white", "bg_texture", "bg_gauss", "bg_uniform", "bg_color", "bg_blur", "bg_recolor",
       "bg_reduced")
KEEPS_FG = {"original", "only_fg", "mixed_same", "mixed_rand", "mixed_next", "bg_white", "bg_texture", "bg_gauss",
            "bg_uniform", "bg_color", "bg_blur", "bg_recolor", "bg_reduced"}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("v") / "s.h5", per_class=3)


@pytest.fixture()
def store(store_path):
    with Store(store_path) as s:
        yield s


def _all(store, name, **kw):
    return make_variant(store, name, np.arange(len(store.foregrounds)), **kw)


def _fg(store):
    n = len(store.foregrounds)
    return store.foregrounds.read(slice(0, n)), store.foregrounds.read_masks(slice(0, n)).astype(bool)


def test_registry_names_every_variant():
    assert variant_names() == ALL
    for name in ALL:
        assert V._spec(name).description                        # each says in one line how it is made


@pytest.mark.parametrize("name", ALL)
def test_common_contract(store, name):
    b = _all(store, name)
    imgs, masks = _fg(store)
    assert b.images.shape == imgs.shape and b.images.dtype == np.uint8
    assert b.labels.tolist() == store.foregrounds.labels.tolist()
    assert b.source_id == store.foregrounds.source_ids
    if name in KEEPS_FG:  # the object's pixels are the foreground's own, and fg_id says so
        assert b.fg_id.tolist() == list(range(len(imgs)))
        assert np.array_equal(b.images[masks], imgs[masks])
    else:
        assert set(b.fg_id.tolist()) == {-1}


def test_original_is_the_photo(store):
    b = _all(store, "original")
    assert np.array_equal(b.images, _fg(store)[0])
    assert [store.backgrounds.source_ids[j] for j in b.bg_id] == store.foregrounds.source_ids


def test_only_bg_b_blacks_out_the_box(store):
    b, (imgs, _) = _all(store, "only_bg_b"), _fg(store)
    for i, (x0, y0, x1, y1) in enumerate(store.foregrounds.boxes):
        assert not b.images[i, y0:y1, x0:x1].any()
        outside = np.ones(imgs.shape[1:3], bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(b.images[i][outside], imgs[i][outside])


def test_only_bg_t_is_the_stored_background_of_the_same_photo(store):
    b = _all(store, "only_bg_t")
    assert np.array_equal(b.images, store.backgrounds.read(b.bg_id))
    assert [store.backgrounds.source_ids[j] for j in b.bg_id] == b.source_id


def test_only_bg_t_is_computed_from_the_box_without_a_stored_background(store, tmp_path):
    imgs, masks = _fg(store)
    write_store(tmp_path / "nobg.h5", class_names=store.class_names, fg_images=imgs, fg_masks=masks.astype(np.uint8),
                fg_labels=store.foregrounds.labels, bg_images=imgs[:1], bg_labels=[0], bg_source_ids=["other"],
                fg_boxes=store.foregrounds.boxes)
    with Store(tmp_path / "nobg.h5") as s:
        b = make_variant(s, "only_bg_t", [4])
        assert np.array_equal(b.images[0], segment.only_bg_t(imgs[4], store.foregrounds.boxes[4]))
        assert b.bg_id.tolist() == [-1]


def test_no_fg_blacks_out_the_mask_and_only_fg_everything_else(store):
    imgs, masks = _fg(store)
    no_fg, only_fg = _all(store, "no_fg"), _all(store, "only_fg")
    assert not no_fg.images[masks].any() and np.array_equal(no_fg.images[~masks], imgs[~masks])
    assert not only_fg.images[~masks].any() and np.array_equal(only_fg.images[masks], imgs[masks])
    assert set(only_fg.bg_id.tolist()) == {-1}


@pytest.mark.parametrize("name", ["mixed_same", "mixed_rand", "mixed_next"])
def test_mixed_background_pixels_are_the_recorded_background(store, name):
    b, (_, masks) = _all(store, name), _fg(store)
    bgs = store.backgrounds.read(b.bg_id)
    assert np.array_equal(b.images[~masks], bgs[~masks])
    assert all(store.backgrounds.source_ids[j] != s for j, s in zip(b.bg_id, b.source_id))  # never its own photo


def test_mixed_same_background_class_is_the_foreground_class(store):
    b = _all(store, "mixed_same")
    assert np.array_equal(store.backgrounds.labels[b.bg_id], b.labels)


def test_mixed_next_background_class_is_y_plus_1_mod_9(store):
    b = _all(store, "mixed_next")
    assert np.array_equal(store.backgrounds.labels[b.bg_id], (b.labels + 1) % 9)


def test_mixed_rand_draws_backgrounds_of_many_classes(store):
    b = _all(store, "mixed_rand")
    assert len(set(store.backgrounds.labels[b.bg_id].tolist())) >= 5


def test_same_seed_same_sets_other_seed_other_choices(store):
    for name in ("mixed_rand", "bg_gauss", "bg_texture", "bg_color"):
        a, b = _all(store, name, rng_seed=7), _all(store, name, rng_seed=7)
        assert np.array_equal(a.images, b.images) and np.array_equal(a.bg_id, b.bg_id)
        assert not np.array_equal(a.images, _all(store, name, rng_seed=8).images)


def test_a_row_does_not_depend_on_its_block(store):
    full = _all(store, "mixed_rand", rng_seed=3)
    part = make_variant(store, "mixed_rand", [20, 4], rng_seed=3)
    assert np.array_equal(part.images, full.images[[20, 4]]) and part.bg_id.tolist() == full.bg_id[[20, 4]].tolist()
    blocks = list(V.iter_variant(store, "mixed_rand", block=5, rng_seed=3))
    assert np.array_equal(np.concatenate([x.images for x in blocks]), full.images)


def test_fg_white_and_bg_white(store):
    imgs, masks = _fg(store)
    fw, bw = _all(store, "fg_white"), _all(store, "bg_white")
    assert (fw.images[masks] == 255).all() and np.array_equal(fw.images[~masks], imgs[~masks])
    assert (bw.images[~masks] == 255).all()


def test_noise_backgrounds_have_their_distribution(store):
    masks = _fg(store)[1]
    gauss = _all(store, "bg_gauss").images[~masks].astype(float)
    uni = _all(store, "bg_uniform").images[~masks].astype(float)
    assert abs(gauss.mean() - 127.5) < 3 and 55 < gauss.std() < 66
    assert abs(uni.mean() - 127.5) < 3 and abs(uni.std() - 73.9) < 2 and uni.min() == 0 and uni.max() == 255


def test_bg_color_is_one_flat_colour_per_image(store):
    b, masks = _all(store, "bg_color"), _fg(store)[1]
    colours = set()
    for i in range(len(b)):
        px = b.images[i][~masks[i]]
        assert (px == px[0]).all()
        colours.add(tuple(px[0]))
    assert len(colours) > len(b) // 2


def test_bg_texture_procedural_or_from_unlabelled_store_backgrounds(store, tmp_path):
    b, masks = _all(store, "bg_texture"), _fg(store)[1]
    assert set(b.bg_id.tolist()) == {-1}
    assert all(b.images[i][~masks[i]].std() > 10 for i in range(len(b)))
    with Store(make_store(tmp_path / "tex.h5", per_class=1, unlabelled_bgs=4)) as s:
        t = _all(s, "bg_texture")
        assert set(s.backgrounds.labels[t.bg_id].tolist()) == {-1}
        m = s.foregrounds.read_masks(slice(0, len(t))).astype(bool)
        assert np.array_equal(t.images[~m], s.backgrounds.read(t.bg_id)[~m])
    with pytest.raises(AdvbgError, match="unlabelled"):
        _all(store, "bg_texture", options=VariantOptions(texture="store"))


def test_bg_blur_is_the_blurred_photo_outside_the_mask(store):
    imgs, masks = _fg(store)
    b = _all(store, "bg_blur", options=VariantOptions(blur_kernel=5))
    blurred = np.stack([cv2.GaussianBlur(im, (5, 5), 0) for im in imgs])
    assert np.array_equal(b.images[~masks], blurred[~masks])
    with pytest.raises(AdvbgError, match="odd"):
        _all(store, "bg_blur", options=VariantOptions(blur_kernel=4))


def test_bg_recolor_gray_and_hue(store):
    imgs, masks = _fg(store)
    g = _all(store, "bg_recolor", options=VariantOptions(recolor="gray")).images
    assert (g[..., 0][~masks] == g[..., 1][~masks]).all() and (g[..., 1][~masks] == g[..., 2][~masks]).all()
    h = _all(store, "bg_recolor", options=VariantOptions(recolor="hue", hue_shift=180)).images
    hue = lambda x: cv2.cvtColor(x, cv2.COLOR_RGB2HSV)[..., 0].astype(int)  # noqa: E731
    i = 0
    sat = cv2.cvtColor(imgs[i], cv2.COLOR_RGB2HSV)[..., 1] > 60   # hue is defined where there is colour
    sel = ~masks[i] & sat
    d = np.abs(hue(h[i])[sel] - hue(imgs[i])[sel])
    assert np.median(np.minimum(d, 180 - d)) >= 85  # 180 degrees = 90 OpenCV hue steps (rounding aside)


def test_bg_reduced_keeps_background_only_near_the_box(store):
    imgs, masks = _fg(store)
    b = _all(store, "bg_reduced", options=VariantOptions(reduced_margin=2, reduced_fill="gray"))
    h, w = imgs.shape[1:3]
    for i, (x0, y0, x1, y1) in enumerate(store.foregrounds.boxes):
        near = np.zeros((h, w), bool)
        near[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = True
        assert np.array_equal(b.images[i][near], imgs[i][near])
        assert (b.images[i][~near & ~masks[i]] == 128).all()


def test_missing_background_class_is_a_clear_error(store, tmp_path):
    imgs, masks = _fg(store)
    keep = store.backgrounds.labels != 1
    write_store(tmp_path / "no1.h5", class_names=store.class_names, fg_images=imgs, fg_masks=masks.astype(np.uint8),
                fg_labels=store.foregrounds.labels, bg_images=store.backgrounds.read(np.flatnonzero(keep)),
                bg_labels=store.backgrounds.labels[keep])
    with Store(tmp_path / "no1.h5") as s, pytest.raises(AdvbgError, match="mixed_next needs a background"):
        make_variant(s, "mixed_next", [0])  # class 0 -> background class 1, which has none
    with pytest.raises(AdvbgError, match="mixed_next needs backgrounds of class.es. bird"):
        write_variants(tmp_path / "no1.h5", tmp_path / "x.h5", names=["only_fg", "mixed_next"], progress=False)
    skipped = []
    counts = write_variants(tmp_path / "no1.h5", tmp_path / "all.h5", progress=False,
                            on_skip=lambda n, why: skipped.append(n))   # all: what cannot be made is skipped
    assert skipped == ["mixed_same", "mixed_next"] and len(counts) == len(ALL) - 2
    with h5py.File(tmp_path / "all.h5") as f:
        assert sorted(json.loads(f.attrs["skipped"])) == ["mixed_next", "mixed_same"]


# --------------------------------------------------------------------------------------------- writers
def test_folder_output_mirrors_the_release_with_a_manifest(store_path, store, tmp_path):
    counts = write_variants(store_path, tmp_path / "sets", names=["only_fg", "mixed_next"], seed=5, progress=False)
    assert counts == {"only_fg": 27, "mixed_next": 27}
    root = tmp_path / "sets"
    assert sorted(p.name for p in (root / "mixed_next" / "val").iterdir()) == list(IN9_FOLDERS)
    batch = make_variant(store, "mixed_next", np.arange(27), rng_seed=5)
    with open(root / "mixed_next" / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 27
    for i, row in enumerate(rows):
        assert row["file"].startswith(f"val/{IN9_FOLDERS[int(row['label'])]}/fg_")
        assert (int(row["fg_id"]), int(row["bg_id"])) == (batch.fg_id[i], batch.bg_id[i])
        assert row["bg_source_id"] == store.backgrounds.source_ids[batch.bg_id[i]]
        png = np.asarray(Image.open(root / "mixed_next" / row["file"]))
        assert np.array_equal(png, batch.images[i])   # lossless
    assert not (tmp_path / ".sets.partial").exists()


def test_h5_output_is_a_new_file_of_evalsets(store_path, store, tmp_path):
    write_variants(store_path, tmp_path / "v.h5", names=["bg_gauss", "no_fg"], seed=2, progress=False)
    with h5py.File(tmp_path / "v.h5", "r") as f:
        assert f.attrs["complete"] and f.attrs["store_digest"] == store.digest()
        e = open_evalset(f, "bg_gauss")
        ref = make_variant(store, "bg_gauss", np.arange(27), rng_seed=2)
        assert np.array_equal(e.images[()], ref.images) and e.fg_id.tolist() == ref.fg_id.tolist()
        assert e.attrs["origin"] == "generated" and e.attrs["seed"] == 2
        assert set(f["evalsets"]) == {"bg_gauss", "no_fg"} and "foregrounds" not in f


def test_failed_write_leaves_nothing(store_path, tmp_path, monkeypatch):
    def boom(b):
        raise RuntimeError("disk full")
    monkeypatch.setitem(V._REGISTRY, "no_fg", V._Spec("no_fg", boom, "x"))
    for out in (tmp_path / "v.h5", tmp_path / "dir"):
        with pytest.raises(RuntimeError):
            write_variants(store_path, out, names=["only_fg", "no_fg"], progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_variants(store_path, tmp_path, capsys):
    assert run_cli(["variants", "--store", str(store_path), "--out", str(tmp_path / "o.h5"),
                    "--variants", "mixed_same,bg_blur", "--blur-kernel", "7", "--seed", "1", "-q"]) == 0
    assert "mixed_same 27, bg_blur 27" in capsys.readouterr().out
    assert run_cli(["variants", "--store", str(store_path), "--out", str(tmp_path / "p"),
                    "--variants", "mixed_nxt"]) == 1
    err = capsys.readouterr().err
    assert "unknown variant 'mixed_nxt'; did you mean mixed_next" in err and len(err.strip().splitlines()) == 1
    assert run_cli(["variants", "--store", str(store_path), "--out", str(tmp_path / "o.h5")]) == 1
    assert "already exists" in capsys.readouterr().err


def test_class_names_never_become_paths(store, tmp_path):
    imgs, masks = _fg(store)
    names = ["../../escape", "a/b"] + [f"c{k}" for k in range(2, 9)]
    (tmp_path / "deep").mkdir()
    write_store(tmp_path / "deep" / "s.h5", class_names=names, fg_images=imgs, fg_masks=masks.astype(np.uint8),
                fg_labels=store.foregrounds.labels, bg_images=store.backgrounds.read(slice(0, 27)),
                bg_labels=store.backgrounds.labels, fg_source_ids=[f"../../{s}" for s in store.foregrounds.source_ids])
    write_variants(tmp_path / "deep" / "s.h5", tmp_path / "deep" / "out", names=["only_fg"], progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out", "s.h5"]
    assert sorted(p.name for p in (tmp_path / "deep" / "out" / "only_fg" / "val").iterdir())[:2] == [
        "00_.._.._escape", "01_a_b"]
