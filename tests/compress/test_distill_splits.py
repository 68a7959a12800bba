"""A distillation run shows the split it used (train.log, splits.csv) and records a digest of what it read."""

from __future__ import annotations

import csv
import json

from support.tiny import TINY_DATA

from medfm_compress.data import load_data
from medfm_compress.data.digest import data_digest
from medfm_compress.manifest import Manifest


def test_run_records_splits_and_data_digest(tiny_run):
    rec = Manifest(tiny_run).stage("distill")
    assert rec["outputs"]["splits"]["path"] == "splits.csv"
    with open(tiny_run / "splits.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["file", "group", "split", "label"]
    assert [sum(r["split"] == s for r in rows) for s in ("train", "val", "test")] == [192, 32, 96]
    assert rows[0]["file"] == "train_images[0]" and rows[-1]["file"] == "test_images[95]"
    # The digest sits beside the full spec, and is that of the data read again now.
    data = rec["inputs"]["data"]
    assert data["spec"] == TINY_DATA and data["digest"]["spec"] == TINY_DATA
    assert data["digest"] == data_digest(load_data(TINY_DATA), TINY_DATA, seed=0)
    # The log shows one line per split: images and groups, per class.
    log = (tiny_run / "train.log").read_text()
    assert "split train: 192 images in 192 groups | per class, images (groups): normal" in log
    assert "split test: 96 images in 96 groups" in log
    card = json.loads((tiny_run / "student.json").read_text())
    assert card["provenance"]["data"] == TINY_DATA  # options (size, counts, seed) kept
