"""`advbg report`: the page shows what the store holds, sorts and filters in a real browser, requests nothing
outside itself, and bad input gives one line and no half-written page.

Browser tests use headless Chromium from the Debian package (`apt-get install chromium`, done by .ci/run when it
can); they skip, saying what was not checked, when /usr/bin/chromium is absent. Nothing here installs anything.
"""
from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import TinyNet, assert_one_line_error, make_random_store, make_tiny_classifier, register_tiny, run_cli
from scipy.stats import beta

from advbg.analysis.report import GalleryCap, build_report, render_html
from advbg.commands.report import run_report
from advbg.data.sidecar import sidecar_files
from advbg.data.store import Store
from advbg.search.config import SearchConfig
from advbg.search.results import RunId, RunRecord, SearchResult, load_search, write_result
from advbg.search.runner import search

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium absent (Debian package `chromium`): the gallery's DOM, its "
                                  "sorting/filtering script and the page's network requests were NOT checked in a "
                                  "browser")


# A sweep of three 1000-class models read through the in9 label map (so the 'none' rate is defined), with names as
# long as real ones: the page's tables must hold them at 1280 px.
SWEEP = [f"test/report-sweep-{c}-efficientnet-lite-like-name" for c in "abc"]
for _i, _name in enumerate(SWEEP):
    register_tiny(_name, lambda i=_i: TinyNet(1000, seed=10 + i), weight_tag=f"seed{10 + _i}", class_names=None)


# --------------------------------------------------------------------------------------------- helpers
@pytest.fixture
def searched_store(tmp_path):
    """A random 9-class store (12 fg x 15 bg) searched exhaustively by the tiny classifier (outcomes recorded)."""
    path = make_random_store(tmp_path / "store.h5", n_fg=12, n_bg=15, seed=3)
    with Store(path, "r+") as s:
        search(s, make_tiny_classifier(), SearchConfig(criterion="any", mode="exhaustive"), progress=False)
    return path


def chromium(tmp_path: Path, url: str, *args: str) -> str:
    """Run headless Chromium on ``url`` with everything that phones home turned off; stdout."""
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args, url]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def dump_dom(tmp_path: Path, page: Path, fragment: str = "") -> str:
    return chromium(tmp_path, page.resolve().as_uri() + fragment, "--virtual-time-budget=5000", "--dump-dom")


