"""Every stage that reads manifest-tracked files refuses one whose sha256 changed (one line, exit 1) unless
``--force``, which uses it and says so in a warning line."""

from __future__ import annotations

import shutil

import pytest
import yaml
from click.testing import CliRunner
from support.tiny import TINY_DATA, TINY_STUDENT, TINY_TEACHER

from medfm_compress.cli import cli
from medfm_compress.errors import IntegrityError

FAST_BENCH = ["--iterations", "2", "--warmup", "0", "--bootstrap", "10", "--quiet"]


def _tamper(path) -> None:
    """Flip one low bit near the end of the file (in weight data): still loadable, values barely changed."""
    data = bytearray(path.read_bytes())
    data[len(data) - 64] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def run(tiny_run, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(tiny_run, d)
    return d


def _err_lines(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.strip()]


def _refused(result, path) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = _err_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and str(path) in lines[0], lines[0]
    assert "differs from the sha256 recorded" in lines[0] and "--force" in lines[0]


def _forced(result, path, ok=(0,)) -> None:
    assert result.exit_code in ok, result.output
    warnings = [ln for ln in _err_lines(result) if ln.startswith("warning: ")]
    assert any(str(path) in w and "(--force)" in w for w in warnings), result.stderr


def test_bench_refuses_a_changed_run_artifact_unless_forced(run):
    weights = (run / "student.safetensors").resolve()
    _tamper(weights)
    args = ["bench", f"s={run}", "t=" + str(run) + "?name=teacher", "--data", TINY_DATA, *FAST_BENCH]
    _refused(CliRunner().invoke(cli, args), weights)
    _forced(CliRunner().invoke(cli, [*args, "--force"]), weights)


def test_bench_refuses_a_changed_onnx_unless_forced(run, tmp_path):
    onnx_path = run / "student.onnx"
    r = CliRunner().invoke(cli, ["export", str(run), "--out", str(onnx_path), "--num-check", "4"])
    assert r.exit_code == 0, r.output
    _tamper(onnx_path)
    args = ["bench", f"s={onnx_path}", "--data", TINY_DATA, *FAST_BENCH]
    _refused(CliRunner().invoke(cli, args), onnx_path.resolve())
    _forced(CliRunner().invoke(cli, [*args, "--force"]), onnx_path.resolve())
    # Building a TensorRT engine or an OpenVINO IR from it is refused the same way (before any backend loads).
    r = CliRunner().invoke(cli, ["export", str(onnx_path), "--format", "tensorrt", "--out", str(tmp_path / "e.engine")])
    _refused(r, onnx_path.resolve())
    r = CliRunner().invoke(cli, ["export", str(onnx_path), "--format", "openvino", "--out", str(tmp_path / "m.xml")])
    _refused(r, onnx_path.resolve())


def test_distill_refuses_changed_teacher_weights_and_resume_unless_forced(run, tmp_path):
    teacher = (run / "teacher.safetensors").resolve()
    _tamper(teacher)
    args = ["distill", "--data", TINY_DATA, "--teacher", TINY_TEACHER, "--teacher-weights", str(teacher),
            "--student", TINY_STUDENT, "--epochs", "1", "--batch-size", "32", "--no-augment", "--quiet",
            "--out", str(tmp_path / "d")]
    r = CliRunner().invoke(cli, args)
    _refused(r, teacher)
    assert not (tmp_path / "d" / "student.safetensors").exists()
    _forced(CliRunner().invoke(cli, [*args, "--force"]), teacher)
    assert (tmp_path / "d" / "student.safetensors").is_file()

    student = (run / "student.safetensors").resolve()
    _tamper(student)
    resume = ["distill", "--data", TINY_DATA, "--teacher", TINY_TEACHER, "--student", TINY_STUDENT, "--resume",
              "--quiet", "--out", str(run)]
    _refused(CliRunner().invoke(cli, resume), student)


def test_run_refuses_a_changed_stage_input_unless_forced(run, tmp_path):
    recipe = {
        "version": 1, "name": "tiny", "out": str(run), "data": TINY_DATA,
        "distill": {"teacher": TINY_TEACHER, "student": TINY_STUDENT, "teacher_epochs": 1, "epochs": 1,
                    "batch_size": 32, "baseline": True, "augment": False},
        "export": {"num_check": 4}, "quantize": [], "tensorrt": [], "bench": None,
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    weights = (run / "student.safetensors").resolve()
    # The shared tiny run may already hold an export written by other tests (quantize from a run dir does).
    (run / "student.onnx").unlink(missing_ok=True)
    _tamper(weights)
    r = CliRunner().invoke(cli, ["run", str(path), "--only", "export", "--quiet"])
    _refused(r, weights)
    assert not (run / "student.onnx").exists()
    r = CliRunner().invoke(cli, ["run", str(path), "--only", "export", "--quiet", "--force"])
    _forced(r, weights)
    assert (run / "student.onnx").is_file()


def test_check_input_returns_whether_it_forced(run, capsys):
    from medfm_compress.manifest import Manifest, check_inputs

    m = Manifest(run)
    assert m.check_input(run / "student.json") is False
    _tamper(run / "student.safetensors")
    with pytest.raises(IntegrityError):
        check_inputs([run / "student.safetensors"])
    assert m.check_input(run / "student.safetensors", force=True) is True
    assert "(--force)" in capsys.readouterr().err
