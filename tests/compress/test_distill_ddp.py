import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.tiny import TINY_DATA, TINY_STUDENT, TINY_TEACHER

pytestmark = pytest.mark.slow  # two torchrun ranks, each importing torch and training


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="torchrun not found")
def test_distill_under_torchrun_two_ranks(tmp_path):
    """Two CPU ranks (gloo): one set of artifacts, written by rank 0, and one summary on stdout."""
    out = tmp_path / "ddp"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [torchrun, "--nproc-per-node", "2", "--master-port", "29533", "-m", "medfm_compress", "distill", "--data",
         TINY_DATA, "--teacher", TINY_TEACHER, "--teacher-epochs", "1", "--student", TINY_STUDENT, "--epochs", "1",
         "--batch-size", "16", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("params ratio") == 1
    m = json.loads((out / "metrics.json").read_text())
    assert m["student"]["params"] > 0
    steps = [h for h in m["history"]["history"]]
    assert steps and (out / "student.safetensors").is_file()
    # 192 training images, 16 per rank and step, 2 ranks: 6 steps per epoch.
    assert "steps/epoch=6" in (out / "train.log").read_text()