class _Rows(HTMLParser):
    """Gallery rows (attributes, in document order) per gallery table, and the <body> attributes."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[dict]] = {}
        self.body: dict = {}
        self._table = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "table" and "gallery" in (a.get("class") or "").split():
            self._table = a["data-results"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table and "fg-row" in (a.get("class") or "").split():
            self.tables[self._table].append(a)

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None


def gallery(html: str) -> tuple[dict[str, list[dict]], dict]:
    p = _Rows()
    p.feed(html)
    return p.tables, p.body


def margins(rows: list[dict]) -> list[float]:
    return [float(r["data-margin"]) if r["data-margin"] else float("nan") for r in rows]


def fabricate_results(path: Path, name: str = "fake.any.exhaustive", seed: int = 0, complete: bool = True,
                      worst_pool: int | None = None) -> None:
    """A search results group with made-up (seeded) arrays, written through the results owner; no model involved.
    ``worst_pool``: the worst backgrounds are drawn from this many backgrounds (default: all)."""
    rng = np.random.default_rng(seed)
    with Store(path, "r+") as s:
        n_fg, n_bg, names = len(s.foregrounds), len(s.backgrounds), s.class_names
        fg, pool, true = np.arange(n_fg), np.arange(n_bg), s.foregrounds.labels
        outcome = rng.integers(0, len(names), (n_fg, n_bg)).astype(np.uint8)
        outcome[rng.random((n_fg, n_bg)) < 0.05] = 254
        margin = rng.normal(1.0, 2.0, n_fg)
        fooled = margin < 0
        worst = rng.integers(0, worst_pool or n_bg, n_fg)
        cfg = dict(name="fake", architecture="fakenet", weight_tag="seed0", weights_sha256="ab" * 32,
                   label_map="identity", class_names=list(names), source="test", mean=[0.5] * 3, std=[0.25] * 3,
                   input_size=[3, 32, 32], interpolation="bilinear", num_outputs=len(names))
        attrs = dict(kind="search", criterion="any", mode="exhaustive", model="fakenet.seed0", label_map="identity",
                     config=json.dumps(dict(criterion="any", mode="exhaustive")), classifier=json.dumps(cfg))
        fooling = np.where(fooled, 1 + rng.integers(0, n_bg, n_fg) // 2, 0)
        run = RunRecord(advbg_version="0", classifier=cfg, store=str(path), store_digest=s.digest(),
                        criterion="any", mode="exhaustive", pruning=None, config={}, device="cpu",
                        started="2026-01-01T00:00:00+00:00", seconds=2.0, forwards=n_fg * n_bg)
        result = SearchResult(run, fg, true, worst_bg=worst, worst_margin=margin,
                              worst_pred=np.where(fooled, (true + 1) % len(names), true),
                              first_fooling_bg=np.where(fooled, worst, -1), n_fooling=fooling,
                              n_evaluated=np.full(n_fg, n_bg), n_invalid=np.zeros(n_fg, np.int64),
                              class_names=tuple(names))
        write_result(s, name, RunId("fabricated", fg, pool, true, attrs, True, 32), result, outcome)
    if not complete:  # results files appear only once complete; an incomplete one is a damaged or foreign file
        with h5py.File(sidecar_files(path, "results")[name], "r+") as f:
            f.attrs["complete"] = False


# --------------------------------------------------------------------------------------------- browser
@needs_chromium
def test_gallery_dom_has_every_foreground_with_its_stored_worst_background_and_sorts(searched_store, tmp_path):
    out = run_report(searched_store, tmp_path / "report.html", progress=False, echo=lambda _: None)
    with Store(searched_store) as s:
        (name,) = list(s.results)
        r = load_search(s, name)
        names = s.class_names
    want = {int(f): (int(b), f"{m:+.3f}", names[int(c)]) for f, b, m, c in
            zip(r.fg_id, r.worst_bg, r.worst_margin, r.true_class)}

    tables, body = gallery(dump_dom(tmp_path, out, "#sort=-margin"))
    assert body.get("data-sorted") == "-margin"                # the page's script ran and applied the hash
    rows = tables[name]
    assert len(rows) == len(r)                                 # one row per foreground
    got = {int(a["data-fg"]): (int(a["data-bg"]), a["data-margin"], a["data-class"]) for a in rows}
    assert got == want                                         # the stored worst background and margin
    m = margins(rows)
    assert m == sorted(m, reverse=True) and m != sorted(m)     # highest first, and not the server's order

    rows = gallery(dump_dom(tmp_path, out, "#sort=margin"))[0][name]
    assert margins(rows) == sorted(margins(rows))

    rows = gallery(dump_dom(tmp_path, out, "#sort=fg"))[0][name]
    assert [int(a["data-fg"]) for a in rows] == sorted(int(f) for f in r.fg_id)

    cls = names[int(r.true_class[0])]
    rows = gallery(dump_dom(tmp_path, out, f"#sort=margin&class={cls}"))[0][name]
    shown = {int(a["data-fg"]) for a in rows if "hidden" not in a}
    assert shown == {int(f) for f, c in zip(r.fg_id, r.true_class) if names[int(c)] == cls}


@needs_chromium
def test_gallery_pages_show_consecutive_rows_of_the_sorted_order(searched_store, tmp_path):
    with Store(searched_store) as s:
        r = load_search(s)
    cap = GalleryCap(page_rows=5)
    out = tmp_path / "paged.html"
    out.write_text(render_html(build_report(searched_store, cap=cap, verify=False, progress=False,
                                            echo=lambda _: None)))
    order = [int(r.fg_id[k]) for k in np.argsort(-r.worst_margin, kind="stable")]        # highest margin first
    for page, want in ((1, order[:5]), (2, order[5:10]), (3, order[10:]), (9, order[10:])):   # 9: last page
        rows = gallery(dump_dom(tmp_path, out, f"#sort=-margin&page={page}"))[0][r.results_name]
        on = [int(a["data-fg"]) for a in rows if "off" not in a["class"].split()]
        assert on == want, page


def _requests_outside(net_log: Path, folder: Path) -> list[str]:
    """URLs the page asked for that are neither data: nor a file inside ``folder``. Requests the browser makes
    for itself (updates, accounts) carry the initiator 'not an origin' and are not the page's."""
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    inside = folder.resolve().as_uri() + "/"
    starts = [e.get("params", {}) for e in log["events"] if e["type"] == start]
    urls = [p["url"] for p in starts if "url" in p and p.get("initiator") != "not an origin"]   # (end events: no url)
    return [u for u in urls if not u.startswith(("data:", inside))]


