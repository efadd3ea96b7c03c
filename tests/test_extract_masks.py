"""extract --masks: given masks replace GrabCut exactly; the box is the mask's tight bound; bad masks are counted.

The expected pixels here are computed by hand from the definitions in README.md / docs/data.md (Only-BG-T: the
largest full-height or full-width strip outside the box, tiled from the canvas origin, pasted inside the box;
ties left, right, top, bottom), with plain numpy loops that share nothing with advbg.data.segment.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from conftest import assert_one_line_error
from conftest import run_cli as run
from fixtures_data import draw_object, save_png, write_csv
from PIL import Image

from advbg.data.extract import ExtractConfig, extract
from advbg.data.store import Store
from advbg.data.variants import make_variant, write_variants
from advbg.data.writer import write_store

S = 24                                       # square photos: resize 0 + crop S leaves the pixels as they are
IDENTITY = ExtractConfig(resize=0, crop=S)


# --------------------------------------------------------------------------------------------- hand references
def hand_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = [y for y in range(mask.shape[0]) if any(mask[y, x] for x in range(mask.shape[1]))]
    cols = [x for x in range(mask.shape[1]) if any(mask[y, x] for y in range(mask.shape[0]))]
    return cols[0], rows[0], cols[-1] + 1, rows[-1] + 1


def hand_only_bg_t(image: np.ndarray, box) -> np.ndarray:
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    strips = [(h * x0, (0, h, 0, x0)), (h * (w - x1), (0, h, x1, w)),      # left, right
              (y0 * w, (0, y0, 0, w)), ((h - y1) * w, (y1, h, 0, w))]      # top, bottom
    best = strips[0]
    for s in strips[1:]:
        if s[0] > best[0]:           # strictly larger: ties keep the earlier strip
            best = s
    ya, yb, xa, xb = best[1]
    sh, sw = yb - ya, xb - xa
    out = image.copy()
    for y in range(y0, y1):
        for x in range(x0, x1):
            out[y, x] = image[ya + y % sh, xa + x % sw]
    return out


def hand_composite(fg: np.ndarray, mask: np.ndarray, bg) -> np.ndarray:
    out = np.empty_like(fg)
    bg = np.broadcast_to(np.asarray(bg, np.uint8), fg.shape)
    for y in range(fg.shape[0]):
        for x in range(fg.shape[1]):
            out[y, x] = fg[y, x] if mask[y, x] else bg[y, x]
    return out


# --------------------------------------------------------------------------------------------- inputs
def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path) if mode is None else _palette(path, array)


def _palette(path: Path, ids: np.ndarray) -> None:
    im = Image.fromarray(ids.astype(np.uint8), "P")
    im.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    im.save(path)


def _npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def _disc(cx, cy, r, size=S) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.uint8)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Noise photos (GrabCut could not segment them) with masks in every accepted format.

    Returns (images, masks, {source id: (photo, expected object mask)}).
    """
    d = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(17)
    cases = {}

    def photo(sid: str) -> np.ndarray:
        img = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
        save_png(d / "img" / f"{sid}.png", img)
        return img

    m = _disc(8, 12, 5)                                           # 0/1 .npy, object touching no border
    cases["cat/a"] = (photo("cat/a"), m)
    _npy(d / "masks" / "cat" / "a.npy", m)
    m = np.zeros((S, S), np.uint8)                                # 0/255 PNG, two blobs: one object
    m[2:6, 15:22], m[14:20, 3:7] = 1, 1
    cases["cat/b"] = (photo("cat/b"), m)
    _png(d / "masks" / "cat" / "b.png", m * 255)
    ids = np.zeros((S, S), np.uint8)                              # instance ids: 2 is the largest
    ids[1:5, 1:5], ids[8:22, 9:20], ids[18:23, 0:4] = 1, 2, 3
    cases["dog/c"] = (photo("dog/c"), (ids == 2).astype(np.uint8))
    _png(d / "masks" / "dog" / "c.png", ids)
    voc = np.zeros((S, S), np.uint8)                              # VOC palette: 255 outline is void
    voc[10:22, 4:8] = 255                                          # (28 pixels: more than the object's 20)
    voc[11:21, 5:7] = 1
    voc[0:3, 20:24] = 4                                            # a smaller second instance
    cases["dog/d"] = (photo("dog/d"), (voc == 1).astype(np.uint8))
    _png(d / "masks" / "dog" / "d.png", voc, mode="P")
    m = np.zeros((S, S), bool)                                     # bool .npy touching the right and bottom
    m[9:, 13:] = True
    cases["dog/e"] = (photo("dog/e"), m.astype(np.uint8))
    _npy(d / "masks" / "dog" / "e.npy", m)
    m = _disc(14, 9, 6).astype(np.float32)                         # float 0/1 .npy, like the IN-9 release
    cases["cat/f"] = (photo("cat/f"), m.astype(np.uint8))
    _npy(d / "masks" / "cat" / "f.npy", m)
    return d / "img", d / "masks", cases


