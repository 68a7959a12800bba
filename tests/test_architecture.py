"""The layers are a contract: import-linter's contracts in pyproject.toml, and no private names across modules."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medfm_compress"


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports is not installed; it is part of the 'dev' extra (make test installs it)")
    res = subprocess.run([exe], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_imports() -> list[str]:
    """``from X import _name`` where ``_name`` is a private function/class/constant of another module."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _resolve(importer, path.name == "__init__.py", node)
            for alias in node.names:
                name = alias.name
                if not name.startswith("_") or name.startswith("__"):
                    continue
                # A private *module* of our own package may be imported by its package (import-linter checks
                # that); a private name inside another module may not.
                if (PACKAGE.parent / Path(*source.split("."), f"{name}.py")).is_file():
                    continue
                if source == importer:
                    continue
                found.append(f"{importer}: from {source} import {name}")
    return found


def test_no_module_imports_another_modules_private_names():
    assert private_imports() == []


def test_the_private_name_check_can_fail(tmp_path, monkeypatch):
    # The check above must be able to see a violation: plant one in a copy of a tiny package layout.
    pkg = tmp_path / "medfm_compress"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("def _hidden():\n    pass\n")
    (pkg / "a" / "y.py").write_text("from .x import _hidden\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert private_imports() == ["medfm_compress.a.y: from medfm_compress.a.x import _hidden"]