@needs_chromium
def test_no_request_leaves_the_pages_folder(searched_store, tmp_path):
    page_dir = tmp_path / "page"
    page_dir.mkdir()
    out = run_report(searched_store, page_dir / "report.html", progress=False, echo=lambda _: None)

    # The detector works: the same page with the CSP removed and one remote image asks for that image.
    html = out.read_text()
    control = page_dir / "control.html"
    control.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
                       .replace("</main>", '<img src="http://127.0.0.1:9/probe.png" alt=""></main>'))
    chromium(tmp_path, control.as_uri(), "--virtual-time-budget=3000", f"--log-net-log={tmp_path / 'c.json'}",
             "--dump-dom")
    assert any("127.0.0.1:9/probe.png" in u for u in _requests_outside(tmp_path / "c.json", page_dir))

    chromium(tmp_path, out.as_uri(), "--virtual-time-budget=3000", f"--log-net-log={tmp_path / 'n.json'}",
             "--dump-dom")
    assert _requests_outside(tmp_path / "n.json", page_dir) == []


# --------------------------------------------------------------------------------------------- static checks
class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.csp, self._style = [], None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "meta" and a.get("http-equiv") == "Content-Security-Policy":
            self.csp = a["content"]
        for k in ("src", "href", "srcset", "poster", "action", "data", "formaction", "background"):
            if a.get(k):
                self.refs.append(a[k])
        self.refs += re.findall(r"url\(\s*['\"]?([^'\")]+)", a.get("style") or "")
        self._style = tag == "style"

    def handle_data(self, data):
        if self._style:
            self.refs += re.findall(r"url\(\s*['\"]?([^'\")]+)", data)
            self.refs += re.findall(r"@import\s+['\"]?([^'\";\s]+)", data)

    def handle_endtag(self, tag):
        self._style = False


def test_every_reference_is_embedded_and_a_csp_forbids_the_rest(searched_store, tmp_path):
    out = run_report(searched_store, tmp_path / "r.html", progress=False, echo=lambda _: None)
    p = _Refs()
    p.feed(out.read_text())
    assert p.refs, "the page embeds images"
    assert [u for u in p.refs if not u.startswith(("data:", "#"))] == []
    assert "default-src 'none'" in p.csp and "img-src data:" in p.csp


def test_universal_numbers_match_a_plain_loop_over_the_outcome_matrix(tmp_path):
    """ASR, union and best background per class against the definitions, looped pair by pair."""
    path = make_random_store(tmp_path / "s.h5", n_fg=30, n_bg=25, seed=5)
    fabricate_results(path, seed=5)
    with Store(path) as s:
        names, fgc, bgc = s.class_names, s.foregrounds.labels, s.backgrounds.labels
        outcome = s.results["fake.any.exhaustive"]["outcome"][()]
    rep = build_report(path, verify=False, progress=False, echo=lambda _: None)
    (u,) = rep.universals
    assert len(u.classes) == len(names)
    for cv in u.classes:
        c = names.index(cv.name)
        bgs = [b for b in range(len(bgc)) if bgc[b] == c]
        targets = [f for f in range(len(fgc)) if fgc[f] != c]
        assert cv.n_backgrounds == len(bgs) and cv.n_targets == len(targets)
        if not bgs:
            assert cv.message
            continue
        asr = {b: 100.0 * sum(outcome[f, b] == c for f in targets) / len(targets) for b in bgs}
        union = 100.0 * sum(any(outcome[f, b] == c for b in bgs) for f in targets) / len(targets)
        assert cv.union == pytest.approx(union)
        best = max(asr.values())
        assert cv.top[0] == (min(b for b in bgs if asr[b] == best), pytest.approx(best))
        assert [a for _, a in cv.top] == pytest.approx(sorted(asr.values(), reverse=True)[:5])
        if cv.greedy:
            assert cv.greedy[-1][2] <= union + 1e-9


