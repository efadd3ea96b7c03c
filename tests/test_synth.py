"""The synthetic store: exact masks, Only-BG-T backgrounds, a controllable background-class correlation."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from advbg.cli import main
from advbg.data.segment import only_bg_t
from advbg.data.store import Store
from advbg.data.synth import (
    SHAPES,
    SynthConfig,
    make_synthetic,
    render_photo,
    shape_mask,
)
from advbg.errors import AdvbgError


def test_photo_is_the_shape_colour_exactly_under_its_mask_and_the_clean_background_elsewhere():
    cfg = SynthConfig(n_classes=9, image_size=32)
    rng = np.random.default_rng(3)
    for i in range(36):
        ph = render_photo(cfg, i % 9, rng)
        m = ph.mask.astype(bool)
        assert set(np.unique(ph.mask)) == {0, 1}
        assert (ph.image[m] == ph.colour).all()
        assert (ph.image[~m] == ph.clean_background[~m]).all()
        ys, xs = np.nonzero(ph.mask)
        assert ph.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_every_shape_draws_a_distinct_non_empty_mask():
    masks = {name: shape_mask(name, 32, (16.0, 16.0), 11.0, 0.3) for name in SHAPES}
    for name, m in masks.items():
        assert 0.1 < m.mean() < 0.5, name
    flat = [m.tobytes() for m in masks.values()]
    assert len(set(flat)) == len(SHAPES)


def test_store_holds_photos_masks_and_their_only_bg_t_backgrounds(tmp_path):
    cfg = SynthConfig(n_classes=3, n_per_class=4, image_size=24, seed=5)
    path = make_synthetic(tmp_path / "s.h5", cfg)
    with Store(path) as s:
        assert s.class_names == ("circle", "square", "triangle")
        assert len(s.foregrounds) == len(s.backgrounds) == 12
        assert s.foregrounds.labels.tolist() == [i % 3 for i in range(12)]
        assert s.backgrounds.labels.tolist() == s.foregrounds.labels.tolist()
        assert s.foregrounds.source_ids == s.backgrounds.source_ids
        imgs, masks, bgs = s.foregrounds.read(slice(None)), s.foregrounds.read_masks(slice(None)), \
            s.backgrounds.read(slice(None))
        for i in range(12):
            box = s.foregrounds.boxes[i]
            assert (bgs[i] == only_bg_t(imgs[i], box)).all()
            ys, xs = np.nonzero(masks[i])
            assert tuple(box) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    with h5py.File(path) as f:
        assert f["synth/style"].shape == (12,)


def test_correlation_sets_how_often_the_background_style_is_the_class_style():
    def match(correlation: float, n: int = 600) -> float:
        cfg = SynthConfig(n_classes=6, correlation=correlation)
        rng = np.random.default_rng(0)
        return float(np.mean([render_photo(cfg, i % 6, rng).style == i % 6 for i in range(n)]))

    assert match(1.0) == 1.0
    assert abs(match(0.0) - 1 / 6) < 0.06
    assert abs(match(0.9) - SynthConfig(n_classes=6, correlation=0.9).match_probability) < 0.04


def test_same_seed_same_pixels_other_seed_other_pixels(tmp_path):
    cfg = SynthConfig(n_classes=2, n_per_class=3, image_size=16)
    a = make_synthetic(tmp_path / "a.h5", cfg)
    b = make_synthetic(tmp_path / "b.h5", cfg)
    c = make_synthetic(tmp_path / "c.h5", SynthConfig(n_classes=2, n_per_class=3, image_size=16, seed=1))
    with Store(a) as sa, Store(b) as sb, Store(c) as sc:
        assert sa.digest() == sb.digest()
        assert sa.digest() != sc.digest()


@pytest.mark.parametrize("kw, match", [(dict(n_classes=1), "classes"), (dict(n_classes=10), "classes"),
                                       (dict(correlation=1.5), "correlation"), (dict(image_size=8), "image size"),
                                       (dict(n_per_class=0), "per-class"), (dict(n_per_class=10**9), "per-class"),
                                       (dict(image_size=10**6), "image size"), (dict(seed=-1), "seed")])
def test_bad_settings_are_refused(tmp_path, kw, match):
    with pytest.raises(AdvbgError, match=match):
        make_synthetic(tmp_path / "x.h5", SynthConfig(**kw))
    assert not (tmp_path / "x.h5").exists()


def test_cli_synth_writes_once_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "s.h5"
    main(["synth", "--out", str(out), "--classes", "2", "--per-class", "2", "--size", "16"])
    assert "4 photos of 2 classes" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["synth", "--out", str(out), "--classes", "2", "--per-class", "2", "--size", "16"])
    assert e.value.code == 1
    assert "already exists" in capsys.readouterr().err
