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
    assert bad.exit_code == 1 and "--eval-data is for volume teachers" in bad.output


def test_config_refuses_non_volume_data():
    from medfm_compress.compress.distill_volume import VolumeDistillConfig

    with pytest.raises(ConfigError, match="not a volume spec"):
        VolumeDistillConfig(data="synthetic")
    with pytest.raises(ConfigError, match="unknown volume teacher"):
        VolumeDistillConfig(data="inv3:x.inv3", teacher="timm:resnet18")


@pytest.mark.slow
def test_recipe_runs_the_volume_chain_and_caches(specs, tmp_path):
    from medfm_compress.pipeline import load_recipe, resolve_recipe, run_pipeline

    shipped = load_recipe(Path(__file__).parents[2] / "recipes" / "ct-foundation-3d.yaml")
    assert shipped.volume and shipped.distill["teacher"] == "astra-ct"
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
                "num_holdout": 4,
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
