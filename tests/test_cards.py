"""Result cards, the leaderboard and the comparison table: numbers equal to the results files they come from
(read back with plain h5py), intervals equal to the exact definition, every refusal one line."""
from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import reference
from conftest import assert_one_line_error, make_random_store, make_tiny_classifier
from conftest import run_cli as run

from advbg.analysis.card import check_card, make_card, reproduce_command
from advbg.analysis.compare import Table, eval_table, recall, search_table
from advbg.analysis.leaderboard import build_board, to_html, to_markdown
from advbg.data.store import Store
from advbg.errors import AdvbgError
from advbg.search import SearchConfig, search
from advbg.search.results import load_search
from advbg.stats import Gap, rate

FIXTURES = Path(__file__).parent / "fixtures" / "cards"


@pytest.fixture
def searched(tmp_path):
    """A random store searched exhaustively (criterion any) and with early exit by the tiny classifier."""
    path = make_random_store(tmp_path / "store.h5")
    with Store(path, "r+") as s:
        search(s, make_tiny_classifier(), SearchConfig(criterion="any", mode="exhaustive"), progress=False)
        search(s, make_tiny_classifier(), SearchConfig(criterion="any", mode="early-exit"), progress=False)
    return path


def _results_file(store: Path, name: str) -> Path:
    return Path(str(store) + ".d") / "results" / f"{name}.h5"


def _names(store: Path) -> list[str]:
    return sorted(p.stem for p in (Path(str(store) + ".d") / "results").glob("*.h5"))


def test_card_counts_equal_the_results_file_and_the_interval_its_definition(searched):
    name = next(n for n in _names(searched) if n.endswith("exhaustive"))
    with h5py.File(_results_file(searched, name), "r") as f:        # plain h5py: an independent read
        k, n = int((f["first_fooling_bg"][()] >= 0).sum()), len(f["fg_id"])
        run_record = json.loads(f.attrs["run"])
    with Store(searched) as s:
        card = make_card(load_search(s, name), s)
        assert card["data"] == dict(store_digest=s.digest(), name="store.h5", n_foregrounds=7, n_backgrounds=11)
    assert card["counts"]["n"] == n and card["counts"]["vulnerable"] == k
    assert card["counts"]["composites_evaluated"] == run_record["forwards"]
    low, high = reference.clopper_pearson(k, n)
    fr, ca = card["fooling_rate"], card["challenge_accuracy"]
    assert (fr["k"], fr["n"], fr["rate"]) == (k, n, pytest.approx(100 * k / n))
    assert (fr["low"], fr["high"]) == pytest.approx((100 * low, 100 * high), abs=1e-6)
    assert (ca["k"], ca["rate"], ca["low"]) == (n - k, pytest.approx(100 - 100 * k / n), pytest.approx(100 - 100 * high))
    assert card["criterion"] == "any" and card["mode"] == "exhaustive" and card["model"]["name"] == "tiny9"
    assert card["command"].startswith("advbg search --store store.h5 --model tiny9 --criterion any")
    assert json.loads(json.dumps(card)) == card


