"""The dependency arrows between director's packages point one way.

model (the operator's intent) is the leaf; the pure core stands on it; the control
plane (ops, formats, rules-file lines, health commands) on both; the runtimes (shell,
health checkers, real-server helper, lab) and the CLI on top.  Every ``import`` of the
package, at module level or inside a function, is read from the source with ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "director"

# package -> the packages of director it may import
ALLOWED: dict[str, frozenset[str]] = {
    "model": frozenset(),
    "core": frozenset({"model"}),
    "ctl": frozenset({"model", "core"}),
    "health": frozenset({"model", "core", "ctl"}),
    "realserver": frozenset({"model", "core", "shell"}),
    "lab": frozenset({"model", "core", "ctl"}),
    "shell": frozenset({"model", "core", "ctl", "health"}),
    "cli": frozenset({"model", "core", "ctl", "health", "lab", "realserver"}),
}


def _imports(path: Path) -> set[str]:
    """The director packages that one module imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "director" and len(parts) > 1:
                found.add(parts[1])
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_every_package_has_a_place() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package: str) -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(_imports(path) - ALLOWED[package] - {package})
        for path in _modules(package)
    }
    assert {k: v for k, v in wrong.items() if v} == {}


def test_the_table_has_no_cycle() -> None:
    done: set[str] = set()

    def visit(package: str, path: tuple[str, ...]) -> None:
        assert package not in path, f"cycle: {' -> '.join((*path, package))}"
        if package not in done:
            for below in ALLOWED[package]:
                visit(below, (*path, package))
            done.add(package)

    for package in ALLOWED:
        visit(package, ())