def test_gallery_cap_images_the_worst_and_then_fooled_rows_only(tmp_path):
    path = make_random_store(tmp_path / "s.h5", n_fg=40, n_bg=6, seed=2)
    fabricate_results(path, seed=2)
    cap = GalleryCap(worst=5, fooled=4, thumb=16)
    rep = build_report(path, cap=cap, verify=False, progress=False, echo=lambda _: None)
    rows = rep.searches[0].rows
    assert len(rows) == 40
    by_margin = sorted(rows, key=lambda r: r.margin)
    imaged = {r.fg_id for r in rows if r.fg_img}
    worst5 = {r.fg_id for r in by_margin[:5]}
    fooled_next = [r.fg_id for r in by_margin[5:] if r.fooled][:4]
    assert imaged == worst5 | set(fooled_next)


def test_eval_file_adds_table_and_bg_gap(searched_store, tmp_path):
    ev = tmp_path / "eval.json"
    ev.write_text(json.dumps(dict(label_rule="x", store=dict(path="s", digest="d"), models=[
        dict(model=dict(name="m1", tag="a.b", weights_sha256="cd" * 32), baseline=False, bg_gap=12.5,
             accuracy=dict(original=dict(topk=dict(top1=90.0)), mixed_same=dict(topk=dict(top1=80.0)),
                           mixed_rand=dict(topk=dict(top1=67.5))))])))
    rep = build_report(searched_store, [ev], verify=False, progress=False, echo=lambda _: None)
    (e,) = rep.evals
    assert e.variants == ["original", "mixed_same", "mixed_rand"]
    assert e.rows[0]["top1"] == [90.0, 80.0, 67.5] and e.rows[0]["bg_gap"] == 12.5
    assert [row[0] for row in e.views[0].cells] == [90.0, 80.0, 67.5]     # no counts in the file: the bare %
    html = render_html(rep)
    assert "12.5" in html and "NOT this store" in html and e.plot.startswith("data:image/png;base64,")
    d = json.loads(ev.read_text())
    d["models"][0]["bg_gap_interval"] = dict(diff=12.5, low=-2.5, high=27.5, n=40)     # a paired gap: its interval
    ev.write_text(json.dumps(d))
    html = render_html(build_report(searched_store, [ev], verify=False, progress=False, echo=lambda _: None))
    assert tables_of(html, "evaluation")[0][1][-1] == "+12.5[-2.5, +27.5] n=40"


def test_provenance_says_whether_checksums_were_verified(searched_store, tmp_path):
    rep = build_report(searched_store, verify=True, progress=False, echo=lambda _: None)
    assert dict(rep.provenance)["item checksums"].startswith("verified")
    rep = build_report(searched_store, verify=False, progress=False, echo=lambda _: None)
    assert dict(rep.provenance)["item checksums"].startswith("not verified")
    assert "torch" in dict(rep.provenance)["report written by"]


# --------------------------------------------------------------------------------------------- bad input
def test_store_without_results_is_one_line_and_writes_nothing(random_store, tmp_path, capsys):
    code, _, err = run_cli(["report", "--store", str(random_store), "--out", str(tmp_path / "r.html")], capsys)
    assert_one_line_error(code, err, "no complete results")
    assert not (tmp_path / "r.html").exists()


def test_incomplete_group_is_refused_unless_skipped_and_an_old_page_survives(tmp_path, capsys):
    path = make_random_store(tmp_path / "s.h5", n_fg=8, n_bg=5, seed=1)
    fabricate_results(path, "done", seed=1)
    fabricate_results(path, "cut", seed=2, complete=False)
    page = tmp_path / "r.html"
    page.write_text("old page")
    code, _, err = run_cli(["report", "--store", str(path), "--out", str(page), "-q"], capsys)
    assert_one_line_error(code, err, "'cut' are incomplete")
    assert page.read_text() == "old page"
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    code, out, _ = run_cli(["report", "--store", str(path), "--out", str(page), "--skip-incomplete", "-q"], capsys)
    assert code == 0 and "report:" in out
    html = page.read_text()
    assert "Skipped incomplete" in html and 'data-results="done"' in html and 'data-results="cut"' not in html


