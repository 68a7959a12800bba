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


def test_verify_data_on_an_array_run(tiny_run):
    r = CliRunner().invoke(cli, ["verify", str(tiny_run), "--data"])
    assert r.exit_code == 0, r.output
    assert "data verified: distill/data: synthetic?size=32" in r.output and "unchanged" in r.output


def _folder_run(tmp_path):
    """A tiny distillation on an image folder of patients (teacher: random weights of the tiny architecture)."""
    from support.folders import patient_folder
    from support.tiny import TINY_STUDENT, TINY_TEACHER

    from medfm_compress.compress.distill import DistillConfig, distill
    from medfm_compress.models import create_model
    from medfm_compress.models.weights import save_state_dict

    root = tmp_path / "imgs"
    patient_folder(root, patients=18, size=32, seed=5)
    teacher = save_state_dict(create_model(TINY_TEACHER, 2, 1, 32), tmp_path / "t" / "teacher.safetensors")
    spec = f"folder:{root}?size=32"
    distill(DistillConfig.from_options(data=spec, out=str(tmp_path / "run"), teacher=TINY_TEACHER, teacher_weights=str(teacher),
                          student=TINY_STUDENT, epochs=1, batch_size=8, head_epochs=1, progress=False))
    return root, spec, tmp_path / "run"


def test_verify_data_names_changed_added_and_removed_files(tmp_path):
    import csv
    import json

    import numpy as np
    from PIL import Image

    root, spec, run = _folder_run(tmp_path)
    card = json.loads((run / "student.json").read_text())
    assert card["provenance"]["data"] == spec
    with open(run / "splits.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    split_of_group = {}
    for r in rows:
        assert split_of_group.setdefault(r["group"], r["split"]) == r["split"]  # no patient straddles
    r = CliRunner().invoke(cli, ["verify", str(run), "--data"])
    assert r.exit_code == 0, r.output
    assert "data verified: distill/data" in r.output
    # Without --data a change of the data goes unnoticed (the artifacts are intact).
    test_file = next(x["file"] for x in rows if x["split"] == "test")
    img = np.array(Image.open(root / test_file))
    img[0, 0] ^= 0xFF
    Image.fromarray(img).save(root / test_file)
    per_group = {g: sum(x["group"] == g for x in rows) for g in split_of_group}
    removed = next(x for x in rows if x["split"] == "train" and per_group[x["group"]] > 1)
    lines = [x for x in (root / "labels.csv").read_text().splitlines() if not x.startswith(removed["file"] + ",")]
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "extra.png")
    lines.append(f"extra.png,{removed['label']},{removed['group']}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    (root / removed["file"]).unlink()
    assert CliRunner().invoke(cli, ["verify", str(run)]).exit_code == 0
    r = CliRunner().invoke(cli, ["verify", str(run), "--data"])
    assert r.exit_code == 1
    # The details (one line per split that differs), then the one-line verdict.
    *details, verdict = r.stderr.strip().splitlines()
    assert verdict.startswith("error: the data this run read has changed (2 finding(s) above)")
    assert len(details) == 2 and all(x.startswith(f"distill/data: {spec}: the ") for x in details)
    assert "the test split changed" in r.stderr and f"changed 1: {test_file}" in r.stderr
    assert f"removed 1: {removed['file']}" in r.stderr and "added 1: extra.png" in r.stderr
    assert "Traceback" not in r.output + r.stderr


def test_verify_data_refuses_a_run_without_digests(tiny_run, tmp_path):
    import json

    run = tmp_path / "old"
    shutil.copytree(tiny_run, run)
    manifest = json.loads((run / "manifest.json").read_text())
    for stage in manifest["stages"]:
        for entry in stage.get("inputs", {}).values():
            entry.pop("digest", None)
    (run / "manifest.json").write_text(json.dumps(manifest))
    r = CliRunner().invoke(cli, ["verify", str(run), "--data"])
    assert r.exit_code == 1 and "recorded a digest of its data" in r.stderr
    assert CliRunner().invoke(cli, ["verify", str(run)]).exit_code == 0
