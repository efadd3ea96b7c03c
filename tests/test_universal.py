"""Universal backgrounds: ASR, per-class union and greedy cover against a hand-made matrix and a slow reference;
reuse of a stored outcome matrix with zero forward passes; the real CLI on the tiny fixture model."""
import json

import numpy as np
import pytest
from conftest import make_random_store, make_tiny_classifier

from advbg.analysis.universal import analyse, class_union, fooled_matrix, greedy_cover, highest_asr
from advbg.search.criteria import asr
from advbg.commands.universal import run_universal
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.search.config import SearchConfig
from advbg.search.criteria import OUTCOME_MISSING as MISS
from advbg.search.criteria import OUTCOME_NONE as NONE
from advbg.search.results import load_outcome
from advbg.search.runner import search

# Hand-made: classes 0..3 (class 3 has no backgrounds). fg6 has no class, bg3 has none; 255 only where unused.
FG = np.array([0, 0, 1, 1, 2, 2, -1])
BG = np.array([1, 0, 1, -1, 1, 2])
OUT = np.array([
    [1, MISS, 0, MISS, 0, 2],        # fg0 (class 0): bg1 is its own class, never read
    [1, MISS, 1, MISS, 0, 0],
    [1, 0, 1, MISS, 1, NONE],
    [1, 1, 1, MISS, 1, 2],
    [0, 0, 1, MISS, 1, 2],
    [NONE, NONE, 2, MISS, 1, 2],
    [MISS] * 6,                      # fg6 (no class): nobody's target
], np.uint8)
NAMES = ("a", "b", "c", "empty")


def test_asr_on_hand_made_matrix_both_criteria():
    np.testing.assert_array_equal(asr(OUT, FG, BG, "bg-class"), [50, 50, 50, np.nan, 50, 50])
    np.testing.assert_array_equal(asr(OUT, FG, BG, "any"), [100, 75, 50, np.nan, 50, 75])


def test_union_on_hand_made_matrix_and_class_without_backgrounds():
    assert [class_union(OUT, FG, BG, c, "bg-class") for c in range(3)] == [50, 100, 50]
    assert [class_union(OUT, FG, BG, c, "any") for c in range(3)] == [75, 100, 75]
    assert np.isnan(class_union(OUT, FG, BG, 3))
    empty = analyse(OUT, FG, BG, NAMES, "bg-class", classes=[3])[0]
    assert empty.message == "class 'empty' has no backgrounds in this store: no ASR toward it"
    assert empty.n_backgrounds == 0 and len(empty.top_bg) == 0 and len(empty.greedy.bg_id) == 0


def test_ties_go_to_lowest_bg_id_in_top_k_and_greedy():
    b = analyse(OUT, FG, BG, NAMES, "bg-class", classes=[1], top=3, greedy=3)[0]
    np.testing.assert_array_equal(b.top_bg, [0, 2, 4])          # all three at 50%
    np.testing.assert_array_equal(b.greedy.bg_id, [0, 4])       # first pick: 3-way tie -> bg 0; then bg 4 adds 2
    np.testing.assert_array_equal(b.greedy.gain, [2, 2])
    np.testing.assert_array_equal(b.greedy.coverage, [50, 100])
    assert b.greedy.stopped_early and b.union == 100
    # Ties follow bg_id, not column order: with reversed ids the lowest id is column 4.
    ids = np.arange(6)[::-1] + 10
    g = greedy_cover(OUT, FG, BG, 1, 3, "bg-class", bg_id=ids)
    assert g.bg_id[0] == 11


def test_missing_target_pair_is_an_error_not_a_wrong_asr():
    out = OUT.copy()
    out[0, 0] = MISS                                              # fg0 is a target of bg0 (class 1)
    with pytest.raises(AdvbgError, match="1 target pairs .* never evaluated"):
        asr(out, FG, BG)
    analyse(out, FG, BG, NAMES, classes=[0])                    # class 0 does not read that pair


def _reference(outcome, fg, bg, criterion, cls, k):
    """The obvious loops: per background the set of fooled targets; greedy over Python sets."""
    targets = [f for f in range(len(fg)) if fg[f] >= 0 and fg[f] != cls]
    cols = [b for b in range(len(bg)) if bg[b] == cls]
    sets = {}
    for b in cols:
        sets[b] = {f for f in targets if (outcome[f, b] == cls if criterion == "bg-class" else outcome[f, b] != fg[f])}
    rates = {b: 100 * len(s) / len(targets) for b, s in sets.items()}
    union = 100 * len(set().union(*sets.values())) / len(targets) if cols else float("nan")
    covered, picks = set(), []
    for _ in range(min(k, len(cols))):
        best = max(cols, key=lambda b: (len(sets[b] - covered), -b))
        if not sets[best] - covered:
            break
        picks.append(best)
        covered |= sets[best]
    return rates, union, picks


