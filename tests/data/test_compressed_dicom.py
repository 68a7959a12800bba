"""Compressed DICOM decodes wherever DICOM is read (the readers that calibration, bench and predict use): real
files of each transfer syntax PACS exports use, shipped with pydicom, through the `dicom` extra's pylibjpeg
plugins. A syntax with no decoder installed stays a one-line error naming the file and the plugin."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medfm_compress.runtime.images import read_dicom_file, read_dicom_values

FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# (file, transfer syntax, the uncompressed twin it must equal, when pydicom ships one)
CASES = [
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", None),  # JPEG baseline
    ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51", None),  # JPEG extended (12-bit)
    ("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70", None),  # JPEG lossless, process 14 SV1
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", "MR_small.dcm"),  # JPEG-LS lossless
    ("JPEGLSNearLossless_08.dcm", "1.2.840.10008.1.2.4.81", None),  # JPEG-LS near-lossless
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90", "MR_small.dcm"),  # JPEG 2000 lossless
    ("693_J2KI.dcm", "1.2.840.10008.1.2.4.91", None),  # JPEG 2000 (CT 512x512)
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5", "MR_small.dcm"),  # RLE lossless
]


@pytest.mark.parametrize("name, syntax, twin", CASES, ids=[c[0] for c in CASES])
def test_each_compressed_syntax_decodes(name, syntax, twin):
    pytest.importorskip("pylibjpeg", reason="the 'dicom' extra is not installed (make test installs it)")
    path = FILES / name
    assert str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID) == syntax
    x = read_dicom_file(path, size=32)
    assert x.shape[:2] == (32, 32) and x.dtype == np.float32 and np.isfinite(x).all()
    assert 0.0 <= x.min() < x.max() <= 1.0  # a real image, windowed, not a blank
    if twin is not None:  # lossless: exactly the pixels of the uncompressed file
        np.testing.assert_array_equal(read_dicom_values(path), read_dicom_values(FILES / twin))


def test_a_folder_of_compressed_files_predicts(tmp_path):
    pytest.importorskip("pylibjpeg", reason="the 'dicom' extra is not installed (make test installs it)")
    import csv

    from click.testing import CliRunner
    from support.onnx_fixtures import tiny_onnx

    from medfm_compress.cli import cli

    folder = tmp_path / "dcm"
    folder.mkdir()
    # The one-channel model takes the grayscale files (the RGB JPEG ones are decoded in the test above).
    names = ["JPGExtended.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_08.dcm",
             "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "693_J2KI.dcm"]
    for name in names:
        shutil.copy(FILES / name, folder / name)
    model = tiny_onnx(tmp_path / "m.onnx")
    res = CliRunner().invoke(cli, ["predict", str(model), str(folder), "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "out" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(Path(r["file"]).name for r in rows) == sorted(names)
    assert all(not r["error"] and r["label"] for r in rows)


def test_an_undecodable_syntax_is_one_line_naming_the_file_and_the_plugin(tmp_path):
    # An install without the 'dicom' extra: pylibjpeg and its plugins (and pyjpegls, which highdicom brings) refuse
    # to import.
    code = textwrap.dedent("""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("pylibjpeg", "libjpeg", "openjpeg", "rle", "gdcm", "pyjpegls", "jpeg_ls"):
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, _Block())
        from medfm_compress.cli import main
        main(sys.argv[1:])
    """)
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(FILES / "MR_small_jpeg_ls_lossless.dcm", folder / "x.dcm")
    from support.onnx_fixtures import tiny_onnx

    model = tiny_onnx(tmp_path / "m.onnx")
    env = {k: v for k, v in os.environ.items()}
    res = subprocess.run([sys.executable, "-c", code, "predict", str(model), str(folder), "--out",
                          str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert "x.dcm" in lines[0] and "JPEG-LS" in lines[0] and "pylibjpeg-libjpeg" in lines[0]
    assert "pip install 'medfm-compress[dicom]'" in lines[0]
    assert not (tmp_path / "out").exists()
