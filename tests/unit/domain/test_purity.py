"""The domain layer stays pure: no I/O modules, no file access, no clock, no randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kvmfleet.domain

DOMAIN = Path(kvmfleet.domain.__file__).parent
MODULES = sorted(DOMAIN.rglob("*.py"))

FORBIDDEN_MODULES = {
    "aiohttp",
    "asyncio",
    "kopf",
    "kubernetes",
    "libvirt",
    "os",
    "paramiko",
    "pathlib",
    "prometheus_client",
    "random",
    "secrets",
    "shutil",
    "socket",
    "subprocess",
    "tempfile",
    "threading",
    "time",
    "urllib",
}
FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "__import__"}
CLOCK_ATTRIBUTES = {"now", "utcnow", "today", "time", "monotonic"}


def imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(DOMAIN)))
def test_module_is_pure(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert not imported_roots(tree) & FORBIDDEN_MODULES
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_CALLS, f"{path.name}:{node.lineno}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr not in CLOCK_ATTRIBUTES, f"{path.name}:{node.lineno}: clock"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(DOMAIN)))
def test_module_starts_with_a_one_line_purpose(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert docstring, f"{path.name} has no module docstring"
    assert docstring.splitlines()[0].endswith("."), docstring.splitlines()[0]
