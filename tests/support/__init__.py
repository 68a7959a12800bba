"""Helpers shared by the tests, imported as ``support.*`` (pyproject's pytest ``pythonpath = ["tests"]``).

- ``support.tiny``: the tiny synthetic task and models that most tests train on.
- ``support.onnx_fixtures``: a tiny ONNX classifier built with onnx.helper (no torch).
- ``support.volume_fixtures``: small synthetic CT volumes in the real file formats.
- ``support.folders``: labelled image and DICOM folders whose images belong to patients (groups).
"""