@pytest.fixture(scope="module")
def good_store(good, tmp_path_factory):
    images, masks, _ = good
    out = tmp_path_factory.mktemp("gs") / "s.h5"
    summary = extract(images, None, out, masks=masks, config=IDENTITY, workers=1, progress=False)
    return out, summary


# --------------------------------------------------------------------------------------------- exact pixels
def test_given_masks_reproduce_foregrounds_and_only_bg_t_exactly(good, good_store):
    _, _, cases = good
    out, summary = good_store
    assert (summary.foregrounds, summary.backgrounds) == (6, 6) and not summary.reasons
    with Store(out) as s:
        assert s.class_names == ("cat", "dog")
        assert sorted(s.foregrounds.source_ids) == sorted(cases)
        for i, sid in enumerate(s.foregrounds.source_ids):
            img, obj = cases[sid]
            assert s.foregrounds.labels[i] == s.class_names.index(sid.split("/")[0])
            assert np.array_equal(s.foregrounds.read([i])[0], img), sid
            assert np.array_equal(s.foregrounds.read_masks([i])[0], obj), sid
            assert tuple(s.foregrounds.boxes[i]) == hand_box(obj), sid
            j = s.backgrounds.source_ids.index(sid)
            assert np.array_equal(s.backgrounds.read([j])[0], hand_only_bg_t(img, hand_box(obj))), sid


def test_box_from_a_mask_is_its_tight_bound(good, good_store):
    """Every side of the derived box touches an object pixel, and no object pixel lies outside it."""
    _, _, cases = good
    with Store(good_store[0]) as s:
        for i, sid in enumerate(s.foregrounds.source_ids):
            obj = cases[sid][1]
            x0, y0, x1, y1 = s.foregrounds.boxes[i]
            inside = np.zeros_like(obj)
            inside[y0:y1, x0:x1] = 1
            assert not (obj & (1 - inside)).any(), sid
            assert obj[y0, x0:x1].any() and obj[y1 - 1, x0:x1].any(), sid
            assert obj[y0:y1, x0].any() and obj[y0:y1, x1 - 1].any(), sid


def test_composites_use_the_given_mask(good, good_store):
    _, _, cases = good
    with Store(good_store[0]) as s:
        n = len(s.foregrounds)
        only_fg = make_variant(s, "only_fg", np.arange(n))
        mixed = make_variant(s, "mixed_rand", np.arange(n), rng_seed=3)
        bg_t = make_variant(s, "only_bg_t", np.arange(n))
        for i, sid in enumerate(s.foregrounds.source_ids):
            img, obj = cases[sid]
            assert np.array_equal(only_fg.images[i], hand_composite(img, obj, 0)), sid
            other = s.backgrounds.read([mixed.bg_id[i]])[0]
            assert np.array_equal(mixed.images[i], hand_composite(img, obj, other)), sid
            assert np.array_equal(bg_t.images[i], hand_only_bg_t(img, hand_box(obj))), sid
        assert set(only_fg.mask_source) == {f"given:{Path(good[1]).resolve().as_posix()}"}


