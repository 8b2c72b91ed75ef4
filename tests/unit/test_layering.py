"""The architecture's import rules, checked by import-linter, and the source-root rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO / "operator")),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_operator_folder_is_not_a_package() -> None:
    # `operator/` is a source root; making it a package would shadow the stdlib module.
    assert not (REPO / "operator" / "__init__.py").exists()
    import operator

    assert hasattr(operator, "itemgetter")


def test_every_module_has_a_docstring() -> None:
    import ast

    missing = [
        str(path.relative_to(REPO))
        for path in (REPO / "operator" / "kvmfleet").rglob("*.py")
        if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert missing == []
