"""The edge install: `pip install medfm-compress` with no extras runs bench, verify and predict on ONNX artifacts.

Two checks. The quick one (default suite) runs the CLI in a subprocess whose import system refuses every heavy
package (torch, timm, onnx, openvino, ...), as an install without them would: it proves no edge code path
imports them, in seconds. The slow one builds a real fresh virtual environment from this checkout with the
pinned constraints (packages come from the local wheel cache or the index, as `make` installs them), measures
site-packages and runs the same commands there: it proves the dependency list itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.edge import HEAVY, edge_cli

ROOT = Path(__file__).resolve().parents[1]
DATA = "synthetic?size=32&n_train=64&n_val=16&n_test=48&seed=2"
@pytest.fixture(scope="module")
def edge_model(tmp_path_factory) -> Path:
    """A 4-class 32x32 ONNX with our metadata (exported here, where the full install is present)."""
    import torch

    from medfm_compress.export.onnx_build import export_model_to_onnx
    from medfm_compress.models import create_model
    from medfm_compress.runtime.metadata import ModelMeta
    from medfm_compress.runtime.preprocess import PreprocessSpec

    torch.manual_seed(0)
    model = create_model("timm:medfm_resnet10_w16", 4, 1, 32).eval()
    meta = ModelMeta(PreprocessSpec((32, 32), 1, (0.5,), (0.25,)), "multiclass",
                     ["normal", "nodule", "consolidation", "effusion"], "timm:medfm_resnet10_w16")
    return export_model_to_onnx(model, meta, tmp_path_factory.mktemp("edge") / "student.onnx",
                                torch.zeros(1, 1, 32, 32))


def test_bench_runs_without_any_heavy_package(edge_model, tmp_path):
    res = edge_cli(["bench", f"s={edge_model}", "--data", DATA, "--batch-sizes", "1", "--iterations", "10",
                     "--warmup", "2", "--quiet", "--out", str(tmp_path / "rep")], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["artifacts"][0]["backend"] == "onnxruntime"
    assert {p.name for p in (tmp_path / "rep").iterdir()} >= {"report.json", "report.md", "junit.xml"}
    assert "pareto.png not written" in res.stderr


def test_verify_runs_without_any_heavy_package(edge_model, tmp_path):
    from medfm_compress.manifest import Manifest

    run = tmp_path / "run"
    run.mkdir()
    model = run / "student.onnx"
    model.write_bytes(Path(edge_model).read_bytes())
    m = Manifest(run)
    m.finish(m.start("export", {}, {}), {"onnx": model}, {})
    ok = edge_cli(["verify", str(run)], tmp_path)
    assert ok.returncode == 0 and "1 artifacts verified" in ok.stdout, ok.stderr
    model.write_bytes(model.read_bytes() + b"\0")
    bad = edge_cli(["verify", str(run)], tmp_path)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


@pytest.mark.parametrize("command, needs", [("distill", "the 'train' extra: pip install 'medfm-compress[train]'"),
                                            ("export", "the 'export' extra: pip install 'medfm-compress[export]'"),
                                            ("quantize", "the 'export' extra: pip install 'medfm-compress[export]'"),
                                            ("run", "the 'train', 'export' extras: pip install "
                                                    "'medfm-compress[train,export]'")])
def test_commands_of_missing_extras_name_the_extra(tmp_path, command, needs):
    res = edge_cli([command, "anything"], tmp_path)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0] == f"error: {command} needs {needs}", lines[0]
    # The command still shows in --help, saying what to install.
    assert command in edge_cli(["--help"], tmp_path).stdout


def test_torch_backend_without_train_extra_is_one_line(tmp_path, tiny_run):
    res = edge_cli(["bench", f"t={tiny_run}/student", "--data", DATA, "--iterations", "5", "--quiet"], tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "pip install 'medfm-compress[train]'" in res.stderr


@pytest.mark.slow
def test_fresh_edge_venv(tmp_path, edge_model):
    """`pip install .` (no extras) in a fresh venv: no torch, under 250 MB, bench and predict run."""
    venv = tmp_path / "edge"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pip = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-c",
                          str(ROOT / "constraints.txt"), str(ROOT)], capture_output=True, text=True, env=env,
                         timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    size_mb = sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 2**20
    print(f"edge site-packages: {size_mb:.0f} MB")
    assert size_mb <= 250, f"edge install is {size_mb:.0f} MB"
    for mod in HEAVY:
        res = subprocess.run([str(py), "-c", f"import {mod}"], capture_output=True, text=True, env=env)
        assert res.returncode != 0, f"{mod} imports in the edge install"
    cli = venv / "bin" / "medfm-compress"
    res = subprocess.run([str(cli), "bench", f"s={edge_model}", "--data", DATA, "--batch-sizes", "1",
                          "--iterations", "10", "--warmup", "2", "--quiet", "--out", str(tmp_path / "rep")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([str(cli), "predict", str(edge_model), DATA, "--out", str(tmp_path / "pred"), "--quiet"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "pred" / "predictions.csv").is_file()
    res = subprocess.run([str(cli), "distill"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 1 and "pip install 'medfm-compress[train]'" in res.stderr