def test_given_mask_follows_the_image_through_resize_and_crop(tmp_path):
    """60x70 photo, resize 48, crop 40: the mask is resized like the image (area average of 0/255), kept where
    >= 128, then cropped; reference computed with cv2 directly (new size 48x56, crop offsets top 4, left 8)."""
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (60, 70, 3), dtype=np.uint8)
    mask = np.zeros((60, 70), np.uint8)
    cv2.ellipse(mask, (33, 29), (17, 12), 20, 0, 360, 1, -1)
    save_png(tmp_path / "img" / "cat" / "p.png", img)
    _npy(tmp_path / "m" / "cat" / "p.npy", mask)
    extract(tmp_path / "img", None, tmp_path / "s.h5", masks=tmp_path / "m", config=ExtractConfig(resize=48, crop=40),
            workers=1, progress=False)
    want_img = cv2.resize(img, (56, 48), interpolation=cv2.INTER_AREA)[4:44, 8:48]
    want_mask = (cv2.resize(mask * 255, (56, 48), interpolation=cv2.INTER_AREA)[4:44, 8:48] >= 128).astype(np.uint8)
    with Store(tmp_path / "s.h5") as s:
        assert np.array_equal(s.foregrounds.read([0])[0], want_img)
        assert np.array_equal(s.foregrounds.read_masks([0])[0], want_mask)


