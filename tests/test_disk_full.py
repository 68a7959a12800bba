"""Disk full while writing an artifact: exit 1, one line on stderr naming it, no traceback, and the previous
artifact at that path intact (no temporary file left beside it)."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys

import pytest
from click.testing import CliRunner

from medfm_compress._io import sha256_file
from medfm_compress.cli import cli

TINY = "synthetic?size=32&n_train=64&n_val=16&n_test=32&seed=3"
W16 = "timm:medfm_resnet10_w16"


@pytest.fixture(scope="module")
def previous(tmp_path_factory):
    """A tiny fp32 ONNX model and an fp16 model already quantized from it (the artifact a re-run overwrites)."""
    import torch

    from medfm_compress.export.onnx_build import export_model_to_onnx
    from medfm_compress.models import create_model
    from medfm_compress.runtime.metadata import ModelMeta
    from medfm_compress.runtime.preprocess import PreprocessSpec

    d = tmp_path_factory.mktemp("diskfull")
    torch.manual_seed(0)
    meta = ModelMeta(PreprocessSpec((32, 32), 1, (0.5,), (0.25,)), "multiclass", ["a", "b", "c", "d"], W16)
    export_model_to_onnx(create_model(W16, 4, 1).eval(), meta, d / "m.onnx", torch.zeros(1, 1, 32, 32))
    out = d / "out" / "q.onnx"
    res = CliRunner().invoke(cli, _quantize_args(d, out))
    assert res.exit_code == 0, res.output
    return d, out


def _quantize_args(d, out):
    return [
        "quantize",
        str(d / "m.onnx"),
        "--calib-data",
        TINY,
        "--target",
        "cpu",
        "--precision",
        "fp16",
        "--num-calib",
        "8",
        "--num-holdout",
        "8",
        "--min-agreement",
        "0",
        "--quiet",
        "--out",
        str(out),
    ]


def _check_failed_write(stderr: str, out, sha_before: str) -> None:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: disk full") and str(out) in lines[0], lines[0]
    assert "Traceback" not in stderr
    assert sha256_file(out) == sha_before  # the previous artifact is untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["q.onnx"]  # no temporary file left behind


def test_file_size_limit_while_writing_keeps_the_previous_artifact(previous):
    """A real failed write: the child may not write files over 64 KiB (RLIMIT_FSIZE, no privileges needed);
    the fp16 model is ~0.6 MB. The CLI ignores SIGXFSZ itself, so the write fails with EFBIG."""
    d, out = previous
    sha = sha256_file(out)
    assert out.stat().st_size > 64 * 1024

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))

    proc = subprocess.run(
        [sys.executable, "-m", "medfm_compress", *_quantize_args(d, out)],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    _check_failed_write(proc.stderr, out, sha)
    assert "file too large" in proc.stderr


def test_disk_full_while_writing_keeps_the_previous_artifact(previous, monkeypatch):
    """ENOSPC, as a full disk reports it when the written data is flushed (fsync) into the temporary file."""
    import medfm_compress._io as io_mod

    d, out = previous
    sha = sha256_file(out)
    real_fsync = os.fsync

    def full_disk_fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(out.parent / ".q.onnx.")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(io_mod.os, "fsync", full_disk_fsync)
    res = CliRunner().invoke(cli, _quantize_args(d, out))
    assert res.exit_code == 1 and not isinstance(res.exception, OSError), res.output
    _check_failed_write(res.stderr, out, sha)
