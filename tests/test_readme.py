"""Every ```bash block of README.md is executed, in order, in one scratch directory.

The README's tour uses small data so this stays quick. ```sh blocks are the two set-up commands
(`make demo`, `make test`): CI itself runs `make test`, and `make demo` is the demo test's job.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_the_two_setup_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci


@pytest.mark.slow  # the whole tour: minutes
@pytest.mark.timeout(1800)  # every block of the README, the real-CT chain included
@pytest.mark.skipif(not README.exists(), reason="no README")
def test_readme_bash_blocks_run(tmp_path, cpp_build):
    blocks = bash_blocks(README.read_text())
    assert blocks, "README has no executable bash blocks"
    env = dict(os.environ)
    env["MEDFM_RUN"] = str(cpp_build / "medfm-run")  # the C++ CLI the README's blocks call
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for i, block in enumerate(blocks):
        # Each block in its own process group: a block past its time is killed with everything it started.
        proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            pytest.fail(f"README bash block {i} ran past 900 s:\n{block}\n{err[-3000:]}")
        assert proc.returncode == 0, f"README bash block {i} failed ({proc.returncode}):\n{block}\n{err[-3000:]}"