def test_reproduce_command_names_the_options_that_change_the_result(searched):
    with Store(searched) as s:
        r = load_search(s, next(n for n in _names(searched) if n.endswith("exhaustive")))
    clf = dict(r.run.classifier, norm_source="option", mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    pruned = replace(r, run=replace(r.run, pruning="mix-k40", classifier=clf))
    cmd = reproduce_command(pruned, "s.h5")
    assert "--prune 40 --prune-rule mix" in cmd and "--norm 0.5,0.5,0.5,0.25,0.25,0.25" in cmd


def test_card_cli_by_name_and_by_results_file_and_refusals(searched, tmp_path, capsys):
    name = next(n for n in _names(searched) if n.endswith("early-exit"))
    code, out, err = run(["card", name, "--store", str(searched), "--out", str(tmp_path / "a.json")], capsys)
    assert code == 0, err
    code, out, err = run(["card", str(_results_file(searched, name)), "--out", str(tmp_path / "b.json")], capsys)
    assert code == 0, err
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a == b and a["mode"] == "early-exit" and "--early-exit" in a["command"]
    for args, pattern in ((["card", "nope", "--store", str(searched), "--out", str(tmp_path / "c.json")],
                           "no search results named 'nope'"),
                          (["card", name, "--store", str(searched), "--out", str(searched)], "input|json"),
                          (["card", str(tmp_path / "x.h5"), "--out", str(tmp_path / "c.json")], "not a results file")):
        code, _, err = run(args, capsys)
        assert_one_line_error(code, err, pattern)


# --------------------------------------------------------------------------------------------- check_card
def _fixture(name: str = "demo.lite0.any.exhaustive.json") -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_demo_fixture_cards_follow_the_schema_and_the_demo_headline():
    cards = {p.name: check_card(json.loads(p.read_text()), p.name) for p in sorted(FIXTURES.glob("*.json"))}
    assert {"demo.lite0.any.exhaustive.json", "demo.lite0.bg-class.exhaustive.json"} <= set(cards)
    lite0 = cards["demo.lite0.any.exhaustive.json"]
    assert (lite0["counts"]["vulnerable"], lite0["counts"]["n"]) == (6, 11)       # the demo headline: 6/11
    assert lite0["model"]["weights_sha256"].startswith("5793442")


def _tampered(path: str, value) -> dict:
    card = copy.deepcopy(_fixture())
    *keys, last = path.split(".")
    target = card
    for key in keys:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return card


@pytest.mark.parametrize("path, value, pattern", [
    ("schema_version", 2, "schema version 2"),
    ("schema", "something-else", "not an advbg result card"),
    ("model.weights_sha256", KeyError, "'weights_sha256' is a required property"),
    ("counts", KeyError, "'counts' is a required property"),
    ("counts.vulnerable", 12, "k > n"),
    ("counts.vulnerable", 5, "do not match"),
    ("fooling_rate.rate", 60.0, "do not add up"),
    ("fooling_rate.low", 20.0, "do not add up"),
    ("challenge_accuracy.high", 80.0, "do not add up"),
    ("fooling_rate.method", "wilson", "clopper-pearson"),
    ("criterion", "maybe", "criterion"),
    ("data.store_digest", "not-hex", "store_digest"),
    ("extra_field", 1, "Additional properties"),
], ids=lambda v: str(v)[:20])
def test_check_card_refuses_a_card_that_is_wrong(path, value, pattern):
    with pytest.raises(AdvbgError, match=pattern):
        check_card(_tampered(path, value))


def test_check_card_accepts_the_untouched_card():
    assert check_card(_fixture()) == _fixture()


# --------------------------------------------------------------------------------------------- leaderboard
def _card(name: str, k: int, n: int = 11, **changes) -> dict:
    c = copy.deepcopy(_fixture())
    c["model"]["name"] = name
    c["counts"].update(n=n, vulnerable=k)
    c["fooling_rate"], c["challenge_accuracy"] = rate(k, n).to_dict(), rate(n - k, n).to_dict()
    for key, v in changes.items():
        c[key] = v
    return check_card(c)


def test_leaderboard_ranks_by_challenge_accuracy_with_ties_sharing_a_rank():
    board = build_board([("a", _card("a", 6)), ("b", _card("b", 2)), ("c", _card("c", 8)), ("d", _card("d", 2))])
    assert [(e.rank, e.model) for e in board.entries] == [(1, "b"), (1, "d"), (3, "a"), (4, "c")]
    md = to_markdown(board)
    assert "81.8% [48.2, 97.7] (9/11)" in md and "Clopper-Pearson" in md
    html = to_html(board)
    assert "81.8% [48.2, 97.7] (9/11)" in html
    assert "http://" not in html.replace("http-equiv", "") and "https://" not in html and " src=" not in html


def test_leaderboard_cli_writes_markdown_and_html_and_refuses_mixed_or_tampered_cards(tmp_path, capsys):
    cards = [str(p) for p in sorted(FIXTURES.glob("demo.*.any.*.json"))]
    code, out, err = run(["leaderboard", *cards, "--out", str(tmp_path / "b.md")], capsys)
    assert code == 0, err
    assert (tmp_path / "b.md").read_text().count("| advbg/lite") == len(cards)
    code, out, err = run(["leaderboard", *cards, "--out", str(tmp_path / "b.html")], capsys)
    assert code == 0 and (tmp_path / "b.html").read_text().startswith("<!DOCTYPE html>")
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_card("x", 3) | {"data": _fixture()["data"] | {"store_digest": "0" * 16}}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_tampered("counts.vulnerable", 12)))
    old = tmp_path / "old.json"
    old.write_text(json.dumps(_tampered("schema_version", 0)))
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps(_tampered("model", KeyError)))
    for extra, pattern in (([str(FIXTURES / "demo.lite0.bg-class.exhaustive.json")], "different criteria"),
                           ([str(other)], "different store digests"), ([str(bad)], "k > n"),
                           ([str(old)], "schema version 0"), ([str(missing)], "'model' is a required property"),
                           ([str(tmp_path / "none.json")], "does not exist")):
        code, _, err = run(["leaderboard", cards[0], *extra, "--out", str(tmp_path / "c.md")], capsys)
        assert_one_line_error(code, err, pattern)
        assert not (tmp_path / "c.md").exists()
    code, _, err = run(["leaderboard", cards[0], "--out", str(tmp_path / "c.txt")], capsys)
    assert_one_line_error(code, err, r"\.md .*\.html")


