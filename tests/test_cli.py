import json

import numpy as np
import pytest
from click.testing import CliRunner
from support.tiny import TINY_DATA, TINY_STUDENT, TINY_TEACHER

from medfm_compress import __version__
from medfm_compress.cli import cli


@pytest.fixture
def runner():
    return CliRunner()


def test_version_and_help(runner):
    r = runner.invoke(cli, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output
    for cmd in [[], *([c] for c in cli.list_commands(None))]:
        r = runner.invoke(cli, [*cmd, "--help"])
        assert r.exit_code == 0, (cmd, r.output)
        assert "Usage" in r.output


def test_distill_cli_json(runner, tmp_path):
    r = runner.invoke(cli, ["distill", "--data", TINY_DATA, "--teacher", TINY_TEACHER, "--student", TINY_STUDENT,
                            "--teacher-epochs", "1", "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "r"),
                            "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["student"]["arch"] == TINY_STUDENT and "history" not in m


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "medmnist:/no/such/file.npz", "--teacher", "timm:resnet18", "--teacher-weights", "/no/w.safetensors"],
         "does not exist"),
        # A tiny one-epoch teacher: distill trains the teacher before it builds the student, and the default
        # teacher would take most of a minute here before this error.
        (["--student", "timm:not_a_model_xyz", "--data", TINY_DATA, "--teacher", TINY_TEACHER, "--teacher-epochs", "1",
          "--batch-size", "32"], "unknown timm architecture"),
        (["--label-fraction", "1.5"], "label-fraction"),
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--data", "bogus:thing"], "unknown data kind"),
        (["--loss", "kd,focal"], "unknown loss"),
    ],
)
def test_distill_user_errors_are_one_line(runner, tmp_path, args, message):
    out = tmp_path / "o"
    r = runner.invoke(cli, ["distill", "--out", str(out), "--quiet", *args])
    assert r.exit_code == 1, r.output
    assert message in r.stderr
    assert "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (out / "student.safetensors").exists()


def test_nan_images_error(runner, tmp_path):
    imgs = np.random.default_rng(0).random((40, 16, 16)).astype(np.float32)
    imgs[3, 2, 2] = np.nan
    np.savez(tmp_path / "nan.npz", train_images=imgs, train_labels=np.arange(40) % 2,
             test_images=imgs[:8], test_labels=np.arange(8) % 2)
    r = runner.invoke(cli, ["distill", "--data", f"medmnist:{tmp_path / 'nan.npz'}", "--teacher", TINY_TEACHER,
                            "--teacher-weights", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "o"), "--quiet"])
    assert r.exit_code == 1 and "NaN" in r.stderr


def test_distill_and_adapt_restate_no_default(monkeypatch):
    """Options left out are the config's own defaults (they live once, in DistillConfig and AdaptConfig); the options
    given reach the config parsed."""
    from support.cli import config_built

    from medfm_compress.compress import adapt, distill
    from medfm_compress.compress.adapt import AdaptConfig
    from medfm_compress.compress.distill import DistillConfig

    assert config_built(monkeypatch, distill, "distill", ["distill", "--quiet"]) == DistillConfig.from_options(progress=False)
    cfg = config_built(monkeypatch, distill, "distill", ["distill", "--quiet", "--loss", "kd,feat", "--widths",
                                                         "8,16", "--temperature", "2", "--device", "cpu"])
    assert cfg == DistillConfig.from_options(progress=False, losses=("kd", "feat"), widths=(8, 16), temperature=2.0, device="cpu")
    cfg = config_built(monkeypatch, adapt, "adapt", ["adapt", "--teacher", "timm:resnet18", "--quiet"])
    assert cfg == AdaptConfig(teacher="timm:resnet18", progress=False)
    cfg = config_built(monkeypatch, adapt, "adapt", ["adapt", "--teacher", "timm:resnet18", "--quiet", "--method", "finetune",
                                                     "--no-augment", "--label-fraction", "0.5"])
    assert cfg == AdaptConfig(teacher="timm:resnet18", progress=False, method="finetune", augment=False,
                              label_fraction=0.5)
    # A teacher's own normalisation: comma-separated floats, the same flags on both commands.
    norm = ["--teacher-mean", "0.48,0.46,0.41", "--teacher-std", "0.27,0.26,0.28"]
    cfg = config_built(monkeypatch, adapt, "adapt", ["adapt", "--teacher", "timm:resnet18", "--quiet", *norm])
    assert cfg.teacher_mean == (0.48, 0.46, 0.41) and cfg.teacher_std == (0.27, 0.26, 0.28)
    cfg = config_built(monkeypatch, distill, "distill", ["distill", "--quiet", "--teacher", "timm:resnet18",
                                                         "--teacher-weights", "w.safetensors", *norm])
    assert cfg.teacher.mean == (0.48, 0.46, 0.41) and cfg.teacher.std == (0.27, 0.26, 0.28)
