"""A run directory stands on its own: verify judges the files inside it, files a stage wrote elsewhere are
recorded as external, and stages finishing at once on one run directory never lose a manifest record."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from medfm_compress.cli import cli
from medfm_compress.manifest import Manifest


def _finish_many(args):
    run, worker, n = args
    from pathlib import Path

    for i in range(n):
        out = Path(run) / f"w{worker}-{i}.bin"
        out.write_bytes(f"{worker}-{i}".encode())
        m = Manifest(run)  # opened before the others finish: the stale copy must not win
        m.finish(m.start("quantize", {"worker": worker, "i": i}), {"model": out}, {})


def test_concurrent_stages_never_lose_a_manifest_record(tmp_path):
    workers, per = 4, 15
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        pool.map(_finish_many, [(str(tmp_path), w, per) for w in range(workers)])
    stages = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert len(stages) == workers * per
    assert {(s["config"]["worker"], s["config"]["i"]) for s in stages} == {
        (w, i) for w in range(workers) for i in range(per)}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no lock or temp file left


def test_external_artifacts_do_not_decide_the_run_directorys_verdict(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    inside, outside = run / "student.onnx", tmp_path / "elsewhere" / "x.onnx"
    outside.parent.mkdir()
    inside.write_bytes(b"inside")
    outside.write_bytes(b"outside")
    m = Manifest(run)
    m.finish(m.start("export", {}), {"onnx": inside}, {})
    m.finish(m.start("export", {"out": "elsewhere"}), {"onnx": outside}, {})
    entry = Manifest(run).data["stages"][-1]["outputs"]["onnx"]
    assert entry["external"] is True and entry["path"] == str(outside.resolve())
    assert "external" not in Manifest(run).data["stages"][0]["outputs"]["onnx"]

    outside.unlink()
    r = CliRunner().invoke(cli, ["verify", str(run)])
    assert r.exit_code == 0, r.output
    assert "external (outside the run directory, not part of its verdict)" in r.stderr and "x.onnx is missing" in r.stderr
    assert "1 artifacts verified" in r.stdout
    strict = CliRunner().invoke(cli, ["verify", str(run), "--strict"])
    assert strict.exit_code == 1 and "x.onnx is missing" in strict.stderr
    # A file inside the run directory still decides it.
    inside.write_bytes(b"changed")
    r = CliRunner().invoke(cli, ["verify", str(run)])
    assert r.exit_code == 1 and "student.onnx changed" in r.stderr


@pytest.mark.slow
def test_parallel_exports_from_one_run_directory_keep_both_records(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    exe = [sys.executable, "-m", "medfm_compress", "export", str(run)]
    procs = [subprocess.Popen([*exe, "--model", m, "--out", str(run / f"{m}.onnx"), "--num-check", "8"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for m in ("student", "baseline")]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    outputs = {o["path"] for s in Manifest(run).data["stages"] if s["stage"] == "export"
               for o in s["outputs"].values()}
    assert {"student.onnx", "baseline.onnx"} <= outputs
    assert CliRunner().invoke(cli, ["verify", str(run)]).exit_code == 0
