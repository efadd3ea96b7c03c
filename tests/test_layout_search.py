"""The search path keeps its shape (README "One `advbg search` call, top to bottom"): the engine works on tensors
(it imports neither the store nor h5py), and the results owner (advbg/search/results/) is the only code that writes
a results file or touches the search journal. Read with ast/text, nothing is imported."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "advbg"
OWNER = "search/results"
WRITES_RESULTS = re.compile(r"""write_derived\(\s*["']results["']|merge_journal\(|_FileWriter\(""")


def imported(path: Path, root: Path = PACKAGE) -> set[str]:
    """Every module ``path`` (inside package ``root``) imports: absolute names, relative ones resolved."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = path.relative_to(root.parent).with_suffix("").parts[:-node.level]
                base = ".".join(pkg + ((node.module,) if node.module else ()))
            else:
                base = node.module or ""
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


def engine_problems(path: Path, root: Path = PACKAGE) -> list[str]:
    return sorted(m for m in imported(path, root) if m.split(".")[0] == "h5py" or m.startswith("advbg.data")
                  or m.startswith("advbg.search.pool"))


def owner_problems(root: Path) -> list[str]:
    """Modules outside the results owner that write a results file or use the journal."""
    bad = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(OWNER + "/") or rel == "search/journal.py":
            continue
        text = p.read_text(encoding="utf-8")
        if WRITES_RESULTS.search(text):
            bad.append(f"{rel} writes a results file")
        if any(m.startswith("advbg.search.journal") for m in imported(p, root)):
            bad.append(f"{rel} uses the search journal")
    return bad


def test_the_engine_works_on_tensors():
    assert engine_problems(PACKAGE / "search" / "engine.py") == []


def test_only_the_results_owner_writes_results_files():
    assert owner_problems(PACKAGE) == []


def test_the_checks_catch_planted_violations(tmp_path):
    pkg = tmp_path / "advbg"
    (pkg / "search").mkdir(parents=True)
    engine = pkg / "search" / "engine.py"
    engine.write_text("import h5py\nfrom advbg.data.store import Store\nfrom ..data import store\n")
    assert {"h5py", "advbg.data.store", "advbg.data.store.Store"} <= set(engine_problems(engine, pkg))
    engine.write_text("from ..data import store\n")
    assert engine_problems(engine, pkg) == ["advbg.data", "advbg.data.store"]
    (pkg / "analysis").mkdir()
    (pkg / "analysis" / "x.py").write_text('with store.write_derived("results", name) as f:\n    pass\n')
    (pkg / "train").mkdir()
    (pkg / "train" / "y.py").write_text("from advbg.search.journal import Journal\n")
    assert owner_problems(pkg) == ["analysis/x.py writes a results file", "train/y.py uses the search journal"]
