"""`advbg export`: manifests equal the stored results item by item; PNG/HDF5 pixels are exact; safe output."""
from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest

from advbg.cli import main
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.search.config import SearchConfig
from advbg.search.results import load_outcome, load_search
from advbg.search.runner import search
from advbg.train import export as export_mod
from advbg.train.export import ExportConfig, background_fooling, export


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A random store with two exhaustive searches ('any', 'bg-class') and one early-exit search (read-only)."""
    from conftest import make_random_store, make_tiny_classifier

    path = make_random_store(tmp_path_factory.mktemp("searched") / "store.h5", n_fg=12, n_bg=15, seed=4)
    clf = make_tiny_classifier()
    with Store(path, "r+") as s:
        for crit in ("any", "bg-class"):
            search(s, clf, SearchConfig(criterion=crit, batch_size=64), results_name=crit, progress=False)
        search(s, clf, SearchConfig(mode="early-exit", record_outcomes=False), results_name="early", progress=False)
    return path


def _png(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)


def _manifest(out) -> list[dict]:
    with open(out / "manifest.csv") as fh:
        return list(csv.DictReader(fh))


def _naive_background_counts(outcome, true, bg_label, criterion):
    n_f, n_b = outcome.shape
    fooled, asr = np.zeros(n_b, int), np.full(n_b, np.nan)
    for j in range(n_b):
        hits = others = 0
        for i in range(n_f):
            pred = -1 if outcome[i, j] == 254 else int(outcome[i, j])
            c = int(bg_label[j])
            if criterion == "any":
                fooled[j] += pred != true[i]
            else:
                fooled[j] += c >= 0 and pred == c and c != true[i]
            if true[i] != c:
                others += 1
                hits += pred == c
        if bg_label[j] >= 0 and others:
            asr[j] = 100.0 * hits / others
    return fooled, asr


@pytest.mark.parametrize("criterion", ["any", "bg-class"])
def test_background_counts_equal_a_naive_loop_over_the_outcome_matrix(searched, criterion):
    with Store(searched) as s:
        outcome, fg_id, pool = load_outcome(s, criterion)
        outcome = outcome.copy()
        outcome[1, 3:5] = 254          # some unmapped predictions
        true, lab = s.foregrounds.labels[fg_id], s.backgrounds.labels[pool]
    got = background_fooling(outcome, true, lab, criterion)
    fooled, asr = _naive_background_counts(outcome, true, lab, criterion)
    assert got["n_fooled"].tolist() == fooled.tolist()
    np.testing.assert_allclose(got["asr"], asr, equal_nan=True)
    assert got["n_evaluated"].tolist() == [len(fg_id)] * len(pool)
    outcome[0, 0] = 255
    with pytest.raises(AdvbgError, match="never evaluated"):
        background_fooling(outcome, true, lab, criterion)


@pytest.mark.parametrize("criterion", ["any", "bg-class"])
def test_manifest_rows_match_the_stored_results_item_by_item(searched, tmp_path, criterion):
    out = tmp_path / "exp"
    res = export(searched, out, results=criterion)
    rows = _manifest(out)
    assert len(rows) == res.n_backgrounds + res.n_composites
    with Store(searched) as s:
        r = load_search(s, criterion)
        outcome, fg_id, pool = load_outcome(s, criterion)
        fooled, asr = _naive_background_counts(outcome, r.true_class, s.backgrounds.labels[pool], criterion)
        bgs = [row for row in rows if row["kind"] == "background"]
        assert sorted(int(b["bg_id"]) for b in bgs) == sorted(pool[fooled > 0].tolist())
        counts = [int(b["n_fooled"]) for b in bgs]
        assert counts == sorted(counts, reverse=True)
        for b in bgs:
            j = int(b["bg_id"])
            assert int(b["n_fooled"]) == fooled[j]
            assert (b["asr"] == "" and math.isnan(asr[j])) or float(b["asr"]) == pytest.approx(asr[j])
            assert int(b["bg_label"]) == s.backgrounds.labels[j]
            assert b["bg_source_id"] == s.backgrounds.source_ids[j]
            assert b["criterion"] == criterion and b["results"] == criterion
            assert b["model"] == "tinynet.seed0" and b["model_name"] == "tiny9"
        comps = [row for row in rows if row["kind"] == "composite"]
        assert sorted(int(c["fg_id"]) for c in comps) == sorted(r.fg_id[r.fooled].tolist())
        margins = [float(c["margin"]) for c in comps]
        assert margins == sorted(margins)
        for c in comps:
            k = int(np.flatnonzero(r.fg_id == int(c["fg_id"]))[0])
            assert int(c["bg_id"]) == r.worst_bg[k]
            assert float(c["margin"]) == pytest.approx(r.worst_margin[k])
            assert int(c["pred"]) == r.worst_pred[k]
            assert int(c["fg_label"]) == r.true_class[k]
            assert int(c["n_fooled"]) == r.n_fooling[k]
            assert c["fg_source_id"] == s.foregrounds.source_ids[int(c["fg_id"])]
            assert c["bg_source_id"] == s.backgrounds.source_ids[int(c["bg_id"])]
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["export"]["results"] == criterion
    assert len(meta["items"]) == len(rows)


def test_folder_pngs_decode_to_the_exact_stored_pixels(searched, tmp_path):
    out = tmp_path / "exp"
    export(searched, out, results="any")
    rows = _manifest(out)
    assert {r["kind"] for r in rows} == {"background", "composite"}
    with Store(searched) as s:
        for row in rows:
            assert (out / row["file"]).is_file()
            b = s.backgrounds.read([int(row["bg_id"])])[0]
            if row["kind"] == "background":
                want = b
                assert row["file"].startswith(f"backgrounds/{export_mod.class_folder(int(row['bg_label']), s.class_names)}/")
            else:
                f = int(row["fg_id"])
                want = np.where(s.foregrounds.read_masks([f])[0][..., None] == 1, s.foregrounds.read([f])[0], b)
                assert row["file"].startswith(f"composites/{export_mod.class_folder(int(row['fg_label']), s.class_names)}/")
            assert np.array_equal(_png(out / row["file"]), want)


def test_h5_export_is_a_store_of_the_exact_backgrounds_and_composites(searched, tmp_path):
    out = tmp_path / "exp"
    export(searched, out, results="any", config=ExportConfig(fmt="h5"))
    rows = _manifest(out)
    with Store(searched) as s, Store(out / "export.h5") as e:
        bg_rows = [r for r in rows if r["kind"] == "background"]
        comp_rows = [r for r in rows if r["kind"] == "composite"]
        assert len(e.backgrounds) == len(bg_rows) and len(e.foregrounds) == len(comp_rows)
        for r in bg_rows:
            i, j = int(r["index"]), int(r["bg_id"])
            assert np.array_equal(e.backgrounds.read([i])[0], s.backgrounds.read([j])[0])
            assert e.backgrounds.labels[i] == s.backgrounds.labels[j]
        for r in comp_rows:
            i, f, j = int(r["index"]), int(r["fg_id"]), int(r["bg_id"])
            mask = s.foregrounds.read_masks([f])[0]
            assert np.array_equal(e.foregrounds.read_masks([i])[0], mask)
            want = np.where(mask[..., None] == 1, s.foregrounds.read([f])[0], s.backgrounds.read([j])[0])
            assert np.array_equal(e.foregrounds.read([i])[0], want)
            assert e.foregrounds.labels[i] == int(r["fg_label"])


def test_top_per_class_and_what_select_items(searched, tmp_path):
    res = export(searched, tmp_path / "a", results="any", config=ExportConfig(what="backgrounds", per_class=1))
    labels = [r["bg_label"] for r in res.rows]
    assert len(labels) == len(set(labels)) and all(r["kind"] == "background" for r in res.rows)
    res = export(searched, tmp_path / "b", results="any", config=ExportConfig(what="composites", top=2))
    assert len(res.rows) == min(2, res.n_composites) and all(r["kind"] == "composite" for r in res.rows)
    res = export(searched, tmp_path / "c", results="any", config=ExportConfig(what="composites", include_unfooled=True))
    assert res.n_composites == 12


def test_rank_asr_orders_backgrounds_by_asr(searched, tmp_path):
    res = export(searched, tmp_path / "a", results="bg-class", config=ExportConfig(what="backgrounds", rank="asr"))
    asr = [r["asr"] for r in res.rows]
    assert asr == sorted(asr, reverse=True)


def test_refuses_a_non_empty_folder_unless_overwrite(searched, tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    export(searched, out, results="any")               # an empty folder is fine
    first = _manifest(out)
    with pytest.raises(AdvbgError, match="not empty; pass --overwrite"):
        export(searched, out, results="any", config=ExportConfig(what="composites"))
    assert _manifest(out) == first
    export(searched, out, results="any", config=ExportConfig(what="composites"), overwrite=True)
    assert {r["kind"] for r in _manifest(out)} == {"composite"}
    assert not (out / "backgrounds").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]      # no temporary or moved-aside folder left


def test_a_failed_export_leaves_nothing_behind(searched, tmp_path, monkeypatch):
    def boom(path, rgb):
        raise OSError("disk full")

    monkeypatch.setattr(export_mod, "_png", boom)
    with pytest.raises(OSError):
        export(searched, tmp_path / "exp", results="any")
    assert not any(p.name.startswith((".exp", "exp")) for p in tmp_path.iterdir())


def test_backgrounds_need_an_outcome_matrix(searched, tmp_path):
    with pytest.raises(AdvbgError, match="no outcome matrix"):
        export(searched, tmp_path / "exp", results="early")
    res = export(searched, tmp_path / "exp", results="early", config=ExportConfig(what="composites"))
    assert all(r["kind"] == "composite" for r in res.rows)


def test_cli_export_writes_and_errors_in_one_line(searched, tmp_path, capsys):
    out = tmp_path / "exp"
    main(["export", "--store", str(searched), "--results", "any", "--out", str(out), "--format", "h5"])
    assert (out / "export.h5").is_file() and "exported" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["export", "--store", str(searched), "--results", "any", "--out", str(tmp_path / "x"), "--what", "all"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--what must be one of" in err


def test_export_folder_names_are_class_slugs_without_spaces():
    """`02_wheeled vehicle` held a space (#24 item 14): every class becomes NN_<slug>, one slug rule."""
    from advbg.data.labels import IN9_CLASSES, class_slug

    names = ("wheeled vehicle", "Musical  Instrument", "a/b\\c", "   ", "dog")
    folders = [export_mod.class_folder(k, names) for k in range(len(names))]
    assert folders == ["00_wheeled_vehicle", "01_musical_instrument", "02_a_b_c", "03_class", "04_dog"]
    assert [export_mod.class_folder(k, IN9_CLASSES) for k in (2, 6)] == ["02_vehicle", "06_instrument"]
    assert export_mod.class_folder(-1, names) == "none"
    for name in names + IN9_CLASSES:
        assert all(c.isalnum() and c.islower() or c.isdigit() or c == "_" for c in class_slug(name))
