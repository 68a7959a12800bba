"""What a command builds from its command line, without running it."""

from __future__ import annotations

from click.testing import CliRunner

from medfm_compress.cli import cli
from medfm_compress.errors import ConfigError


def config_built(monkeypatch, module, runner_name: str, argv: list[str]):
    """The config object the command ``argv`` hands to ``module.runner_name`` (the command stops right there with a
    usage error, exit status 1)."""
    seen = {}

    def capture(cfg, *args, **kwargs):
        seen["cfg"] = cfg
        raise ConfigError("captured")

    monkeypatch.setattr(module, runner_name, capture)
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 1 and "captured" in result.output, result.output
    return seen["cfg"]