@pytest.mark.parametrize("criterion", ["bg-class", "any"])
def test_matches_slow_reference_on_random_matrices(criterion):
    rng = np.random.default_rng(0)
    for trial in range(20):
        f, b, c = rng.integers(5, 40), rng.integers(3, 30), rng.integers(2, 5)
        fg, bg = rng.integers(-1, c, f), rng.integers(-1, c, b)
        out = rng.integers(0, c, (f, b)).astype(np.uint8)
        out[rng.random((f, b)) < 0.1] = NONE
        for r in analyse(out, fg, bg, [str(i) for i in range(c)], criterion, top=3, greedy=4):
            rates, union, picks = _reference(out, fg, bg, criterion, r.class_id, 4)
            if r.n_targets == 0:
                continue
            np.testing.assert_allclose(r.asr, [rates[int(i)] for i in r.bg_id])
            np.testing.assert_allclose(r.union, union)
            assert r.greedy.bg_id.tolist() == picks
            if r.n_backgrounds and r.top_asr[0] > 0:
                assert r.greedy.bg_id[0] == r.top_bg[0]          # first greedy pick = the top-ASR background
            assert np.all(np.diff(r.greedy.coverage) >= 0)      # coverage never decreases
            assert not len(r.greedy.coverage) or r.greedy.coverage[-1] <= r.union + 1e-9


def test_fooled_matrix_never_counts_own_class_or_unlabelled():
    fooled = fooled_matrix(OUT, FG, BG, "any")
    assert not fooled[:, 3].any() and not fooled[6].any() and not fooled[0, 1]


def test_highest_asr_puts_nan_last():
    assert highest_asr(np.array([np.nan, 10.0, 10.0, 5.0]), np.array([0, 7, 3, 1]), 4).tolist() == [2, 1, 3, 0]


# --------------------------------------------------------------------------------------------- stored matrix
def _counting(clf):
    """Count forward passes at the wrapped network, which every path (search engine, eval, index) runs."""
    calls = []
    clf.model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    return calls


def test_stored_exhaustive_search_is_reused_with_zero_forward_passes(tmp_path):
    path = make_random_store(tmp_path / "s.h5", n_fg=12, n_bg=14)
    clf = make_tiny_classifier()
    calls = _counting(clf)
    with Store(path, "r+") as s:
        search(s, clf, SearchConfig(criterion="any", mode="exhaustive"), progress=False)
        outcome, _, _ = load_outcome(s, "tinynet.seed0.any.exhaustive")
        fg, bg, names = s.foregrounds.labels, s.backgrounds.labels, s.class_names
    calls.clear()
    kw = dict(store=path, model=clf, top_png="-", hist_png="-", progress=False, echo=lambda m: None)
    for criterion in ("bg-class", "any"):
        r = run_universal(criterion=criterion, **kw)
        assert sum(calls) == 0 and r.forwards == 0 and r.sources == ("tinynet.seed0.any.exhaustive",)
        want = analyse(outcome, fg, bg, names, criterion)
        for got, exp in zip(r.classes, want):
            np.testing.assert_array_equal(got.asr, exp.asr)
            np.testing.assert_array_equal(got.greedy.bg_id, exp.greedy.bg_id)
            assert got.union == exp.union or (np.isnan(got.union) and np.isnan(exp.union))


def test_missing_matrix_is_computed_once_then_reused(tmp_path):
    path = make_random_store(tmp_path / "s.h5", n_fg=10, n_bg=12)
    clf = make_tiny_classifier()
    calls = _counting(clf)
    notes = []
    kw = dict(store=path, model=clf, klass="all", top_png="-", hist_png="-", progress=False)
    first = run_universal(echo=notes.append, **kw)
    assert first.forwards == sum(calls) > 0
    assert any(n.startswith("no stored outcome matrix for tinynet.seed0") for n in notes)
    calls.clear()
    second = run_universal(echo=lambda m: None, **kw)
    assert sum(calls) == 0 and second.forwards == 0
    assert second.summary()["classes"] == first.summary()["classes"]


def test_early_exit_only_is_reported_and_completed(tmp_path):
    path = make_random_store(tmp_path / "s.h5", n_fg=10, n_bg=12)
    clf = make_tiny_classifier()
    with Store(path, "r+") as s:
        search(s, clf, SearchConfig(criterion="any", mode="early-exit"), progress=False)
    kw = dict(store=path, model=clf, top_png="-", hist_png="-", progress=False, echo=lambda m: None)
    with pytest.raises(AdvbgError, match=r"tinynet.seed0.any.early-exit\) lack \d+ of the \d+ pairs"):
        run_universal(compute=False, **kw)
    filled = run_universal(**kw)
    assert filled.forwards > 0 and filled.computed.startswith("tinynet.seed0.bg-class.exhaustive")
    fresh = make_random_store(tmp_path / "fresh.h5", n_fg=10, n_bg=12)      # same seed: same store
    full = run_universal(**{**kw, "store": fresh})
    assert filled.summary()["classes"] == full.summary()["classes"]
    assert run_universal(**kw).forwards == 0


