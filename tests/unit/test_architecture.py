"""The package layout stays readable: few loose modules in ``lib/``, dependencies pointing one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[2] / "apps" / "wholebody" / "lib"

# MONAI Label's shape: configs wire infer tasks and trainers; nothing below them may reach up.
TASK_LAYERS = {"configs", "infers", "trainers"}


def _imported_lib_packages(path: Path) -> set[str]:
    """First component under ``lib`` of every ``lib.x...`` import in a file (``from lib import x`` too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "lib" else [f"lib.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name.split(".")[1] for name in names if name.startswith("lib."))
    return found


def _package_of(path: Path) -> str:
    rel = path.relative_to(LIB)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_at_most_eight_loose_modules_in_lib():
    loose = sorted(p.name for p in LIB.glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= 8, f"modules directly in lib/: {loose}; group them by concern in packages"


@pytest.mark.parametrize("path", sorted(LIB.rglob("*.py")), ids=lambda p: str(p.relative_to(LIB)))
def test_dependencies_point_one_way(path: Path):
    package = _package_of(path)
    imported = _imported_lib_packages(path)
    if package not in TASK_LAYERS:
        assert not imported & TASK_LAYERS, f"{path.relative_to(LIB)} ({package}) imports {sorted(imported & TASK_LAYERS)}"
    elif package in ("infers", "trainers"):
        other = ({"infers", "trainers"} - {package}) | {"configs"}
        assert not imported & other, f"{path.relative_to(LIB)} imports {sorted(imported & other)}"


def test_checker_sees_a_reverse_import(tmp_path):
    """The rule above would pass vacuously if imports were not found."""
    sample = tmp_path / "sample.py"
    sample.write_text("from lib.trainers.wholebody import X\nimport lib.configs\nfrom lib import infers\n")
    assert _imported_lib_packages(sample) == {"trainers", "configs", "infers"}


def test_test_files_have_unique_names():
    """pytest imports test files by basename (no __init__.py): two of one name stop the whole run."""
    tests = Path(__file__).resolve().parents[1]
    names = [p.name for p in tests.rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
