"""Hazard: NaN/inf composites in the stored outcome matrix. The search counts them as never fooled; the analyses
that read the matrix afterwards (universal, export) must too, so the matrix marks them (OUTCOME_INVALID) instead of
recording their argmax as a prediction. Reference: the same analyses on a search that never saw them."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_hazard_nonfinite_logits import N_FG, POISON, classifier, store  # noqa: F401 (store: fixture)

from advbg.analysis.universal import fooled_matrix
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.search.config import SearchConfig
from advbg.search.criteria import OUTCOME_INVALID, Criterion, asr
from advbg.search.results import load_outcome
from advbg.search.runner import search
from advbg.train.export import background_fooling, export

CLEAN = [j for j in range(6) if j not in POISON]


def _outcome(path, kind, backgrounds=None, name="r"):
    with Store(path, mode="r+") as s:
        search(s, classifier(kind), SearchConfig(backgrounds=backgrounds), results_name=name, progress=False)
        o, fg, pool = load_outcome(s, name)
        return o, s.foregrounds.labels[fg], s.backgrounds.labels[pool]


@pytest.fixture
def copy(store, tmp_path):  # noqa: F811
    return shutil.copy(store, tmp_path / "s.h5")


@pytest.mark.parametrize("kind", ["inf", "nan"])
def test_invalid_pairs_are_marked_in_the_outcome_matrix(copy, kind):
    o, _, _ = _outcome(copy, kind)
    assert (o[:, POISON] == OUTCOME_INVALID).all()
    assert not (o[:, CLEAN] == OUTCOME_INVALID).any()


@pytest.mark.parametrize("kind", ["inf", "nan"])
@pytest.mark.parametrize("criterion", ["any", "bg-class"])
def test_analyses_never_count_invalid_pairs_as_fooled(copy, tmp_path, kind, criterion):
    o, fg_class, bg_class = _outcome(copy, kind)
    clean_path = shutil.copy(copy, tmp_path / "clean.h5")
    oc, _, _ = _outcome(clean_path, kind, backgrounds=tuple(CLEAN), name="clean")
    fooled = Criterion(criterion).fooled_outcome(o, fg_class, bg_class)
    assert not fooled[:, POISON].any()
    assert np.array_equal(fooled[:, CLEAN], Criterion(criterion).fooled_outcome(oc, fg_class, bg_class[CLEAN]))
    fm = fooled_matrix(o, fg_class, bg_class, criterion)
    assert not fm[:, POISON].any()
    assert np.array_equal(fm[:, CLEAN], fooled_matrix(oc, fg_class, bg_class[CLEAN], criterion))
    stats = background_fooling(o, fg_class, bg_class, criterion)
    assert (stats["n_fooled"][POISON] == 0).all()
    a = asr(o, fg_class, bg_class, criterion)
    assert np.allclose(a[POISON], 0.0)


def test_universal_gives_invalid_backgrounds_asr_zero(copy, capsys):
    from advbg.commands.universal import run_universal

    res = run_universal(copy, classifier("inf"), criterion="any", top_png="-", hist_png="-", progress=False,
                        echo=lambda *_: None)
    for c in res.classes:
        for b, a in zip(c.bg_id, c.asr):
            if b in POISON:   # the model predicts class 0 on them, which `any` would call fooled
                assert a == 0.0, (c.class_name, b, a)


def test_export_manifest_counts_only_valid_fooling(copy, tmp_path):
    o, fg_class, bg_class = _outcome(copy, "inf", name="tinynet")
    out = export(copy, tmp_path / "exp", results="tinynet")
    rows = [r for r in out.rows if r["kind"] == "background"]
    assert all(r["bg_id"] not in POISON for r in rows)
    expected = Criterion("any").fooled_outcome(o, fg_class, bg_class)[:, CLEAN].sum()
    assert sum(r["n_fooled"] for r in rows) == expected


def test_a_matrix_that_records_invalid_pairs_as_predictions_is_refused(copy, tmp_path):
    _outcome(copy, "inf", name="old")
    import h5py

    from advbg.data.sidecar import sidecar_files

    with h5py.File(sidecar_files(copy, "results")["old"], "r+") as f:   # what a search before OUTCOME_INVALID
        o = f["outcome"][()]                                             # stored: the argmax (class 0)
        o[o == OUTCOME_INVALID] = 0
        f["outcome"][...] = o
    with pytest.raises(AdvbgError, match="predates invalid pairs being marked"):
        export(copy, tmp_path / "exp", results="old")
    assert N_FG == len(o)