def test_interrupted_fill_resumes_instead_of_starting_over(tmp_path):
    path = make_random_store(tmp_path / "s.h5", n_fg=40, n_bg=6)      # 2 units of 32 foregrounds
    with Store(path) as s:
        per_unit = 32 * int((s.backgrounds.labels >= 0).sum())
    clf = make_tiny_classifier()
    calls = _counting(clf)

    def crash_after_first_unit(m, i, o):
        if sum(calls) > per_unit:
            raise RuntimeError("simulated crash")
    handle = clf.model.register_forward_hook(crash_after_first_unit)
    kw = dict(store=path, model=clf, top_png="-", hist_png="-", progress=False, echo=lambda m: None)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_universal(**kw)
    handle.remove()
    calls.clear()
    r = run_universal(**kw)
    assert r.forwards == sum(calls) == 8 * per_unit // 32            # only the second unit's 8 foregrounds
    assert run_universal(**kw).forwards == 0


def test_results_of_another_classifier_are_not_reused(tmp_path):
    path = make_random_store(tmp_path / "s.h5", n_fg=6, n_bg=6)
    with Store(path, "r+") as s:
        search(s, make_tiny_classifier(seed=1), SearchConfig(), progress=False)
    with pytest.raises(AdvbgError, match="no stored outcome matrix for tinynet.seed0"):
        run_universal(store=path, model=make_tiny_classifier(), compute=False, echo=lambda m: None)


# --------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def cli_model(monkeypatch):
    from advbg.models.loading import ModelSpec

    clf = make_tiny_classifier()
    seen = {}

    def fake(spec):
        seen.update(model=spec.name, label_map=spec.label_map)
        return clf
    monkeypatch.setattr(ModelSpec, "load", fake)
    return seen


def test_cli_all_classes_prints_table_and_writes_files(tmp_path, cli_model):
    from typer.testing import CliRunner

    from advbg.cli.app import app

    path = make_random_store(tmp_path / "s.h5", n_fg=10, n_bg=4)    # 4 backgrounds: most classes have none
    res = CliRunner().invoke(app, ["universal", "--store", str(path), "--model", "tiny", "--class", "all",
                                   "--results-file", str(tmp_path / "u.json"), "-q"])
    assert res.exit_code == 0, res.output
    assert cli_model == dict(model="tiny", label_map="auto")
    for name in ("dog", "bird", "vehicle", "reptile", "carnivore", "insect", "instrument", "primate", "fish"):
        assert f"\n{name}" in res.output
    assert "has no backgrounds in this store" in res.output
    assert (tmp_path / "s.universal.all.bg-class.top.png").stat().st_size > 0
    assert (tmp_path / "s.universal.all.bg-class.hist.png").stat().st_size > 0
    summary = json.loads((tmp_path / "u.json").read_text())
    assert len(summary["classes"]) == 9 and summary["criterion"] == "bg-class"


def test_cli_one_class_csv(tmp_path, cli_model):
    from typer.testing import CliRunner

    from advbg.cli.app import app

    path = make_random_store(tmp_path / "s.h5", n_fg=10, n_bg=12)
    csv_path = tmp_path / "u.csv"
    res = CliRunner().invoke(app, ["universal", "--store", str(path), "--class", "reptile", "--criterion", "any",
                                   "--top", "2", "--greedy", "3", "--results-file", str(csv_path),
                                   "--top-png", str(tmp_path / "t.png"), "--hist-png", "-", "-q"])
    assert res.exit_code == 0, res.output
    assert "top 2 reptile backgrounds" in res.output and "greedy cover" in res.output
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("class_name,backgrounds,targets,total_fooled,top1_bg,top1_asr,top2_bg")
    assert len(lines) == 2 and lines[1].startswith("reptile,3,")
    assert (tmp_path / "t.png").exists() and not list(tmp_path.glob("*hist.png"))


def test_cli_unknown_class_is_one_line_error(tmp_path, cli_model, capsys):
    from advbg.cli import main

    path = make_random_store(tmp_path / "s.h5", n_fg=3, n_bg=3)
    with pytest.raises(SystemExit) as e:
        main(["universal", "--store", str(path), "--class", "spiders"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("advbg: error: unknown class 'spiders'") and err.count("\n") == 1


def test_bundled_demo_store_is_never_written(tmp_path, monkeypatch, capsys):
    """universal on the default store works on runs/demo.h5 and reuses what `advbg search` stored there."""
    import hashlib

    from advbg.commands.common import DEMO_STORE as DEFAULT_STORE

    assert DEFAULT_STORE.exists(), "advbg/data/demo.h5 is committed; rebuild it with python data/build_demo.py"
    before = hashlib.sha256(DEFAULT_STORE.read_bytes()).hexdigest()
    monkeypatch.chdir(tmp_path)
    clf = make_tiny_classifier(1000, "in9", seed=1, size=224)
    calls = _counting(clf)
    kw = dict(store=DEFAULT_STORE, model=clf, klass="insect", top_png="-", hist_png="-", progress=False,
              echo=lambda m: None)
    first = run_universal(**kw)
    assert first.forwards == sum(calls) > 0
    assert (tmp_path / "runs" / "demo.h5").exists()
    calls.clear()
    assert run_universal(**kw).forwards == 0 == sum(calls)
    assert hashlib.sha256(DEFAULT_STORE.read_bytes()).hexdigest() == before
