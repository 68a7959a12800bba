"""Artifacts get the mode a new file gets under the umask (0644 under 022), not mkstemp's 0600: a runtime service
running as another user must be able to read student.onnx, the weights and manifest.json."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from medfm_compress._io import atomic_write_json, atomic_write_text, new_file_mode


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert new_file_mode() == expected
    assert _mode(atomic_write_text(tmp_path / "a.txt", "x")) == expected
    assert _mode(atomic_write_json(tmp_path / "a.json", {"a": 1})) == expected


def test_run_directory_artifacts_are_world_readable(tiny_run, gray_onnx, tmp_path, umask):
    # tiny_run was written by distill under the test process's umask; rewrite nothing, just look. The session
    # fixture ran under this machine's umask, so compare against the mode that umask gives.
    expected = new_file_mode()
    for name in ("student.safetensors", "student.json", "teacher.json", "metrics.json", "manifest.json"):
        assert _mode(tiny_run / name) == expected, name
    assert _mode(Path(gray_onnx)) == expected
    if expected & 0o044 != 0o044:
        pytest.skip(f"this machine's umask gives {oct(expected)}; the 0644 case is covered above")
    assert _mode(tiny_run / "student.safetensors") & 0o044 == 0o044
