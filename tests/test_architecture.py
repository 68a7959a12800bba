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


# ----- tasks are plug-ins: nothing outside the task modules branches on a task's name ---------------------------

TASK_MODULES = (PACKAGE / "runtime" / "tasks", PACKAGE / "compress" / "tasks")
# The names a branch could test: every registered task, and the made-up "segmentation-3d" of volumes.
TASK_WORDS = {"multiclass", "binary", "multilabel", "embedding", "segmentation", "segmentation-3d", "regression"}


def task_name_branches(root: Path = PACKAGE, skip: tuple[Path, ...] = TASK_MODULES) -> list[str]:
    """``file:line`` of every comparison with a task's name (``task == "segmentation"``, ``x in ("binary", ...)``)
    and every read of a ``"volume"`` key, outside the task modules (that 3-D images are 3-D is the typed field
    ``TaskData.volumes``, not a key of ``info``)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if any(path.is_relative_to(s) for s in skip):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            hit = False
            if isinstance(node, ast.Compare):
                for side in (node.left, *node.comparators):
                    consts = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
                    hit |= any(isinstance(c, ast.Constant) and c.value in TASK_WORDS for c in consts)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
                hit = bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "volume"
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
                hit = isinstance(node.slice, ast.Constant) and node.slice.value == "volume"
            if hit:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    return found


def test_no_task_name_branches_outside_the_task_modules():
    assert task_name_branches() == []


def test_the_task_branch_check_can_fail(tmp_path):
    pkg = tmp_path / "medfm_compress"
    pkg.mkdir()
    (pkg / "a.py").write_text('def f(task, info):\n    if task.task == "segmentation":\n        pass\n'
                              '    return x in ("binary", "multiclass") or info.get("volume")\n')
    assert task_name_branches(pkg, ()) == ["medfm_compress/a.py:2", "medfm_compress/a.py:4", "medfm_compress/a.py:4"]
