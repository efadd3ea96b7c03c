"""What a search reports (#21 items 1, 3, 4): the headline and JSON carry k/n and the 95% interval, the worst
composite's raw top-1 is stored and equals the model's own argmax recomputed here, "none" says what the model saw,
and a pruned run says what it is, plans its progress by its candidates and states its recall against a stored
exhaustive run."""
import json
import re

import h5py
import numpy as np
import pytest
import reference
import torch
from conftest import make_random_store, run_cli
from test_search import make_parity_store, parity_classifier

from advbg._compat import import_timm
from advbg.commands.search import headline
from advbg.data.store import Store
from advbg.search import runner
from advbg.search.config import Candidates, SearchConfig
from advbg.search.criteria import Criterion
from advbg.search.results import load_search, raw_class_name
from advbg.search.results.verify import verify_all
from advbg.search.runner import search


def _raw_top1(s: Store, clf, fg: int, bg: int) -> int:
    """The model's own top-1 output on composite (fg, bg), computed from the plain definition."""
    img, mask = s.foregrounds.read([fg])[0], s.foregrounds.read_masks([fg])[0]
    with torch.no_grad():
        logits = clf(reference.composite(img, mask, s.backgrounds.read([bg])[0]))[0].float().numpy()
    return int(np.argmax(logits))


@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
@pytest.mark.parametrize("label_map", ["in9", "identity"])
@pytest.mark.parametrize("pruned", [False, True])
def test_stored_raw_top1_is_the_models_argmax_on_the_worst_composite(tmp_path, mode, label_map, pruned):
    path = make_parity_store(tmp_path / "s.h5")
    clf = parity_classifier(label_map)
    rng = np.random.default_rng(11)
    cands = Candidates({f: rng.permutation(14)[: rng.integers(1, 15)] for f in range(8)}) if pruned else None
    cfg = SearchConfig(mode=mode, batch_size=5, fg_block=3, prune="test" if pruned else None)
    with Store(path, "r+") as s:
        search(s, clf, cfg, candidates=cands, results_name="r", progress=False)
        res = load_search(s, "r")
        assert (res.worst_bg >= 0).all()
        for k in range(len(res)):
            want = _raw_top1(s, clf, int(res.fg_id[k]), int(res.worst_bg[k]))
            assert res.worst_raw_top1[k] == want, k
            if label_map == "identity":            # the model's own class is the mapped class
                assert res.worst_raw_top1[k] == res.worst_pred[k]


def test_none_says_what_the_model_saw(tmp_path):
    path = make_parity_store(tmp_path / "s.h5")
    clf = parity_classifier("in9")
    with Store(path, "r+") as s:
        res = search(s, clf, SearchConfig(batch_size=7), results_name="r", progress=False)
    none = np.flatnonzero(res.worst_pred == -1)
    assert none.size, "the parity store has a worst composite predicted none"
    import_timm()
    from timm.data import ImageNetInfo  # the 1000 ImageNet classes, independent of advbg's lookup

    for k in none:
        raw = int(res.worst_raw_top1[k])
        assert reference.table_for("in9", 1000)[raw] == -1, "none means: the top-1 maps to no class"
        name = ImageNetInfo().index_to_description(raw).split(",")[0].strip()
        assert res.prediction_text(k) == f"none: {name}"
    mapped = np.flatnonzero(res.worst_pred >= 0)
    assert all(res.prediction_text(k) == res.class_names[res.worst_pred[k]] for k in mapped)
    assert raw_class_name({"label_map": "identity", "class_names": ["a", "b"]}, 1) == "b"
    assert raw_class_name({"label_map": "x", "num_outputs": 12}, 3) == "output 3"


def test_a_results_file_without_the_raw_column_still_reads_and_verifies(tmp_path):
    path = make_random_store(tmp_path / "s.h5")
    clf = parity_classifier("identity")
    with Store(path, "r+") as s:
        search(s, clf, SearchConfig(batch_size=8), results_name="old", progress=False)
    file = next(tmp_path.rglob("old.h5"))
    with h5py.File(file, "r+") as f:
        del f["worst_raw_top1"]
    with Store(path) as s:
        res = load_search(s, "old")
    assert (res.worst_raw_top1 == -1).all()
    report = verify_all(path)
    assert report.ok, report.problems