@pytest.mark.parametrize("out, pattern", [
    ("/proc/advbg-report.html", "cannot write"),
    ("{tmp}/missing/r.html", "does not exist"),
    ("{tmp}/r.txt", "must end in .html"),
    ("{tmp}", "is a directory"),
])
def test_bad_output_is_one_line(searched_store, tmp_path, capsys, out, pattern):
    code, _, err = run_cli(["report", "--store", str(searched_store), "--out", out.format(tmp=tmp_path), "-q"],
                           capsys)
    assert_one_line_error(code, err, pattern)


def test_bad_eval_file_is_one_line(searched_store, tmp_path, capsys):
    bad = tmp_path / "e.json"
    bad.write_text('{"not": "eval"}')
    code, _, err = run_cli(["report", "--store", str(searched_store), "--eval", str(bad), "-q"], capsys)
    assert_one_line_error(code, err, "not an `advbg eval` results file")


def test_the_store_is_not_changed(searched_store, tmp_path):
    before = Path(searched_store).read_bytes()
    run_report(searched_store, tmp_path / "r.html", progress=False, echo=lambda _: None)
    assert Path(searched_store).read_bytes() == before


# --------------------------------------------------------------------------------------------- scale, demo
@pytest.mark.slow
def test_4050_foreground_page_stays_under_10_mb(tmp_path):
    """The size the README quotes: 4,050 foregrounds (the IN-9 test set's count), 400 backgrounds, 96 px
    noise images (JPEG's worst case, so photos give smaller pages), default caps, default 128 px thumbnails."""
    path = make_random_store(tmp_path / "big.h5", n_fg=4050, n_bg=400, size=96, seed=7)
    fabricate_results(path, seed=7)
    out = run_report(path, tmp_path / "big.html", verify=False, progress=False, echo=lambda _: None)
    size = out.stat().st_size
    print(f"4,050-foreground report: {size / 1e6:.2f} MB")
    html = out.read_text()
    assert html.count('class="fg-row') == 4050
    assert html.count("<img class=\"thumb\"") == 2 * (200 + 100)
    assert size < 10e6


@pytest.mark.slow
def test_demo_search_universal_report(tmp_path, monkeypatch, capsys):
    """The issue's done-when: on the demo store, `advbg search`, `advbg universal --class all`, `advbg report`."""
    monkeypatch.chdir(tmp_path)
    for args in (["search", "-q"], ["universal", "--class", "all", "-q"], ["report", "-q"]):
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
    page = tmp_path / "runs" / "demo.report.html"
    assert page.exists() and "report: runs/demo.report.html" in out
    with Store(tmp_path / "runs" / "demo.h5") as s:
        r = load_search(s)
    html = page.read_text()
    tables, _ = gallery(html)
    rows = tables[r.results_name]
    assert {int(a["data-fg"]): int(a["data-bg"]) for a in rows} == dict(zip(map(int, r.fg_id), map(int, r.worst_bg)))
    assert 'id="universal"' in html and "greedy cover" in html


def test_demo_store_without_working_copy_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["report"], capsys)
    assert_one_line_error(code, err, "run `advbg search` first")
    assert not (tmp_path / "runs").exists()


def test_cli_options_reach_run_report(monkeypatch, capsys, tmp_path):
    seen = {}
    monkeypatch.setattr("advbg.cli.report.run_report", lambda store, out, **kw: seen.update(store=store, out=out, **kw))
    code, _, err = run_cli(["report", "-s", "s.h5", "-o", "p.html", "--eval", "a.json", "--eval", "b.json",
                            "--saliency", "c.json",
                            "--gallery-worst", "7", "--gallery-fooled", "3", "--thumb", "64", "--page-rows", "9",
                            "--no-verify", "--skip-incomplete", "-q"], capsys)
    assert code == 0, err
    assert seen["store"] == Path("s.h5") and seen["out"] == Path("p.html")
    assert seen["eval_files"] == [Path("a.json"), Path("b.json")] and seen["saliency_files"] == [Path("c.json")]
    assert seen["cap"] == GalleryCap(worst=7, fooled=3, thumb=64, page_rows=9)
    assert (seen["verify"], seen["skip_incomplete"], seen["progress"]) == (False, True, False)


