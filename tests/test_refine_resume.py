"""`advbg refine` results go through the results owner: per-unit commits to the journal (a SIGKILLed refine
resumes to exactly the uninterrupted result), a checked reader and `advbg verify` rules for the "refine" kind, and
the start backgrounds (--start worst | random | own)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import advbg_entry  # noqa: F401  (registers test/tiny-entry for the in-process runs)
import h5py
import numpy as np
import pytest
from conftest import make_random_store
from conftest import run_cli as run

from advbg.data.store import Store
from advbg.errors import AdvbgError, StoreError
from advbg.search.journal import Journal, journal_folder
from advbg.search.results import load_refine, load_search, verify_all
from advbg.search.results.refine import PER_BUDGET

ENTRY = Path(__file__).with_name("advbg_entry.py")
SEARCH = "tinynet.seed0.any.exhaustive"
NAME = "refined"
BUDGETS = "linf:2/255;photometric;min-eps:1/255,4/255"


def cli(*args, sleep=0.0):
    """The real `python -m advbg ...` in a subprocess, with the test model (each forward sleeps ``sleep`` s)."""
    env = dict(os.environ, ADVBG_TEST_SLEEP=str(sleep), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, str(ENTRY), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finished(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out, err


def refine_args(store, *extra):
    return ["refine", "--store", str(store), "--model", "test/tiny-entry", "--budget", BUDGETS, "--steps", "3",
            "--batch-size", "2", "--results-name", NAME, "--curve", "-", "--grid", "-", "-q", *extra]


def searched_store(path: Path) -> Path:
    store = make_random_store(path, n_fg=8, seed=3)
    finished(cli("search", "--store", str(store), "--model", "test/tiny-entry", "--grid", "-", "-q"))
    return store


def columns(store) -> dict:
    with Store(store) as s:
        r = load_refine(s, NAME)
    return dict(r.cols, fg_id=r.fg_id, start_bg=r.start_bg)


def units_in(store) -> int:
    j = Journal(journal_folder(store, NAME))
    return sum(1 for _ in j.records(("start",))) if j.exists() else 0


@pytest.fixture(scope="module")
def refined_store(tmp_path_factory):
    """A store searched and refined (NAME) by the real CLI; copy it before changing it."""
    store = searched_store(tmp_path_factory.mktemp("refined") / "s.h5")
    finished(cli(*refine_args(store)))
    return store


def test_a_killed_refine_resumes_to_the_uninterrupted_result(tmp_path):
    want = searched_store(tmp_path / "ref.h5")
    finished(cli(*refine_args(want)))
    store = searched_store(tmp_path / "s.h5")                  # 8 foregrounds: 4 units of 2
    proc = cli(*refine_args(store), sleep=0.05)
    deadline = time.monotonic() + 180
    while units_in(store) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    done = units_in(store)
    assert 1 <= done < 4, f"not killed part-way ({done} units committed)"
    with Store(store) as s:
        assert NAME not in s.results, "no results file before the run finished"
    _, err = finished(cli(*refine_args(store, "--resume")))
    assert f"resuming refine {NAME}: {2 * done}/8 foregrounds already done" in err
    assert not journal_folder(store, NAME).exists(), "the journal is removed once the file is written"
    a, b = columns(want), columns(store)
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=True), k
    report = verify_all(store)
    assert report.ok, report.problems


def test_resume_with_other_settings_is_refused_and_a_finished_one_is_reused(tmp_path, capsys):
    store = searched_store(tmp_path / "s.h5")
    finished(cli(*refine_args(store)))
    code, _, err = run(refine_args(store, "--resume"), capsys)      # in-process: the registered entry model
    assert code == 0, err
    assert "finished results in the store" in err
    with Store(store) as s:
        rid_fp = s.results[NAME].attrs["fingerprint"]
    Journal(journal_folder(store, NAME)).create("another", dict(fg_id=np.arange(2)), dict(unit=2))
    assert rid_fp != "another"
    code, _, err = run(refine_args(store, "--resume"), capsys)
    assert code != 0 and "interrupted with other settings" in err and "Traceback" not in err


def _planted(store, key, change):
    path = Path(f"{store}.d") / "results" / f"{NAME}.h5"
    with h5py.File(path, "r+") as f:
        v = f[key][()]
        change(v)
        f[key][...] = v
    return path


@pytest.mark.parametrize("key, change, why", [
    ("fg_id", lambda v: v.__setitem__(slice(None), 10_000), "fg_id outside"),
    ("start_bg", lambda v: v.__setitem__(slice(None), -5), "start_bg outside"),
    ("start_bg", lambda v: v.__setitem__(-1, v[0] + 1), "differ between budgets"),
    ("margin_after", lambda v: v.__setitem__(1, 1e9), "exceeds its margin before"),
    ("budget", lambda v: v.__setitem__(0, 2), "budget-major"),
    ("true_class", lambda v: v.__setitem__(0, (v[0] + 1) % 9), "true_class differs"),
    ("fooled_after", lambda v: v.__setitem__(0, 7), "other than 0/1"),
])
def test_verify_and_the_reader_refuse_a_damaged_refine_file(refined_store, tmp_path, capsys, key, change, why):
    store = tmp_path / "s.h5"
    shutil.copy(refined_store, store)
    shutil.copytree(f"{refined_store}.d", f"{store}.d")
    code, out, err = run(["verify", str(store)], capsys)
    assert code == 0, out + err
    _planted(store, key, change)
    code, out, err = run(["verify", str(store)], capsys)
    assert code != 0 and why in out + err
    with Store(store) as s, pytest.raises(StoreError, match=why):
        load_refine(s, NAME)


def test_the_results_file_holds_every_unit_in_order(refined_store):
    store = refined_store
    with Store(store) as s:
        r, found = load_refine(s, NAME), load_search(s, SEARCH)
        keep = found.worst_bg >= 0
        assert np.array_equal(r.fg_id, found.fg_id[keep]) and np.array_equal(r.start_bg, found.worst_bg[keep])
        assert [b["name"] for b in r.budgets] == ["linf:2/255", "photometric", "min-eps"]
        for k in PER_BUDGET:
            assert r.cols[k].shape[:2] == (3, len(r.fg_id)), k
        assert (r.cols["margin_after"] <= r.cols["margin_before"]).all()


@pytest.mark.parametrize("start", ["random", "own"])
def test_other_starts(tmp_path, capsys, start):
    store = searched_store(tmp_path / "s.h5")
    args = refine_args(store, "--start", start, "--budget", "linf:2/255")
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert out.startswith(f"start backgrounds ({start}): fooling rate ")
    with Store(store) as s:
        r = load_refine(s, NAME)
        if start == "own":     # the background photographed with the foreground: the same source_id
            assert [s.backgrounds.source_ids[b] for b in r.start_bg] == [s.foregrounds.source_ids[f]
                                                                        for f in r.fg_id]
        else:                  # seeded per foreground: another batch size draws the same starts
            first = r.start_bg.copy()
    if start == "random":
        assert len(set(first.tolist())) > 1
        code, _, err = run(refine_args(store, "--start", start, "--budget", "linf:2/255", "--batch-size", "3"),
                           capsys)
        assert code == 0, err
        with Store(store) as s:
            assert np.array_equal(load_refine(s, NAME).start_bg, first)


def test_an_unknown_start_gets_one_line(tmp_path, capsys):
    store = make_random_store(tmp_path / "s.h5")
    code, _, err = run(["refine", "--store", str(store), "--model", "test/tiny-entry", "--start", "best", "-q"],
                       capsys)
    assert code != 0 and "unknown start 'best'" in err and "Traceback" not in err


def test_load_refine_without_results_says_so(tmp_path):
    store = make_random_store(tmp_path / "s.h5")
    with Store(store) as s, pytest.raises(AdvbgError, match="no complete refine results"):
        load_refine(s)


@pytest.mark.parametrize("budget", [None, "photometric"])
def test_export_from_refine_writes_the_refined_backgrounds_and_their_composites(refined_store, tmp_path, capsys,
                                                                               budget):
    import cv2

    out = tmp_path / "out"
    extra = ["--budget", budget] if budget else []
    code, _, err = run(["export", "--store", str(refined_store), "--out", str(out), "--from", "refine",
                           "--include-unfooled", *extra], capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    name = budget or "linf:2/255"                                # default: the largest linf EPS
    assert manifest["export"]["budget"]["name"] == name and manifest["export"]["source"] == "refine"
    with h5py.File(Path(f"{refined_store}.d") / "results" / f"{NAME}.h5", "r") as f, \
            h5py.File(refined_store, "r") as s:
        b = [x["name"] for x in json.loads(f.attrs["budgets"])].index(name)
        rows = f["budget"][()] == b
        fg_id, refined, margin = f["fg_id"][()][rows], f["background"][()][rows], f["margin_after"][()][rows]
        fgs, masks = s["foregrounds/image"][()], s["foregrounds/mask"][()]
    items = manifest["items"]
    assert sorted(i["fg_id"] for i in items if i["kind"] == "background") == sorted(fg_id.tolist())
    for item in items:
        k = int(np.flatnonzero(fg_id == item["fg_id"])[0])
        png = cv2.cvtColor(cv2.imread(str(out / item["file"]), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
        m = masks[item["fg_id"]].astype(bool)[..., None]
        want = refined[k] if item["kind"] == "background" else np.where(m, fgs[item["fg_id"]], refined[k])
        assert np.array_equal(png, want), item["file"]
        assert item["margin"] == pytest.approx(margin[k])
    margins = [i["margin"] for i in items if i["kind"] == "composite"]
    assert margins == sorted(margins), "lowest margin after first"


def test_export_from_refine_keeps_only_fooled_by_default_and_refuses_an_unknown_budget(refined_store, tmp_path,
                                                                                      capsys):
    code, _, err = run(["export", "--store", str(refined_store), "--out", str(tmp_path / "o"), "--from", "refine",
                        "--format", "h5"], capsys)
    assert code == 0, err
    with Store(refined_store) as s:
        r = load_refine(s, NAME)
        fooled = int(r.cols["fooled_after"][0].sum())
    with Store(tmp_path / "o" / "export.h5") as e:
        assert len(e.backgrounds) == fooled and len(e.foregrounds) == fooled
    code, _, err = run(["export", "--store", str(refined_store), "--out", str(tmp_path / "p"), "--from", "refine",
                        "--budget", "linf:9/255"], capsys)
    assert code != 0 and "no budget 'linf:9/255'" in err and "Traceback" not in err


def test_universal_from_refine_scores_refined_backgrounds_like_real_ones(refined_store, tmp_path, capsys):
    """Every (background, target) pair recomputed here, one composite per forward, against the stored counts."""
    import torch

    from advbg.models.loading import load_classifier

    code, out, err = run(["universal", "--store", str(refined_store), "--model", "test/tiny-entry", "--from",
                          "refine", "--criterion", "any", "--results-file", str(tmp_path / "u.json")], capsys)
    assert code == 0, err
    assert "forwards" in out and "ASR refined " in out
    got = json.loads((tmp_path / "u.json").read_text())
    assert got["budget"]["name"] == "linf:2/255"
    clf = load_classifier("test/tiny-entry")
    with h5py.File(Path(f"{refined_store}.d") / "results" / f"{NAME}.h5", "r") as f, \
            h5py.File(refined_store, "r") as s:
        rows = f["budget"][()] == 0
        fg_id, refined = f["fg_id"][()][rows], f["background"][()][rows]
        start = f["start_bg"][()][rows]
        fgs, masks = s["foregrounds/image"][()], s["foregrounds/mask"][()]
        fl, bl, bgs = s["foregrounds/label"][()], s["backgrounds/label"][()], s["backgrounds/image"][()]
    seen = 0
    for c in got["classes"]:
        for j, (f_id, b_id) in enumerate(zip(c["fg_id"], c["start_bg"])):
            k = int(np.flatnonzero(fg_id == f_id)[0])
            klass = int(bl[b_id])
            targets = [t for t in range(len(fl)) if fl[t] >= 0 and fl[t] != klass and t != f_id]
            assert c["n_targets"][j] == len(targets)
            for bg, key in ((bgs[b_id], "real_fooled"), (refined[k], "refined_fooled")):
                fooled = 0
                for t in targets:
                    m = masks[t].astype(np.float32)[..., None]
                    x = m * (fgs[t] / np.float32(255)) + (1 - m) * (bg / np.float32(255))
                    with torch.no_grad():
                        logits = clf(torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None])[0].numpy()
                    fooled += int(np.argmax(logits) != fl[t])
                assert c[key][j] == fooled, (f_id, key)
            seen += 1
    assert seen == int((bl[start] >= 0).sum()) > 0, "every refined background with a classed start is scored"


def test_the_report_shows_a_refine_section(refined_store, tmp_path, capsys):
    from advbg.stats import format_rate, rate

    out = tmp_path / "r.html"
    code, _, err = run(["report", "--store", str(refined_store), "--out", str(out), "--no-verify"], capsys)
    assert code == 0, err
    page = out.read_text()
    assert '<section id="refine">' in page and f"<code>{NAME}</code>" in page
    with Store(refined_store) as s:
        r = load_refine(s, NAME)
    n = len(r.fg_id)
    for b, info in enumerate(r.budgets):       # every budget's refined rate, as the stored rows give it
        assert format_rate(rate(int(r.cols["fooled_after"][b].sum()), n)) in page, info["name"]
    assert page.count('alt="refined background"') == min(6, n)
    assert 'alt="fooling rate vs EPS"' in page


@pytest.mark.parametrize("args, pattern", [
    (["--budget", "linf:2/255"], "need --from refine"),
    (["--from", "elsewhere"], "--from must be search or refine"),
])
def test_universal_refine_options_need_from_refine(tmp_path, capsys, args, pattern):
    store = make_random_store(tmp_path / "s.h5")
    code, _, err = run(["universal", "--store", str(store), "--model", "test/tiny-entry", *args], capsys)
    assert code != 0 and pattern in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_sink_resumes_only_what_it_committed_and_says_what_a_fresh_start_drops(tmp_path):
    from advbg.search.results import RefineId, RefineSink

    path = make_random_store(tmp_path / "s.h5")
    fg = np.arange(4, dtype=np.int64)
    rid = RefineId("fp", fg, fg + 1, np.zeros(4, np.int64), ({"name": "linf:1/255", "repr": "x"},), {}, 2)
    unit = {k: np.zeros((1, 2) + ((3,) if k == "params" else (32, 32, 3) if k == "background" else ()))
            for k in PER_BUDGET}
    with Store(path, mode="r+") as s:
        sink = RefineSink.open(s, "r", rid, resume=False)
        assert sink.todo() == [(0, 2), (2, 4)] and sink.discarded == 0
        sink.commit((0, 2), unit)
        sink._writer.close()
        again = RefineSink.open(s, "r", rid, resume=True)
        assert again.todo() == [(2, 4)] and again.done.tolist() == [True, True, False, False]
        fresh = RefineSink.open(s, "r", rid, resume=False)
        assert fresh.discarded == 1 and fresh.todo() == [(0, 2), (2, 4)]
        with pytest.raises(AdvbgError, match="budgets, rows"):
            fresh.commit((2, 4), {k: v[:, :1] for k, v in unit.items()})