def test_headline_and_json_carry_k_n_and_the_interval(tmp_path, capsys):
    store = make_random_store(tmp_path / "s.h5")
    out_json = tmp_path / "summary.json"
    code, out, err = run_cli(["search", "--store", str(store), "--model", "test/tiny", "--grid", "-", "-q",
                              "--results-file", str(out_json)], capsys)
    assert code == 0, err
    with Store(store) as s:
        res = load_search(s)
    k, n = int(res.fooled.sum()), len(res)
    lo, hi = reference.clopper_pearson(k, n)
    alo, ahi = reference.clopper_pearson(n - k, n)
    line = out.splitlines()[0]
    assert line.startswith(f"fooling rate {100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({k}/{n} vulnerable; "
                           f"challenge accuracy {100 * (n - k) / n:.1f}% [{100 * alo:.1f}, {100 * ahi:.1f}]; "
                           f"95% Clopper-Pearson)"), line
    summary = json.loads(out_json.read_text())
    assert (summary["fooling"]["k"], summary["fooling"]["n"]) == (k, n)
    assert summary["fooling"]["low"] == pytest.approx(100 * lo, abs=1e-6)
    assert summary["challenge"]["high"] == pytest.approx(100 * ahi, abs=1e-6)
    assert summary["challenge"]["k"] == n - k
    assert all("worst_raw_top1" in row and "worst_pred_text" in row for row in summary["foregrounds"])


class _Bar:
    made: list = []

    def __init__(self, total=None, **kw):
        self.total, self.done, self.desc = total, 0, kw.get("desc")
        _Bar.made.append(self)

    def update(self, n):
        self.done += n

    def close(self):
        pass


@pytest.mark.parametrize("mode", ["exhaustive", "early-exit"])
def test_a_pruned_bar_plans_its_candidates_and_reaches_them(tmp_path, monkeypatch, mode):
    path = make_parity_store(tmp_path / "s.h5")
    clf = parity_classifier("identity")
    rng = np.random.default_rng(5)
    lists = {f: rng.permutation(14)[: rng.integers(1, 6)] for f in range(8)}
    _Bar.made = []
    monkeypatch.setattr(runner, "progress_bar", _Bar)
    with Store(path, "r+") as s:
        search(s, clf, SearchConfig(mode=mode, batch_size=4, fg_block=3, prune="mix-k5"),
               candidates=Candidates(lists), write=False)
    bar, = _Bar.made
    assert bar.total == sum(len(v) for v in lists.values())
    assert bar.done == bar.total and "pruned" in bar.desc and "exhaustive" not in bar.desc


def test_a_pruned_run_says_so_and_states_its_recall(tmp_path, capsys):
    store = make_random_store(tmp_path / "s.h5", n_fg=9, n_bg=12, seed=4)
    base = ["search", "--store", str(store), "--model", "test/tiny", "--grid", "-", "-q"]
    code, _, err = run_cli(["index", "--store", str(store), "--model", "test/tiny", "-q"], capsys)
    assert code == 0, err
    code, _, err = run_cli(base, capsys)
    assert code == 0, err
    code, out, err = run_cli(base + ["--prune", "3"], capsys)
    assert code == 0, err
    with Store(store) as s:
        names = sorted(n for n in s.results if "pruned" in n)
        assert len(names) == 1 and "exhaustive" not in names[0] and names[0].endswith(".pruned-mix-k3")
        pruned = load_search(s, names[0])
        full = load_search(s, next(n for n in s.results if n.endswith(".exhaustive")))
        from advbg.analysis.report import _headline

        assert dict(_headline(s, names[0], pruned))["search"].startswith("pruned, 3 candidates per foreground")
        assert dict(_headline(s, full.results_name, full))["search"].startswith("exhaustive")
    assert "pruned, 3 candidates per foreground (rule mix)" in out.splitlines()[0]
    line = next(ln for ln in out.splitlines() if ln.startswith("recall against the exhaustive run"))
    truth = set(full.fg_id[full.fooled].tolist())
    found = len(truth & set(pruned.fg_id[pruned.fooled].tolist()))
    same = int((pruned.worst_bg == full.worst_bg).sum())
    gap = float(np.median(pruned.worst_margin - full.worst_margin))
    if truth:
        assert "vulnerable found " in line and f"({found}/{len(truth)})" in line
    assert "worst background found " in line and f"({same}/{len(full)})" in line
    assert f"median margin gap {gap:.3f} (n={len(full)}" in line
    assert gap >= 0