# --------------------------------------------------------------------------------------------- compare
def test_search_table_rows_equal_the_results_and_a_partial_run_shows_its_recall(searched):
    with Store(searched) as s:
        results = [load_search(s, n) for n in _names(searched)]
    full = next(r for r in results if r.run.mode == "exhaustive")
    table = search_table(results)
    for r, row in zip(results, table.rows):
        k = int((r.first_fooling_bg >= 0).sum())
        assert row["fooling rate"] == rate(k, len(r.fg_id)) and row["n"] == len(r.fg_id)
        assert row["composites"] == r.run.forwards and row["criterion"] == "any"
    assert table.rows[results.index(full)]["recall"] is None
    # a partial run that missed one vulnerable foreground: recall (k-1)/k against the exhaustive run
    fooled = np.flatnonzero(full.first_fooling_bg >= 0)
    assert len(fooled) >= 1
    first = full.first_fooling_bg.copy()
    first[fooled[0]] = -1
    pruned = replace(full, first_fooling_bg=first, run=replace(full.run, pruning="knn 3 of 11"), results_name="p")
    assert recall(pruned, [full, pruned]) == rate(len(fooled) - 1, len(fooled))
    other = replace(pruned, run=replace(pruned.run, criterion="Criterion('bg-class': ...)"))
    assert recall(other, [full, other]) is None                   # another criterion is no reference
    md = search_table([full, pruned]).to_markdown()
    assert f"({len(fooled) - 1}/{len(fooled)})" in md and "pruned (knn 3 of 11)" in md


def _eval_file(tmp_path) -> Path:
    data = dict(label_rule="x", store=dict(digest="abc"), models=[dict(
        model=dict(name="m1", weights_sha256="f" * 64), baseline=False, bg_gap=25.0,
        bg_gap_interval=Gap(25.0, -10.0, 60.0, 4).to_dict(),
        accuracy=dict(mixed_rand=dict(n=4, topk=dict(top1=50.0), correct=dict(top1=2)),
                      original=dict(n=4, topk=dict(top1=100.0), correct=dict(top1=4)),
                      mixed_same=dict(n=4, topk=dict(top1=75.0), correct=dict(top1=3))))])
    p = tmp_path / "e.json"
    p.write_text(json.dumps(data))
    return p


def test_eval_table_rows_equal_the_eval_file_in_every_format(tmp_path):
    t = eval_table([_eval_file(tmp_path)])
    assert t.columns[:6] == ["model", "weights", "store", "original", "mixed_same", "mixed_rand"]
    row = t.rows[0]
    assert row["original"] == rate(4, 4) and row["mixed_same"] == rate(3, 4) and row["BG-Gap"].n == 4
    assert "75.0% [19.4, 99.4] (3/4)" in t.to_markdown() and "25.0 [-10.0, 60.0] (n=4)" in t.to_markdown()
    lines = t.to_csv().splitlines()
    cells = dict(zip(lines[0].split(","), lines[1].split(",")))
    assert cells["mixed_same_k"] == "3" and float(cells["mixed_same_low"]) == pytest.approx(
        100 * reference.clopper_pearson(3, 4)[0])
    js = json.loads(t.to_json())
    assert js["rows"][0]["mixed_same"]["k"] == 3 and js["rows"][0]["BG-Gap"]["low"] == -10.0


def test_compare_cli_formats_and_bad_input(tmp_path, capsys):
    e = _eval_file(tmp_path)
    for fmt in ("md", "csv", "json"):
        code, out, err = run(["compare", "--eval", str(e), "--out", str(tmp_path / f"t.{fmt}")], capsys)
        assert code == 0, err
    assert json.loads((tmp_path / "t.json").read_text())["rows"][0]["model"] == "m1"
    code, out, err = run(["compare", "--eval", str(e)], capsys)
    assert code == 0 and "| m1 |" in out
    e2 = tmp_path / "e2.json"
    e2.write_text(e.read_text().replace('"m1"', '"m2"'))
    code, out, err = run(["compare", "--eval", str(e), str(e2), "--format", "csv"], capsys)   # as the issue spells it
    assert code == 0, err
    assert [line.split(",")[0] for line in out.splitlines()[1:]] == ["m1", "m2"]
    code, _, err = run(["compare"], capsys)
    assert_one_line_error(code, err, "nothing to compare")
    code, _, err = run(["compare", "--eval", str(tmp_path / "no.json")], capsys)
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run(["compare", "--eval", str(e), "--format", "xls"], capsys)
    assert_one_line_error(code, err, "md, csv, json")


def test_table_renders_rate_cells_in_every_format():
    t = Table("t", ["a", "r"], [dict(a="x", r=rate(6, 11)), dict(a="y", r=None)])
    assert "54.5% [23.4, 83.3] (6/11)" in t.to_markdown() and "| y | - |" in t.to_markdown()
    assert t.to_csv().splitlines()[0] == "a,r,r_low,r_high,r_k,r_n"
