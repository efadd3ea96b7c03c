"""The package's shape stays as README's "How the code is organised" describes it.

Imports point one way, cli -> commands -> analysis/train -> search -> models -> data -> the leaf modules
(errors, files, progress, stats, hardware, _version, _compat); analysis and train do not import each other; nothing
outside advbg/cli imports the CLI; there are no import cycles; imports of advbg modules sit at the top of their file,
and a function-level import of anything else is marked as a deliberate deferral ("deferred" on its line). The
checker reads the source with ast (nothing is imported), so it sees imports inside functions too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "advbg"
LAYERS = {"cli": 6, "commands": 5, "analysis": 4, "train": 4, "search": 3, "models": 2, "data": 1}
EXEMPT = {"advbg", "advbg.__main__"}   # the package root re-exports the API; `python -m advbg` runs the CLI


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_imports(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """(edges module -> advbg modules it imports, problems with where imports sit)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    edges, problems = {}, []
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lines = path.read_text(encoding="utf-8").splitlines()
        out = set()
        for node, in_function in _imports(tree):
            targets = _targets(node, mod, path, modules)
            if targets and in_function:
                problems.append(f"{mod}:{node.lineno}: advbg import inside a function")
            if not targets and in_function and "deferred" not in lines[node.lineno - 1]:
                problems.append(f"{mod}:{node.lineno}: function-level import not marked as a deliberate deferral")
            out |= targets
        edges[mod] = out - {mod}
    return edges, problems


def _imports(tree: ast.AST, in_function: bool = False):
    for node in ast.iter_child_nodes(tree):
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        yield from _imports(node, inner)


def _targets(node, mod: str, path: Path, modules: dict) -> set[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
            base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    root = next(iter(modules)).split(".")[0]
    return {n for n in names if n == root or n.startswith(root + ".")}


def layer(mod: str) -> int:
    parts = mod.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 7


def shape_violations(root: Path) -> list[str]:
    """Every cycle, upward or sideways import, CLI import and misplaced import in the package at ``root``."""
    edges, problems = read_imports(root)
    for mod, targets in sorted(edges.items()):
        if mod in {e.replace("advbg", root.name) for e in EXEMPT}:
            continue
        for t in sorted(targets):
            if t.split(".")[1:2] == ["cli"] and mod.split(".")[1:2] != ["cli"]:
                problems.append(f"{mod} imports the CLI ({t})")
            elif layer(t) > layer(mod):
                problems.append(f"upward import: {mod} -> {t}")
            elif layer(t) == layer(mod) == 4 and t.split(".")[1] != mod.split(".")[1]:
                problems.append(f"sideways import between analysis and train: {mod} -> {t}")
    problems += [f"import cycle: {' -> '.join(c)}" for c in _cycles(edges)]
    return problems


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One example path per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp) + [sorted(comp)[0]])

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_the_documented_shape():
    assert shape_violations(PACKAGE) == []


def test_every_subpackage_is_a_package():
    for name in LAYERS:
        assert (PACKAGE / name / "__init__.py").is_file(), name


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "advbg"
    for rel, text in {"__init__.py": "", "errors.py": "", "data/__init__.py": "", "data/store.py": "",
                      "search/__init__.py": "", "search/engine.py": "", "search/runner.py": "",
                      "cli/__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize("files, expected", [
    ({"data/store.py": "from advbg.search import engine\n"}, "upward import: advbg.data.store -> advbg.search.engine"),
    ({"search/engine.py": "from advbg.cli import main\n"}, "advbg.search.engine imports the CLI"),
    ({"search/engine.py": "from advbg.search import runner\n", "search/runner.py": "from advbg.search import engine\n"},
     "import cycle: advbg.search.engine -> advbg.search.runner -> advbg.search.engine"),
    ({"search/engine.py": "def f():\n    from advbg.data import store\n"}, "advbg import inside a function"),
    ({"search/engine.py": "def f():\n    import faiss\n"}, "not marked as a deliberate deferral"),
    ({"search/engine.py": "from ..data import store\nfrom . import runner\n", "search/runner.py": "from .engine import x\n"},
     "import cycle"),
], ids=["upward", "cli", "cycle", "function-level", "unmarked-deferral", "relative-cycle"])
def test_the_checker_catches_a_planted_violation(tmp_path, files, expected):
    problems = shape_violations(_plant(tmp_path, files))
    assert any(expected in p for p in problems), problems


def test_the_checker_accepts_a_marked_deferral_and_downward_imports(tmp_path):
    root = _plant(tmp_path, {"search/engine.py": "from advbg.data import store\n"
                                                 "def f():\n    import faiss  # deferred: heavy\n"})
    assert shape_violations(root) == []
