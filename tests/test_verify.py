import shutil

from click.testing import CliRunner

from medfm_compress.cli import cli


def test_verify_detects_changed_and_missing(tiny_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    r = CliRunner().invoke(cli, ["verify", str(run)])
    assert r.exit_code == 0 and "verified" in r.output
    with open(run / "student.safetensors", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00\x01\x02")
    (run / "baseline.json").unlink()
    r = CliRunner().invoke(cli, ["verify", str(run)])
    assert r.exit_code == 1
    assert "student.safetensors" in r.stderr and "changed" in r.stderr and "missing" in r.stderr
    r = CliRunner().invoke(cli, ["verify", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "no manifest.json" in r.stderr
