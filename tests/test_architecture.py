"""The package's shape: imports point down the layers of pyproject.toml's import-linter contract,
no module imports itself back through others, and no function outgrows a screen.

`make test` runs `lint-imports` before pytest; these tests also show that the contract catches an
upward import (function-level ones included) and that the cycle check sees cycles inside one layer,
which a layers contract alone does not forbid.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

grimp = pytest.importorskip("grimp")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_FUNCTION_LINES = 80


def import_cycles(package: str) -> list[list[str]]:
    """For each import A -> B that closes a cycle, the shortest chain B -> ... -> A (module-level and
    function-level imports alike)."""
    graph = grimp.build_graph(package)
    cycles = set()
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycles.add(tuple(back))
    return sorted(list(c) for c in cycles)


def test_no_import_cycles():
    assert import_cycles("bertkit") == []


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def package_copy(tmp_path) -> Path:
    """The package and its contract, copied where a test may break them."""
    if not LINT_IMPORTS.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    shutil.copytree(REPO / "bertkit", tmp_path / "bertkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contract_holds_and_fails_on_an_upward_import(package_copy):
    kept = lint_imports(package_copy)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    model = package_copy / "bertkit" / "model.py"
    # the kind of import the layers forbid: the model reaching up into a job that uses it, inside a function
    model.write_text(model.read_text() + "\n\ndef _predict(model, texts):\n"
                     "    from .inference.predict import predict\n\n    return predict(model, texts)\n")
    broken = lint_imports(package_copy)
    assert broken.returncode != 0
    assert "bertkit.model -> bertkit.inference.predict" in broken.stdout


def test_the_cycle_check_sees_a_cycle_inside_one_layer(package_copy, monkeypatch):
    examples = package_copy / "bertkit" / "tasks" / "examples.py"  # readers.py imports it; now it imports readers.py
    examples.write_text(examples.read_text() + "\n\ndef _tasks():\n    from .readers import TASKS\n\n    return TASKS\n")
    monkeypatch.syspath_prepend(str(package_copy))
    for name in [m for m in sys.modules if m == "bertkit" or m.startswith("bertkit.")]:
        monkeypatch.delitem(sys.modules, name)
    cycles = import_cycles("bertkit")
    assert ["bertkit.tasks.examples", "bertkit.tasks.readers"] in cycles


def test_no_function_over_80_lines():
    long = []
    for path in sorted((REPO / "bertkit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
