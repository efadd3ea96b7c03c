"""Hazard: a store shared by someone else whose class names or source ids hold path tricks ('../', '/').
Commands that turn names into files must write nothing outside their output folder (or refuse the store)."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from conftest import make_tiny_classifier

from advbg.data.store import Store
from advbg.data.writer import write_store
from advbg.errors import AdvbgError
from advbg.models.label_map import identity_map
from advbg.search.config import SearchConfig
from advbg.search.runner import search

HOSTILE = "x/../../../../escape"


def snapshot(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = "dir" if os.path.isdir(p) else hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


@pytest.fixture
def hostile(tmp_path):
    """tmp/a/b/s.h5: 9 classes, class 0 named with '../', every item of class 0, source ids with '/' and '..'."""
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 32, 32), np.uint8)
    masks[:, 8:24, 8:24] = 1
    (tmp_path / "a" / "b").mkdir(parents=True)
    path = write_store(tmp_path / "a" / "b" / "s.h5", class_names=[HOSTILE] + [f"c{i}" for i in range(1, 9)],
                       fg_images=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), fg_masks=masks,
                       fg_labels=[0] * 4, bg_images=rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8),
                       bg_labels=[0] * 5, fg_source_ids=[f"../../../fg{i}" for i in range(4)],
                       bg_source_ids=[f"/tmp/bg{j}" for j in range(5)])
    clf = make_tiny_classifier()
    clf.label_map = identity_map(list(Store(path).class_names))   # the model's classes are the store's, hostile names too
    with Store(path, "r+") as s:
        search(s, clf, SearchConfig(), results_name="r", progress=False)
    return tmp_path, path


def _writes_only_inside(tmp_path, out, fn):
    before = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("a/b/out")}
    try:
        fn()
    except AdvbgError:
        pass  # refusing the store is an acceptable outcome
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("a/b/out")}
    assert after == before, sorted(set(after) ^ set(before))


def test_export_writes_nothing_outside_its_folder(hostile):
    from advbg.train.export import ExportConfig, export

    tmp_path, store = hostile
    out = tmp_path / "a" / "b" / "out"
    _writes_only_inside(tmp_path, out, lambda: export(store, out, results="r",
                                                      config=ExportConfig(include_unfooled=True)))


def test_variants_writes_nothing_outside_its_folder(hostile):
    from advbg.data.variants import write_variants

    tmp_path, store = hostile
    out = tmp_path / "a" / "b" / "out"
    _writes_only_inside(tmp_path, out, lambda: write_variants(store, out, fmt="folder", names=["only_fg"],
                                                              progress=False))


def test_source_ids_with_path_tricks_round_trip_as_plain_text(hostile):
    """Stored names are data, never paths: they come back byte for byte."""
    _, store = hostile
    with Store(store) as s:
        assert s.class_names[0] == HOSTILE
        assert s.foregrounds.source_ids == [f"../../../fg{i}" for i in range(4)]
        assert s.backgrounds.source_ids[0] == "/tmp/bg0"
