"""extract: drawn photos + boxes -> store; GrabCut recovers the drawn shape; every filter drops for its reason."""
from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_data import draw_object, run_cli, save_png, write_csv, write_voc

import advbg.data.extract as ex
from advbg.data import segment
from advbg.data.extract import ExtractConfig, extract
from advbg.data.store import Store
from advbg.errors import AdvbgError

CFG = ExtractConfig(resize=128, crop=112)   # the reference 256/224 geometry at half size: faster, same logic
SEHWAG = ExtractConfig(resize=128, crop=112, filter="sehwag")


def _expected_mask(mask: np.ndarray, box, cfg: ExtractConfig) -> np.ndarray:
    m3 = np.repeat(mask[..., None] * 255, 3, axis=2).astype(np.uint8)
    return segment.resize_crop(m3, box, cfg.resize, cfg.crop)[0][..., 0] > 127


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Four clean photos (two shapes, two classes) plus their CSV boxes; {source id: drawn mask}."""
    d = tmp_path_factory.mktemp("drawn")
    rng = np.random.default_rng(0)
    rows, masks = [], {}
    for i, (h, w, box, shape, label) in enumerate([
            (150, 180, (50, 30, 130, 120), "ellipse", "cat"), (140, 140, (30, 40, 100, 110), "diamond", "cat"),
            (160, 130, (25, 35, 105, 125), "ellipse", "dog"), (130, 170, (60, 20, 140, 100), "diamond", "dog")]):
        img, mask = draw_object(rng, h, w, box, shape)
        save_png(d / "img" / label / f"p{i}.png", img)
        rows.append((f"{label}/p{i}.png", *box, label))
        masks[f"{label}/p{i}"] = (mask, box)
    return d / "img", write_csv(d / "boxes.csv", rows), masks


def test_grabcut_recovers_drawn_shape(drawn, tmp_path):
    images, boxes, masks = drawn
    summary = extract(images, boxes, tmp_path / "s.h5", config=CFG, workers=1, progress=False)
    assert (summary.foregrounds, summary.backgrounds, summary.outcomes["fg+bg"]) == (4, 4, 4)
    with Store(tmp_path / "s.h5") as s:
        assert s.class_names == ("cat", "dog") and s.image_size == (112, 112)
        assert s.foregrounds.labels.tolist() == [0, 0, 1, 1]
        for i, sid in enumerate(s.foregrounds.source_ids):
            want = _expected_mask(*masks[sid], CFG)
            got = s.foregrounds.read_masks([i])[0] > 0
            assert (want & got).sum() / (want | got).sum() >= 0.8, sid
            x0, y0, x1, y1 = s.foregrounds.boxes[i]
            assert s.backgrounds.source_ids[i] == sid
            assert np.array_equal(s.backgrounds.read([i])[0],
                                  segment.only_bg_t(s.foregrounds.read([i])[0], (x0, y0, x1, y1)))


def test_workers_do_not_change_the_store(drawn, tmp_path):
    images, boxes, _ = drawn
    extract(images, boxes, tmp_path / "a.h5", config=CFG, workers=1, progress=False)
    extract(images, boxes, tmp_path / "b.h5", config=CFG, workers=2, progress=False)
    with Store(tmp_path / "a.h5") as a, Store(tmp_path / "b.h5") as b:
        assert a.digest() == b.digest()
        assert a.foregrounds.source_ids == b.foregrounds.source_ids


# --------------------------------------------------------------------------------------------- filters
def _filter_set(d, rng):
    """One photo per reason; returns (images folder, csv)."""
    rows = []

    def photo(name, h, w, box, label="cat", extra_boxes=(), shape="ellipse", write_box=True):
        img, _ = draw_object(rng, h, w, box, shape)
        save_png(d / f"{name}.png", img)
        if write_box:
            rows.append((f"{name}.png", *box, label))
        rows.extend((f"{name}.png", *b, label) for b in extra_boxes)
        return img

    photo("good", 140, 140, (35, 35, 105, 105))
    photo("two_boxes", 140, 140, (35, 35, 105, 105), extra_boxes=[(0, 0, 20, 20)])
    photo("no_box", 140, 140, (35, 35, 105, 105), write_box=False)
    photo("unknown_label", 140, 140, (35, 35, 105, 105), label="zebra")
    photo("big_box", 120, 120, (8, 8, 112, 112))                 # box 96% of the crop: no background
    photo("edge", 100, 300, (0, 20, 60, 80))                     # the centre crop cuts the box away
    save_png(d / "flat.png", np.full((140, 140, 3), 120, np.uint8))  # nothing for GrabCut to find
    rows.append(("flat.png", 35, 35, 105, 105, "cat"))
    photo("bad_box", 140, 140, (35, 35, 105, 105), write_box=False)
    rows.append(("bad_box.png", 150, 150, 160, 160, "cat"))     # wholly outside the 140x140 photo
    (d / "corrupt.png").write_bytes(b"not a png")
    rows.append(("corrupt.png", 35, 35, 105, 105, "cat"))
    photo("tiny", 140, 140, (64, 64, 74, 74))                    # sehwag: foreground < 5% of the image
    photo("huge", 120, 120, (8, 8, 112, 112))                    # sehwag: foreground 75% of the image
    return d, write_csv(d.parent / "filters.csv", rows)


@pytest.fixture(scope="module")
def filter_photos(tmp_path_factory):
    return _filter_set(tmp_path_factory.mktemp("filters") / "img", np.random.default_rng(1))


def _outcomes(path):
    with Store(path) as s:
        log = s.file["extract_log"]
        return {a.decode(): b.decode() for a, b in zip(log["source_id"][()], log["outcome"][()])}


@pytest.fixture(scope="module")
def reference_run(filter_photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    return extract(*filter_photos, out, classes="cat,dog", config=CFG, workers=1, progress=False), out


@pytest.mark.parametrize("photo, outcome", [
    ("good", "fg+bg"),
    ("two_boxes", "none;box_count"),
    ("no_box", "none;box_count"),
    ("unknown_label", "none;unknown_label"),
    ("big_box", "fg;bg_box_large"),
    ("edge", "bg;fg_box_cropped"),
    ("flat", "bg;fg_mask_small"),
    ("corrupt", "none;unreadable"),
    ("bad_box", "none;bad_box"),
])
def test_reference_filter_drops_for_its_reason(reference_run, photo, outcome):
    _, out = reference_run
    assert _outcomes(out)[photo] == outcome


def test_summary_counts_every_reason_and_is_stored(reference_run):
    summary, out = reference_run
    assert summary.reasons["box_count"] == 2
    for reason in ("unknown_label", "bg_box_large", "fg_box_cropped", "fg_mask_small", "unreadable", "bad_box"):
        assert summary.reasons[reason] >= 1, reason
    text = summary.format()
    for reason in summary.reasons:
        assert reason in text
    with Store(out) as s:
        stored = json.loads(s.attrs["extract_summary"])
        assert stored["dropped"] == dict(summary.reasons) and stored["images"] == summary.images == 11
        assert json.loads(s.attrs["extract_config"])["filter"] == "reference"


@pytest.mark.parametrize("photo, outcome", [
    ("good", "fg+bg"), ("tiny", "none;fraction_small"), ("huge", "none;fraction_large"),
    ("flat", "none;mask_small"),
])
def test_sehwag_filter_keeps_foregrounds_of_5_to_70_percent(filter_photos, tmp_path_factory, photo, outcome):
    out = tmp_path_factory.getbasetemp() / "sehwag.h5"
    if not out.exists():
        extract(*filter_photos, out, classes="cat,dog", config=SEHWAG, workers=1, progress=False)
    assert _outcomes(out)[photo] == outcome


# --------------------------------------------------------------------------------------------- inputs
def test_voc_xml_with_imagenet_synsets_maps_to_in9(tmp_path):
    rng = np.random.default_rng(2)
    for name, synset in (("n02085620_1", "n02085620"), ("n01440764_7", "n01440764")):   # chihuahua, tench
        img, _ = draw_object(rng, 140, 140, (35, 35, 105, 105))
        save_png(tmp_path / "img" / f"{name}.JPEG.png", img)
        write_voc(tmp_path / "ann" / synset / f"{name}.xml", f"{name}.JPEG", (140, 140),
                  [(synset, (35, 35, 105, 105))])
    (tmp_path / "img" / "n02085620_1.JPEG.png").rename(tmp_path / "img" / "n02085620_1.png")
    (tmp_path / "img" / "n01440764_7.JPEG.png").rename(tmp_path / "img" / "n01440764_7.png")
    extract(tmp_path / "img", tmp_path / "ann", tmp_path / "s.h5", classes="in9", config=CFG, workers=1,
            progress=False)
    with Store(tmp_path / "s.h5") as s:
        labels = dict(zip(s.foregrounds.source_ids, s.foregrounds.labels.tolist()))
        assert labels == {"n01440764_7": 8, "n02085620_1": 0}
        assert len(s.class_names) == 9


def test_bad_inputs_are_one_line_errors(drawn, tmp_path, capsys):
    images, boxes, _ = drawn
    (tmp_path / "bad.csv").write_text("name,x,y\n")
    assert run_cli(["extract", str(images), "--boxes", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o.h5")]) == 1
    assert "header must be file,xmin,ymin,xmax,ymax,label" in capsys.readouterr().err
    assert run_cli(["extract", str(images), "--boxes", str(boxes), "--out", str(tmp_path / "o.h5"),
                    "--filter", "magic"]) == 1
    assert "--filter must be one of reference, sehwag" in capsys.readouterr().err
    assert not (tmp_path / "o.h5").exists()


def test_cli_extract_prints_the_summary(drawn, tmp_path, capsys):
    images, boxes, _ = drawn
    code = run_cli(["extract", str(images), "--boxes", str(boxes), "--out", str(tmp_path / "c.h5"),
                    "--resize", "128", "--crop", "112", "--workers", "1", "-q"])
    assert code == 0
    assert "4 photos -> 4 foregrounds, 4 backgrounds" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- resume
def test_interrupted_run_resumes_without_redoing_finished_photos(drawn, tmp_path, monkeypatch):
    images, boxes, _ = drawn
    real, seen = ex.process_photo, []

    def flaky(job, cfg):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(job.source_id)
        return real(job, cfg)
    monkeypatch.setattr(ex, "process_photo", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract(images, boxes, tmp_path / "r.h5", config=CFG, workers=1, progress=False)
    assert not (tmp_path / "r.h5").exists() and (tmp_path / ".r.h5.partial").exists()

    first, calls = list(seen), []
    monkeypatch.setattr(ex, "process_photo", lambda job, cfg: calls.append(job.source_id) or real(job, cfg))
    summary = extract(images, boxes, tmp_path / "r.h5", config=CFG, workers=1, resume=True, progress=False)
    assert not set(calls) & set(first) and len(calls) == 2
    assert summary.images == 4 and summary.processed_now == 2
    extract(images, boxes, tmp_path / "once.h5", config=CFG, workers=1, progress=False)
    with Store(tmp_path / "r.h5") as a, Store(tmp_path / "once.h5") as b:
        assert a.digest() == b.digest()


def test_resume_with_other_options_is_refused(drawn, tmp_path, monkeypatch):
    images, boxes, _ = drawn
    monkeypatch.setattr(ex, "process_photo", lambda job, cfg: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        extract(images, boxes, tmp_path / "r.h5", config=CFG, workers=1, progress=False)
    with pytest.raises(AdvbgError, match="other options"):
        extract(images, boxes, tmp_path / "r.h5", config=SEHWAG, workers=1, resume=True, progress=False)


def test_photo_interrupted_between_its_foreground_and_background_is_redone(drawn, tmp_path, monkeypatch):
    from advbg.data.writer import StoreWriter

    images, boxes, _ = drawn
    real, calls = StoreWriter.add_background, []

    def flaky(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the second photo's foreground is written, its background is not
        return real(self, *a, **k)
    monkeypatch.setattr(StoreWriter, "add_background", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract(images, boxes, tmp_path / "r.h5", config=CFG, workers=1, progress=False)
    monkeypatch.setattr(StoreWriter, "add_background", real)
    summary = extract(images, boxes, tmp_path / "r.h5", config=CFG, workers=1, resume=True, progress=False)
    assert summary.processed_now == 3 and summary.images == 4
    extract(images, boxes, tmp_path / "once.h5", config=CFG, workers=1, progress=False)
    with Store(tmp_path / "r.h5") as a, Store(tmp_path / "once.h5") as b:
        assert a.digest() == b.digest() and a.foregrounds.source_ids == b.foregrounds.source_ids


def test_absurd_worker_counts_are_refused_before_any_work(drawn, tmp_path):
    images, boxes = drawn[:2]
    with pytest.raises(AdvbgError, match="--workers must be between 1 and"):
        extract(images, boxes, tmp_path / "s.h5", config=CFG, workers=10**16, progress=False)
    assert not list(tmp_path.glob("s.h5*"))
