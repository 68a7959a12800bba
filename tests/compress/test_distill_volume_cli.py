"""Volume distillation through the CLI and a recipe (the same commands as 2-D), with the tiny CT teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.volume_fixtures import TINY, crop_specs

from medfm_compress.errors import ConfigError


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    return crop_specs(tmp_path_factory.mktemp("ct"))


@pytest.mark.slow
def test_cli_distill_with_a_volume_teacher(specs, tmp_path):
    from medfm_compress.cli import cli

    out = tmp_path / "cli"
    res = CliRunner().invoke(
        cli,
        [
            "distill",
            "--data",
            specs["train"],
            "--eval-data",
            specs["eval"],
            "--teacher",
            "astra-ct-tiny",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--quiet",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    assert m["teacher"]["spec"] == "astra-ct-tiny" and m["eval"]["n"] == 4
    assert (out / "student.safetensors").is_file()
    bad = CliRunner().invoke(cli, ["distill", "--eval-data", specs["eval"], "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "--eval-data applies to volume crops" in bad.output


@pytest.mark.parametrize("args, message", [
    # A foundation teacher on image data, and an image teacher on volume crops.
    (["--data", "synthetic?size=32&n_train=8&n_val=4&n_test=4"], "is a CT volume encoder; give --data volume crops"),
    (["--teacher", "timm:resnet18"], "their teacher is a foundation encoder"),
    # Every flag that does not apply to volume crops is refused by name, before anything trains.
    (["--loss", "kd"], "--loss does not apply"),
    (["--temperature", "2"], "--temperature does not apply"),
    (["--label-fraction", "0.5"], "--label-fraction does not apply"),
    (["--baseline"], "--baseline does not apply"),
    (["--head-epochs", "3"], "--head-epochs does not apply"),
    (["--augment"], "--augment does not apply"),
    (["--teacher-weights", "w.safetensors"], "--teacher-weights does not apply to --teacher astra-ct-tiny"),
    (["--teacher-epochs", "2"], "--teacher-epochs does not apply"),
    (["--student", "timm:resnet18", "--widths", "8,16"], "--widths and --head-hidden shape the default 3-D student"),
])
def test_the_volume_teacher_refuses_what_does_not_apply(specs, tmp_path, args, message):
    from medfm_compress.cli import cli

    base = {"--data": specs["train"], "--teacher": "astra-ct-tiny"}
    for flag in args[::2]:
        base.pop(flag, None)
    argv = ["distill", *(x for kv in base.items() for x in kv), *args, "--epochs", "1", "--out", str(tmp_path / "r")]
    r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 1 and message in r.output.strip().splitlines()[-1], r.output
    assert not (tmp_path / "r").exists()


def test_the_command_and_the_recipe_resolve_to_the_same_config(specs):
    """The CT recipe and the distill command with the same settings build the same DistillConfig, defaults included
    (the command once passed click's own epochs and lr over the volume defaults)."""
    from medfm_compress.cli import cli
    from medfm_compress.compress import distill as distill_module
    from medfm_compress.pipeline import _plan, _stage_config, load_recipe

    recipe = load_recipe("ct-foundation-3d")
    spec = next(s for s in _plan(recipe, Path("/tmp/x")) if s.kind == "distill")
    from_recipe = _stage_config(spec, recipe, out="o", progress=False)
    seen = {}

    def fake(cfg):
        seen["cfg"] = cfg
        raise ConfigError("stop")

    d = recipe.distill
    argv = ["distill", "--data", recipe.data, "--teacher", d["teacher"], "--eval-data", d["eval_data"],
            "--epochs", str(d["epochs"]), "--batch-size", str(d["batch_size"]), "--lr", str(d["lr"]), "--out", "o",
            "--quiet"]
    import unittest.mock as mock

    with mock.patch.object(distill_module, "distill", fake):
        r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 1, r.output
    assert seen["cfg"] == from_recipe


@pytest.mark.slow
def test_recipe_runs_the_volume_chain_and_caches(specs, tmp_path):
    from medfm_compress.pipeline import load_recipe, resolve_recipe, run_pipeline

    shipped = load_recipe("ct-foundation-3d")
    assert not shipped.teacher_in_run and shipped.distill["teacher"] == "astra-ct"
    raw = {
        "name": "ct-tiny",
        "out": str(tmp_path / "p"),
        "data": specs["train"],
        "distill": {**TINY, "widths": list(TINY["widths"]), "eval_data": specs["eval"], "epochs": 1},
        "export": {"num_check": 2},
        "quantize": [
            {
                "name": "int8",
                "target": "cpu",
                "precision": "int8",
                "num_calib": 8,
                "num_holdout": 4, "allow_small_holdout": True,
                "latency_runs": 1,
            }
        ],
        "bench": {"iterations": 2, "warmup": 1},
    }
    res = run_pipeline(resolve_recipe(raw), progress=False)
    assert res.ran == ["distill", "export", "quantize:int8", "bench"]
    names = [a["name"] for a in res.report["artifacts"]]
    assert names == ["student-fp32", "student-int8"] and res.report["data"]["spec"] == specs["eval"]
    again = run_pipeline(resolve_recipe(raw), progress=False)
    assert again.ran == [] and len(again.cached) == 4
