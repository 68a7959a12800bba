import subprocess
import sys


def test_import_is_lean():
    code = (
        "import sys, medfm_compress, medfm_compress.cli, medfm_compress.errors;"
        "heavy = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'tensorrt_rtx', 'modelopt', 'openvino', 'timm')"
        " if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing medfm_compress pulled in: {out}"
