"""Hazard: SIGKILL during the last writes of `search`, `index` and `universal`. Whatever write the kill lands on,
the store keeps working: `verify` finds it intact, a fresh search, a search with another criterion and
`--resume` run to the end with the same results, and the killed command itself succeeds when run again.

The kills are real SIGKILLs, delivered just before the N-th write of a real CLI run (tests/fault_entry.py lists
what counts as a write). Points tested: every write after the search's journal is finished (`run.json`), which
is where the results are written, for `search` and `universal`; every write of `index`. A run of identical writes
in a row (say twelve attributes) is tested at its first and last write.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import advbg_entry  # noqa: F401  (registers test/tiny-entry, the model the killed runs use)
import numpy as np
import pytest
from conftest import make_random_store
from conftest import run_cli as run

from advbg.data.store import Store
from advbg.search.results import verify_all
from advbg.search.results import load_search

pytestmark = pytest.mark.slow      # dozens of killed runs; still run in CI
TESTS = Path(__file__).resolve().parent
MODEL = ["--model", "test/tiny-entry"]
SEARCH = ["search", "--store", "s.h5", *MODEL, "--grid", "-", "-q", "--fg-block", "2"]
NAME = "tinynet.seed0.any.exhaustive"


@pytest.fixture(scope="module")
def server():
    """tests/fault_entry.py, started once; it forks one child per killed run."""
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH") or str(TESTS.parent), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, str(TESTS / "fault_entry.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    yield proc
    proc.stdin.close()
    proc.wait(timeout=60)


def killed_run(server, work: Path, args: list[str], kill: int) -> tuple[int, list[str], str]:
    """(exit code, negative for a signal; the writes made, one line each; output) of ``advbg ARGS`` in ``work``,
    SIGKILLed just before write ``kill`` (0: never)."""
    log, out = work / "events.log", work / "output.txt"
    req = dict(log=str(log), kill=kill, cwd=str(work), out=str(out), args=args)
    server.stdin.write(json.dumps(req) + "\n")
    server.stdin.flush()
    rc = json.loads(server.stdout.readline())["rc"]
    return rc, log.read_text().splitlines(), out.read_text()


def kill_points(events: list[str], after: str | None = None) -> list[int]:
    """Write numbers after the last event containing ``after`` (all when None); of a run of writes of one kind
    only the first and last."""
    start = max((i for i, e in enumerate(events) if after in e), default=-1) + 1 if after else 0
    kinds = [e.split()[1] for e in events]
    return [i + 1 for i in range(start, len(events))
            if i == start or i == len(events) - 1 or kinds[i - 1] != kinds[i] or kinds[i + 1] != kinds[i]]


def fresh_copy(base: Path, work: Path) -> Path:
    work.mkdir()
    shutil.copyfile(base, work / "s.h5")
    return work / "s.h5"


def stored(path: Path, name: str = NAME) -> dict:
    with Store(path) as s:
        r = load_search(s, name)
        return {k: getattr(r, k) for k in ("fg_id", "worst_bg", "worst_margin", "first_fooling_bg", "n_fooling")}


def same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def assert_store_works(path: Path, want: dict, capsys, searches=(["--resume"], [], ["--criterion", "bg-class"])) -> None:
    """verify intact; --resume, a fresh search and another criterion complete; results as the reference's."""
    report = verify_all(path)
    assert report.ok, report.problems
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        for extra in searches:
            code, _, err = run(SEARCH + extra, capsys)
            assert code == 0, err
        assert same(stored(path), want)
    finally:
        os.chdir(cwd)
    assert verify_all(path).ok
    assert not Path(str(path) + ".lock").exists()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_random_store(tmp_path_factory.mktemp("base") / "s.h5", n_fg=5, n_bg=6, seed=21)


def test_sigkill_at_each_of_the_last_writes_of_a_search_leaves_a_working_store(server, base, tmp_path, capsys):
    ref = fresh_copy(base, tmp_path / "ref")
    rc, events, out = killed_run(server, ref.parent, SEARCH, 0)
    assert rc == 0, out
    want = stored(ref)
    points = kill_points(events, after="replace run.json")
    assert len(points) >= 6, events
    for n in points:
        path = fresh_copy(base, tmp_path / f"kill{n}")
        rc, ev, out = killed_run(server, path.parent, SEARCH, n)
        assert rc == -9 and len(ev) == n, (n, rc, out)
        assert_store_works(path, want, capsys)


def test_sigkill_at_each_write_of_index_leaves_a_working_store(server, base, tmp_path, capsys):
    args = ["index", "--store", "s.h5", *MODEL, "-q"]
    ref = fresh_copy(base, tmp_path / "ref")
    rc, events, out = killed_run(server, ref.parent, args, 0)
    assert rc == 0, out
    rc, _, out = killed_run(server, ref.parent, SEARCH, 0)
    assert rc == 0, out
    want = stored(ref)
    points = kill_points(events)
    assert len(points) >= 6, events
    for n in points:
        path = fresh_copy(base, tmp_path / f"kill{n}")
        rc, ev, out = killed_run(server, path.parent, args, n)
        assert rc == -9 and len(ev) == n, (n, rc, out)
        assert verify_all(path).ok
        code, _, err = run(["index", "--store", str(path), *MODEL, "-q"], capsys)   # the killed command, again
        assert code == 0, err
        code, _, err = run(SEARCH[:2] + [str(path)] + SEARCH[3:] + ["--prune", "3"], capsys)  # uses the embeddings
        assert code == 0, err
        assert_store_works(path, want, capsys, searches=([],))


def test_sigkill_at_each_of_the_last_writes_of_universal_leaves_a_working_store(server, base, tmp_path, capsys):
    args = ["universal", "--store", "s.h5", *MODEL, "--top-png", "-", "--hist-png", "-", "-q",
            "--results-file", "u.json"]
    ref = fresh_copy(base, tmp_path / "ref")
    rc, events, out = killed_run(server, ref.parent, args, 0)
    assert rc == 0, out
    want_u = json.loads((ref.parent / "u.json").read_text())["classes"]
    rc, _, out = killed_run(server, ref.parent, SEARCH, 0)
    assert rc == 0, out
    want = stored(ref)
    points = kill_points(events, after="replace run.json")
    assert len(points) >= 6, events
    for n in points:
        path = fresh_copy(base, tmp_path / f"kill{n}")
        rc, ev, out = killed_run(server, path.parent, args, n)
        assert rc == -9 and len(ev) == n, (n, rc, out)
        assert verify_all(path).ok
        code, _, err = run(["universal", "--store", str(path), *MODEL, "--top-png", "-", "--hist-png", "-", "-q",
                            "--results-file", str(path.parent / "u2.json")], capsys)
        assert code == 0, err
        assert json.loads((path.parent / "u2.json").read_text())["classes"] == want_u
        assert_store_works(path, want, capsys, searches=([],))