def test_headline_of_a_rate_at_the_ends(tmp_path):
    """k = 0 and k = n give the one-sided bounds (independent table: reference.clopper_pearson)."""
    path = make_random_store(tmp_path / "s.h5")
    clf = parity_classifier("identity")
    with Store(path, "r+") as s:
        res = search(s, clf, SearchConfig(batch_size=8), write=False, progress=False)
    from dataclasses import replace

    n = len(res)
    for first in (np.full(n, -1), np.zeros(n, np.int64)):
        r = replace(res, first_fooling_bg=first)
        k = int(r.fooled.sum())
        lo, hi = reference.clopper_pearson(k, n)
        text = headline(r, Criterion("any"))
        m = re.match(r"fooling rate ([\d.]+)% \[([\d.]+), ([\d.]+)\] \((\d+)/(\d+) vulnerable", text)
        assert m and (int(m[4]), int(m[5])) == (k, n)
        assert float(m[2]) == pytest.approx(100 * lo, abs=0.051) and float(m[3]) == pytest.approx(100 * hi, abs=0.051)


def test_export_prints_the_results_rate_with_its_interval(tmp_path, capsys):
    store = make_random_store(tmp_path / "s.h5")
    code, _, err = run_cli(["search", "--store", str(store), "--model", "test/tiny", "--grid", "-", "-q"], capsys)
    assert code == 0, err
    with Store(store) as s:
        res = load_search(s)
    k, n = int(res.fooled.sum()), len(res)
    lo, hi = reference.clopper_pearson(k, n)
    code, out, err = run_cli(["export", "--store", str(store), "--out", str(tmp_path / "exp"), "--what", "composites"],
                             capsys)
    assert code == 0, err
    assert f"fooling rate {100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({k}/{n})" in out


def test_a_run_journalled_before_the_raw_column_resumes_with_its_fill(tmp_path, monkeypatch):
    """Units committed by a build without ``worst_raw_top1`` resume: their rows read -1, the new units' the argmax."""
    from advbg.search import engine
    from advbg.search.results import sink

    path = make_random_store(tmp_path / "s.h5", n_fg=9, n_bg=7, seed=13)
    clf = parity_classifier("identity")
    cfg = SearchConfig(fg_block=2, batch_size=5)
    old_run_unit = engine.Engine.run_unit

    def without_raw(self, *a, **kw):
        rows, outcome = old_run_unit(self, *a, **kw)
        rows.pop("worst_raw_top1")
        return rows, outcome

    calls = []

    def stop_after_two(_):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(engine.Engine, "run_unit", without_raw)
        m.setattr(sink, "COLUMNS", {k: v for k, v in sink.COLUMNS.items() if k != "worst_raw_top1"})
        with Store(path, "r+") as s, pytest.raises(KeyboardInterrupt):
            search(s, clf, cfg, results_name="r", progress=False, on_unit=stop_after_two)
    with Store(path, "r+") as s:
        res = search(s, clf, cfg, results_name="r", progress=False, resume=True)
        assert res.run.resumed_units == 2
        back = load_search(s, "r")
        assert (back.worst_raw_top1[:4] == -1).all()
        for k in range(4, len(back)):
            assert back.worst_raw_top1[k] == _raw_top1(s, clf, int(back.fg_id[k]), int(back.worst_bg[k]))