def test_early_exit_search_says_why_universal_numbers_are_missing(tmp_path):
    path = make_random_store(tmp_path / "s.h5", n_fg=10, n_bg=12, seed=4)
    with Store(path, "r+") as s:
        search(s, make_tiny_classifier(), SearchConfig(criterion="any", mode="early-exit"), progress=False)
    rep = build_report(path, verify=False, progress=False, echo=lambda _: None)
    (u,) = rep.universals
    assert u.classes == [] and "never evaluated" in u.note
    assert any("early-exit" in w for w in rep.searches[0].warnings)
    assert "never evaluated" in render_html(rep)


# --------------------------------------------------------------------------------------------- everything a store holds
def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    """The exact 95% interval in %, from the beta quantiles (the textbook definition; not advbg.stats)."""
    low = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
    high = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
    return 100.0 * low, 100.0 * high


def rate_cell(k: int, n: int) -> str:
    """How a table cell of the page reads a rate: the value, then '[low, high] k/n' below it."""
    lo, hi = clopper_pearson(k, n)
    return f"{100.0 * k / n:.1f}%[{lo:.1f}, {hi:.1f}] {k}/{n}"


@pytest.fixture
def full_store(searched_store, tmp_path, capsys):
    """The searched store, plus an eval sweep of three models (top-1 and top-5 on every variant, as `advbg eval`
    does by default) and a saliency run with its maps: (store, eval JSON, saliency JSON)."""
    pytest.importorskip("captum", reason="the [saliency] extra (captum) is not installed: the report's saliency "
                                         "section and intervals NOT checked")
    ev, sal = tmp_path / "eval.json", tmp_path / "sal.json"
    code, _, err = run_cli(["eval", "-s", str(searched_store), "-m", ",".join(SWEEP), "--label-map", "in9",
                            "-V", "all", "--top-k", "1,5", "--results-file", str(ev), "-q"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["saliency", "-s", str(searched_store), "-m", "test/tiny", "-V", "original,mixed_rand",
                            "--results-file", str(sal), "--maps", str(tmp_path / "maps.npz"), "--grid", "-", "-q"],
                           capsys)
    assert code == 0, err
    return searched_store, ev, sal


class _Tables(HTMLParser):
    """Every table: its class, the id of the section around it, and its rows of cell texts (td and th)."""

    def __init__(self):
        super().__init__()
        self.tables: list[dict] = []
        self.section = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.section = a.get("id")
        elif tag == "table":
            self.tables.append(dict(cls=(a.get("class") or "").split(), section=self.section, rows=[]))
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append(" ".join("".join(self._cell).split()).replace("% [", "%["))
            self._cell = None


def tables_of(html: str, section: str, cls: str | None = None) -> list[list[list[str]]]:
    p = _Tables()
    p.feed(html)
    return [t["rows"] for t in p.tables if t["section"] == section and (cls is None or cls in t["cls"])]


def test_every_number_of_the_page_has_its_interval_recomputed_from_the_counts(full_store, tmp_path):
    store, ev, sal = full_store
    html = render_html(build_report(store, [ev], saliency_files=[sal], verify=False, progress=False,
                                    echo=lambda _: None))
    with Store(store) as s:
        r = load_search(s)
        names, fgc, bgc = s.class_names, s.foregrounds.labels, s.backgrounds.labels
        outcome = s.results[r.results_name]["outcome"][()]

    # the headline: fooling rate and challenge accuracy, k/n and interval
    k, n = int(r.fooled.sum()), len(r)
    lo, hi = clopper_pearson(k, n)
    assert f"fooling rate [{lo:.1f}, {hi:.1f}] ({k}/{n} vulnerable)" in html
    assert f"challenge accuracy [{100 - hi:.1f}, {100 - lo:.1f}] ({n - k}/{n})" in html

    # the comparison table: the search run's row
    (runs, *_) = tables_of(html, "comparison")
    head, row = runs[0], runs[1]
    assert row[head.index("fooling rate")] == rate_cell(k, n)
    assert row[head.index("challenge accuracy")] == rate_cell(n - k, n)

    # every view of the eval file: each top-k and the 'none' rate, per variant and model, and the paired BG-Gap
    d = json.loads(ev.read_text())
    view = tables_of(html, "evaluation", "view")[0]
    variants = [row[0] for row in view[2:]]
    shorts = view[1][:3]
    assert shorts == ["top-1", "top-5", "none"]
    for i, v in enumerate(variants):
        for j, m in enumerate(d["models"]):
            a = m["accuracy"][v]
            want = [rate_cell(a["correct"]["top1"], a["n"]), rate_cell(a["correct"]["top5"], a["n"]),
                    rate_cell(round(a["none_rate"] * a["n"] / 100), a["n"])]
            assert view[2 + i][1 + 3 * j: 4 + 3 * j] == want, (v, j)
    gaps = tables_of(html, "evaluation")[0]
    for row, m in zip(gaps[1:], d["models"]):
        g = m["bg_gap_interval"]      # None where mixed_same and mixed_rand do not hold the same images
        assert row[-1] == (f"{g['diff']:+.1f}[{g['low']:+.1f}, {g['high']:+.1f}] n={g['n']}" if g else
                           "-" if m["bg_gap"] is None else f"{m['bg_gap']:.1f}")
    # the comparison's eval table (a column per model): top-1 again, from the same counts
    side = tables_of(html, "comparison")[1]
    for row in side[4:]:
        if row[0] in variants:
            a = [m["accuracy"][row[0]] for m in d["models"]]
            assert row[1:] == [rate_cell(x["correct"]["top1"], x["n"]) for x in a]
    # per-class accuracy of each model
    per_class = tables_of(html, "evaluation", "view")[1:]
    assert len(per_class) == len(d["models"])
    for t, m in zip(per_class, d["models"]):
        for row in t[1:]:
            for v, got in zip(variants, row[1:]):
                a = m["accuracy"][v]
                kk, nn = a["class_correct"].get(row[0]), a["class_counts"][row[0]]
                assert got == (rate_cell(kk, nn) if nn else "-")

    # universal: union and best ASR per class, k/n of the targets, looped over the outcome matrix
    (classes,) = tables_of(html, "universal")
    for row in classes[1:]:
        c = names.index(row[0])
        bgs = [b for b in range(len(bgc)) if bgc[b] == c]
        targets = [f for f in range(len(fgc)) if fgc[f] != c]
        if not bgs or not targets:
            continue
        union = sum(any(outcome[f, b] == c for b in bgs) for f in targets)
        best = max(sum(outcome[f, b] == c for f in targets) for b in bgs)
        assert row[3] == rate_cell(union, len(targets)) and row[4] == rate_cell(best, len(targets))

    # saliency: top-1 accuracy per variant from the images' predictions; the share's bootstrap interval as stored
    sd = json.loads(sal.read_text())
    (shares,) = tables_of(html, "saliency", "saliency-share")
    for row, v in zip(shares[1:], sd["variants"]):
        hits = sum(x["pred"] == x["label"] for x in v["images_detail"])
        o = v["overall"]["share"]
        assert row[0] == v["variant"] and row[2] == rate_cell(hits, len(v["images_detail"]))
        assert row[4] == f"{o['mean']:.3f} [{o['low']:.3f}, {o['high']:.3f}] (n={o['n']})"
    assert "Clopper-Pearson" in html and "paired bootstrap" in html          # the interval kinds, said once


# A script added to a copy of the page: after layout, every table cell whose box leaves its card (or any cell
# that leaves the page) is listed in <body data-overflow>.
OVERFLOW_PROBE = """<script>
addEventListener("load", function () {
  var bad = [], cells = 0, page = document.documentElement.clientWidth;
  document.querySelectorAll("td, th").forEach(function (td) {
    var r = td.getBoundingClientRect(), card = td.closest(".card"), box = card ? card.getBoundingClientRect() : null;
    if (!r.width) return;
    cells += 1;
    if ((box && (r.right > box.right + 0.5 || r.left < box.left - 0.5)) || r.right > page + 0.5)
      bad.push(td.textContent.trim().slice(0, 40));
  });
  document.body.dataset.overflow = JSON.stringify(bad);
  document.body.dataset.cells = String(cells);
  document.body.dataset.scroll = String(document.documentElement.scrollWidth - page);
});
</script>"""


def probe_layout(tmp_path: Path, html: str, name: str) -> dict:
    page = tmp_path / name
    page.write_text(html.replace("</body>", OVERFLOW_PROBE + "</body>"))
    dom = chromium(tmp_path, page.resolve().as_uri(), "--window-size=1280,2000", "--virtual-time-budget=5000",
                   "--dump-dom")
    return gallery(dom)[1] | {"dom": dom}


@needs_chromium
def test_at_1280_px_no_table_cell_is_wider_than_its_card(full_store, tmp_path):
    store, ev, sal = full_store
    html = render_html(build_report(store, [ev], saliency_files=[sal], verify=False, progress=False,
                                    echo=lambda _: None))
    # The probe works: a card holding a cell too wide for it is reported.
    wide = ('<div class="card"><table><tr><td style="white-space: nowrap">' + "BG-Gap " * 400
            + "</td></tr></table></div>")
    control = probe_layout(tmp_path, html.replace("</main>", wide + "</main>"), "control.html")
    assert json.loads(control["data-overflow"]) and int(control["data-scroll"]) > 0

    body = probe_layout(tmp_path, html, "page.html")
    shown = (tables_of(html, "evaluation", "view")[:1] + tables_of(html, "comparison")
             + tables_of(html, "saliency", "saliency-share"))
    assert int(body["data-cells"]) >= sum(len(row) for t in shown for row in t)   # those tables were laid out
    assert json.loads(body["data-overflow"]) == []
    assert int(body["data-scroll"]) <= 0                     # and the page does not scroll sideways


@needs_chromium
def test_saliency_section_and_comparison_table_in_the_browser(full_store, tmp_path):
    store, ev, sal = full_store
    out = run_report(store, tmp_path / "r.html", eval_files=[ev], saliency_files=[sal], verify=False,
                     progress=False, echo=lambda _: None)
    dom = dump_dom(tmp_path, out)
    with Store(store) as s:
        r = load_search(s)
    sd = json.loads(sal.read_text())
    # overlays: the foregrounds the search found worst, lowest margin first, each beside its worst composite,
    # with one Grad-CAM overlay per saliency variant
    order = [int(r.fg_id[k]) for k in np.argsort(r.worst_margin, kind="stable")]
    rows = re.findall(r'<tr class="overlay-row" data-fg="(\d+)">(.*?)</tr>', dom, flags=re.S)
    assert [int(f) for f, _ in rows] == order[:8]
    for f, cells in rows:
        assert f'alt="worst composite of foreground {f}"' in cells
        assert re.findall(r'data-variant="([^"]+)"', cells) == [v["variant"] for v in sd["variants"]]
    assert dom.count('alt="Grad-CAM on ') == 8 * len(sd["variants"])
    # the comparison table: one row per complete search run, named by its results
    (runs, side) = tables_of(dom, "comparison")
    assert [row[runs[0].index("results")] for row in runs[1:]] == [r.results_name]
    assert side[0][1:] == SWEEP


def test_saliency_without_maps_says_so_and_a_bad_saliency_file_is_one_line(full_store, tmp_path, capsys):
    store, _, sal = full_store
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({k: v for k, v in json.loads(sal.read_text()).items() if k != "maps"}))
    html = render_html(build_report(store, saliency_files=[bare], verify=False, progress=False, echo=lambda _: None))
    assert "no maps file" in html and 'class="overlay-row"' not in html and 'class="num share"' in html
    bad = tmp_path / "bad.json"
    bad.write_text('{"models": []}')
    code, _, err = run_cli(["report", "--store", str(store), "--saliency", str(bad), "-q"], capsys)
    assert_one_line_error(code, err, "not an `advbg saliency` results file")