# --------------------------------------------------------------------------------------------- bad masks
@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    """One photo per bad-mask reason (two for unreadable), plus a good one and a stray mask."""
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(3)
    for sid in ("c/good", "c/corrupt", "c/colour", "c/fraction", "c/cube", "c/size", "c/empty", "c/full",
                "c/nomask"):
        save_png(d / "img" / f"{sid}.png", rng.integers(0, 256, (S, S, 3), dtype=np.uint8))
    _npy(d / "m" / "c" / "good.npy", _disc(12, 12, 6))
    (d / "m" / "c" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    colour = np.zeros((S, S, 3), np.uint8)
    colour[5:10, 5:10] = (255, 0, 0)
    _png(d / "m" / "c" / "colour.png", colour)
    _npy(d / "m" / "c" / "fraction.npy", _disc(12, 12, 6) * np.float32(0.5))
    _npy(d / "m" / "c" / "cube.npy", np.ones((S, S, 3), np.uint8))
    _npy(d / "m" / "c" / "size.npy", _disc(12, 12, 6, size=S + 1)[:, :S])
    _npy(d / "m" / "c" / "empty.npy", np.zeros((S, S), np.uint8))
    _png(d / "m" / "c" / "full.png", np.full((S, S), 255, np.uint8))
    _npy(d / "m" / "c" / "stray.npy", _disc(12, 12, 6))                 # matches no image
    _npy(d / "m" / "elsewhere" / "good2.npy", _disc(12, 12, 6))         # nor does this one
    out = d / "s.h5"
    return extract(d / "img", None, out, masks=d / "m", config=IDENTITY, workers=1, progress=False), out


def test_every_bad_mask_reason_is_counted(bad_run):
    summary, out = bad_run
    assert dict(summary.reasons) == {"mask_unreadable": 4, "mask_size": 1, "mask_empty": 1, "mask_full": 1,
                                     "mask_missing": 1, "mask_no_image": 2}
    assert (summary.images, summary.foregrounds, summary.backgrounds) == (9, 1, 1)
    with h5py.File(out, "r") as f:
        log = dict(zip((s.decode() for s in f["extract_log/source_id"][()]),
                       (s.decode() for s in f["extract_log/outcome"][()])))
        stored = json.loads(f.attrs["extract_summary"])
    assert log == {"c/good": "fg+bg", "c/corrupt": "none;mask_unreadable", "c/colour": "none;mask_unreadable",
                   "c/fraction": "none;mask_unreadable", "c/cube": "none;mask_unreadable",
                   "c/size": "none;mask_size", "c/empty": "none;mask_empty", "c/full": "none;mask_full",
                   "c/nomask": "none;mask_missing"}
    assert stored["dropped"] == dict(summary.reasons)
    text = summary.format()
    for reason in summary.reasons:
        assert reason in text


def test_instance_overlapping_the_box_most_is_the_object(tmp_path):
    """With --boxes too, the box picks the instance (not the largest one); photos without a mask use GrabCut."""
    rng = np.random.default_rng(8)
    img, drawn = draw_object(rng, 64, 64, (30, 28, 58, 60))
    save_png(tmp_path / "img" / "p.png", img)
    save_png(tmp_path / "img" / "q.png", img)
    ids = np.zeros((64, 64), np.uint8)
    ids[0:28, 0:28] = 1                                            # the largest instance, outside the box
    ids[drawn > 0] = 2                                             # the boxed object
    _png(tmp_path / "m" / "p.png", ids)
    boxes = write_csv(tmp_path / "b.csv", [("p.png", 30, 28, 58, 60, "cat"), ("q.png", 30, 28, 58, 60, "cat")])
    summary = extract(tmp_path / "img", boxes, tmp_path / "s.h5", masks=tmp_path / "m",
                      config=ExtractConfig(resize=0, crop=64), workers=1, progress=False)
    assert summary.foregrounds == 2
    with Store(tmp_path / "s.h5") as s:
        assert s.foregrounds.source_ids == ["p", "q"]
        assert np.array_equal(s.foregrounds.read_masks([0])[0], drawn)
        assert tuple(s.foregrounds.boxes[0]) == (30, 28, 58, 60)       # the given box is kept
        assert np.array_equal(s.backgrounds.read([0])[0], hand_only_bg_t(img, (30, 28, 58, 60)))
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert [v.decode() for v in f["foregrounds/mask_source"][()]] == [
            f"given:{(tmp_path / 'm').resolve().as_posix()}", "grabcut"]


def test_no_instance_in_the_box_is_an_empty_mask(tmp_path):
    save_png(tmp_path / "img" / "p.png", np.zeros((S, S, 3), np.uint8) + 90)
    ids = np.zeros((S, S), np.uint8)
    ids[0:5, 0:5], ids[0:5, 19:24] = 1, 2
    _png(tmp_path / "m" / "p.png", ids)
    boxes = write_csv(tmp_path / "b.csv", [("p.png", 8, 10, 16, 20, "cat")])
    summary = extract(tmp_path / "img", boxes, tmp_path / "s.h5", masks=tmp_path / "m", config=IDENTITY, workers=1,
                      progress=False)
    assert dict(summary.reasons) == {"mask_empty": 1}


# --------------------------------------------------------------------------------------------- the filters
def test_filters_apply_to_given_masks(tmp_path):
    """reference: < 10% of the box -> fg_mask_small, box > 90% -> bg_box_large; sehwag: > 70% -> fraction_large."""
    rng = np.random.default_rng(4)
    thin = np.zeros((S, S), np.uint8)
    thin[4:16, 4:16] = np.eye(12, dtype=np.uint8)                 # a diagonal: 12 pixels of a 144-pixel box
    masks = {"thin": thin,
             "huge": np.pad(np.ones((S - 1, S - 1), np.uint8), ((0, 1), (0, 1))),  # mask = box = 91.8%
             "fine": _disc(12, 12, 5)}
    for name, m in masks.items():
        save_png(tmp_path / "img" / "c" / f"{name}.png", rng.integers(0, 256, (S, S, 3), dtype=np.uint8))
        _npy(tmp_path / "m" / "c" / f"{name}.npy", m)

    def codes(cfg, out):
        extract(tmp_path / "img", None, tmp_path / out, masks=tmp_path / "m", config=cfg, workers=1, progress=False)
        with h5py.File(tmp_path / out, "r") as f:
            return dict(zip((s.decode() for s in f["extract_log/source_id"][()]),
                            (s.decode() for s in f["extract_log/outcome"][()])))
    assert codes(IDENTITY, "r.h5") == {"c/fine": "fg+bg", "c/huge": "fg;bg_box_large", "c/thin": "bg;fg_mask_small"}
    sehwag = ExtractConfig(resize=0, crop=S, filter="sehwag")
    assert codes(sehwag, "s.h5") == {"c/fine": "fg+bg", "c/huge": "none;fraction_large", "c/thin": "none;mask_small"}


# --------------------------------------------------------------------------------------------- provenance
def test_mask_source_is_visible_with_plain_h5py(good, good_store):
    want = f"given:{Path(good[1]).resolve().as_posix()}"
    with h5py.File(good_store[0], "r") as f:
        sources = [v.decode() for v in f["foregrounds/mask_source"][()]]
        assert sources == [want] * f["foregrounds/image"].shape[0]
        assert json.loads(f.attrs["extract_summary"])["mask_sources"] == {want: 6}


def test_variant_sets_record_the_mask_source(good, good_store, tmp_path):
    want = f"given:{Path(good[1]).resolve().as_posix()}"
    write_variants(good_store[0], tmp_path / "sets", names=["only_fg", "only_bg_t"], progress=False)
    with open(tmp_path / "sets" / "only_fg" / "manifest.csv") as fh:
        assert {row["mask_source"] for row in csv.DictReader(fh)} == {want}
    assert json.loads(json.loads((tmp_path / "sets" / "variants.json").read_text())["mask_sources"]) == {want: 6}
    write_variants(good_store[0], tmp_path / "v.h5", names=["mixed_rand"], progress=False)
    with h5py.File(tmp_path / "v.h5", "r") as f:
        g = f["evalsets/mixed_rand"]
        assert [v.decode() for v in g["mask_source"][()]] == [want] * 6
        assert json.loads(g.attrs["mask_sources"]) == {want: 6}


def test_stores_without_mask_sources_still_read(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    masks = np.zeros((2, 16, 16), np.uint8)
    masks[:, 4:12, 4:12] = 1
    write_store(tmp_path / "old.h5", class_names=["a", "b"], fg_images=imgs, fg_masks=masks, fg_labels=[0, 1],
                bg_images=imgs, bg_labels=[0, 1])
    with Store(tmp_path / "old.h5") as s:
        assert make_variant(s, "only_fg", [0, 1]).mask_source == ["unrecorded", "unrecorded"]


# --------------------------------------------------------------------------------------------- CLI
def test_cli_extract_with_masks(good, tmp_path, capsys):
    images, masks, _ = good
    code, out, _ = run(["extract", str(images), "--masks", str(masks), "--out", str(tmp_path / "c.h5"),
                        "--resize", "0", "--crop", str(S), "--workers", "1", "-q"], capsys)
    assert code == 0 and "6 photos -> 6 foregrounds, 6 backgrounds" in out and "given:" in out
    code, out, _ = run(["extract", "--help"], capsys)
    assert code == 0 and "--masks" in out and "tight bound" in " ".join(out.split())


def test_cli_extract_needs_boxes_or_masks(good, tmp_path, capsys):
    code, _, err = run(["extract", str(good[0]), "--out", str(tmp_path / "c.h5")], capsys)
    assert_one_line_error(code, err, "--boxes, --masks or both")
    flat = tmp_path / "flat"
    save_png(flat / "p.png", np.zeros((S, S, 3), np.uint8))
    code, _, err = run(["extract", str(flat), "--masks", str(good[1]), "--out", str(tmp_path / "c.h5")], capsys)
    assert_one_line_error(code, err, "class folders")
    assert not (tmp_path / "c.h5").exists()


def test_instance_ties_go_to_the_smaller_id():
    from advbg.data.extract import choose_object

    ids = np.zeros((6, 6), np.uint8)
    ids[0:2, 0:2], ids[4:6, 4:6] = 5, 3
    assert np.array_equal(choose_object(ids), (ids == 3).astype(np.uint8))
    assert np.array_equal(choose_object(ids, (0, 0, 3, 3)), (ids == 5).astype(np.uint8))


# --------------------------------------------------------------------------------------------- resume
def test_resume_keeps_one_mask_source_per_foreground(good, tmp_path, monkeypatch):
    import advbg.data.extract as ex
    from advbg.errors import AdvbgError

    images, masks, _ = good
    real, seen = ex.process_photo, []

    def flaky(job, cfg):
        if len(seen) == 3:
            raise KeyboardInterrupt
        seen.append(job.source_id)
        return real(job, cfg)
    monkeypatch.setattr(ex, "process_photo", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract(images, None, tmp_path / "r.h5", masks=masks, config=IDENTITY, workers=1, progress=False)
    monkeypatch.setattr(ex, "process_photo", real)
    other = tmp_path / "other_masks"
    other.mkdir()
    with pytest.raises(AdvbgError, match="other options, inputs"):
        extract(images, None, tmp_path / "r.h5", masks=other, config=IDENTITY, workers=1, resume=True,
                progress=False)
    summary = extract(images, None, tmp_path / "r.h5", masks=masks, config=IDENTITY, workers=1, resume=True,
                      progress=False)
    assert summary.processed_now == 3 and summary.mask_sources == {f"given:{masks.resolve().as_posix()}": 6}
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert f["foregrounds/mask_source"].shape == f["foregrounds/source_id"].shape == (6,)


# --------------------------------------------------------------------------------------------- docs/data.md
def test_the_docs_example_prints_what_the_docs_show(tmp_path, capsys):
    """docs/data.md: photos/dog/*.JPEG + masks/dog/*.png (0/255), photos/bird/*.JPEG + masks/bird/*.npy (0/1)."""
    rng = np.random.default_rng(1)
    for folder, stem, ext in (("dog", "n02085620_10074", ".png"), ("bird", "n01530575_1023", ".npy")):
        img = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
        (tmp_path / "photos" / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / "photos" / folder / f"{stem}.JPEG", "JPEG")
        mask = np.zeros((300, 400), np.uint8)
        mask[60:260, 100:330] = 1
        (_png if ext == ".png" else _npy)(tmp_path / "masks" / folder / f"{stem}{ext}",
                                          mask * 255 if ext == ".png" else mask)
    code, out, _ = run(["extract", str(tmp_path / "photos"), "--masks", str(tmp_path / "masks"), "--classes", "in9",
                        "--out", str(tmp_path / "mine.h5"), "--workers", "1", "-q"], capsys)
    assert code == 0
    assert f"wrote {tmp_path / 'mine.h5'}: 2 photos -> 2 foregrounds, 2 backgrounds (both 2," in out
    assert f"  foreground masks: 2 given:{(tmp_path / 'masks').resolve().as_posix()}" in out
    with h5py.File(tmp_path / "mine.h5") as f:
        assert f["foregrounds/mask_source"][0].decode() == f"given:{(tmp_path / 'masks').resolve().as_posix()}"
        assert [v.decode() for v in f["class_names"][()]][:2] == ["dog", "bird"]


def test_oversized_masks_are_refused_from_their_header(tmp_path):
    from advbg.data.extract import BadMask, read_mask

    _npy(tmp_path / "m.npy", np.ones((20, 20), np.uint8))
    _png(tmp_path / "m.png", np.full((20, 20), 255, np.uint8))
    for name in ("m.npy", "m.png"):
        assert read_mask(tmp_path / name).shape == (20, 20)
        with pytest.raises(BadMask, match="more than the limit") as e:
            read_mask(tmp_path / name, max_pixels=399)
        assert e.value.reason == "mask_unreadable"
