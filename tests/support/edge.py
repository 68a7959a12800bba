"""The CLI as the edge install runs it: a subprocess whose import system refuses every package the edge install
lacks (torch, timm, onnx, openvino, ...), and which fails if one of them was imported all the same."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# What `pip install medfm-compress` (no extras) does not bring.
HEAVY = ("torch", "torchvision", "timm", "safetensors", "onnx", "onnxslim", "onnxscript", "openvino", "nncf",
         "modelopt", "tensorrt", "tensorrt_rtx", "matplotlib", "yaml", "monai", "nibabel",
         "segmentation_models_pytorch")

BLOCKER = textwrap.dedent(f"""
    import sys
    HEAVY = {HEAVY!r}

    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: edge install)", name=name)
            return None

    sys.meta_path.insert(0, _Block())
    # find_spec-based probes (which extra is installed?) must see the packages as absent too.
    import importlib.util
    _real_find_spec = importlib.util.find_spec
    def _find_spec(name, package=None):
        if name.split(".")[0] in HEAVY:
            return None
        return _real_find_spec(name, package)
    importlib.util.find_spec = _find_spec
    from medfm_compress.cli import main
    try:
        main(sys.argv[1:])
    finally:
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
        assert not leaked, leaked
""")


def edge_cli(args: list[str], cwd: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``medfm-compress ARGS`` in a process that cannot import what the edge install lacks."""
    return subprocess.run([sys.executable, "-c", BLOCKER, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
