"""The real head CT figures of issue 20, one run on this machine: a 3-D student distilled from a ~124x larger MONAI
SegResNet teacher on InVesalius' ``Cranium.inv3`` (a real 256x256x108 head CT), then the whole scan segmented end to
end by the shipped student, by the teacher, and by the C++ runtime.

    python benchmarks/headct_3d.py [--run runs/headct3d] [--teacher-epochs 12] [--epochs 10]

The task (stated, since the scan has no manual labels): **head tissue classes from the scan's own Hounsfield units,
cleaned** -- ``head`` = the largest connected component of voxels above -300 HU with its holes filled (sinuses and
airways inside the head count as head), ``bone`` = head voxels above 300 HU after a 3x3x3 median filter (speckle and
beam-hardening dots removed), ``soft_tissue`` = the rest of the head, ``background`` outside it.

Steps (a finished step's outputs are reused):
  1. the scan is cut along z into 6 slabs of 18 slices (27 mm), written as a ``nifti:DIR`` data set (MSD layout);
     ``?val=1&test=1`` hold out one slab each, chosen by the split seed: the **held-out z-region** is the test slab;
  2. ``distill``: teacher ``monai:SegResNet?init_filters=32`` (18.8 M parameters) on all labels, the default student
     (MONAI U-Net 8..64, 0.15 M), patches of 48x48x16 at 2 x 2 x 1.5 mm, HU window -1000..1000;
  3. ``export`` + ``quantize --precision auto --out student.auto`` (ONNX Runtime and OpenVINO candidates compete;
     what a user ships, .onnx or .xml);
  4. the whole scan, as a NIfTI file, segmented end to end (read -> resample -> sliding window (overlap 0.25, 4
     windows per call) -> mask on the scan's grid -> NIfTI written) on 2 threads: the shipped student in this process
     (median of 3 after a warm-up), the teacher (torch, one run), the student again as a fresh ``medfm-compress
     predict`` process (wall time including start-up, and its peak RSS), and ``medfm-run predict`` (C++) when built
     (on the fp32 ONNX when an OpenVINO IR was shipped: C++ runs ONNX);
  5. teacher-student mask Dice per class on the held-out slab's z-range of the whole-scan masks, and the C++ mask's
     voxel agreement with Python's.

Targets: student end to end <= 7 s on 2 cores, peak RSS <= 2 GB, teacher/student time >= 20x, teacher-student mean
Dice on the held-out z-region >= 0.90; C++ masks equal to Python's on >= 99.9% of voxels.

Writes benchmarks/results/headct_3d.json and prints each figure beside its target. Ratios measured side by side in
one run; absolute times are not comparable between runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from segmentation import sh, write_figures  # noqa: E402  (benchmarks/segmentation.py: CLI steps, results)

LABELS = ("background", "soft_tissue", "bone")
SLABS, SLAB_Z = 6, 18
TEACHER = "monai:SegResNet?init_filters=32"
THREADS = 2


def tissue_labels(hu: np.ndarray) -> np.ndarray:
    """The cleaned HU tissue classes of the module docstring, (X, Y, Z) uint8."""
    from scipy import ndimage

    body = hu > -300
    lab, n = ndimage.label(body)
    if n == 0:
        raise SystemExit("the scan has no voxel above -300 HU")
    sizes = ndimage.sum_labels(body, lab, index=np.arange(1, n + 1))
    head = ndimage.binary_fill_holes(lab == 1 + int(np.argmax(sizes)))
    bone = ndimage.median_filter((hu > 300) & head, size=3)
    out = np.zeros(hu.shape, np.uint8)
    out[head] = 1
    out[bone & head] = 2
    return out


def write_dataset(root: Path, cranium: Path) -> tuple[Path, Path]:
    """The slabs as an MSD folder under ``root/data`` and the whole scan as ``root/cranium.nii.gz`` (+ labels)."""
    import nibabel as nib

    from medfm_compress.runtime.volumes import read_inv3

    data = root / "data"
    whole = root / "cranium.nii.gz"
    if (data / "dataset.json").is_file() and whole.is_file():
        return data, whole
    vol = read_inv3(cranium)
    labels = tissue_labels(vol.hu)
    (data / "imagesTr").mkdir(parents=True, exist_ok=True)
    (data / "labelsTr").mkdir(parents=True, exist_ok=True)
    affine = np.asarray(vol.affine)
    hu = np.round(vol.hu).astype(np.int16)
    for k in range(SLABS):
        z0 = k * SLAB_Z
        shift = np.eye(4)
        shift[2, 3] = z0
        a = affine @ shift  # voxel (x, y, 0) of the slab is voxel (x, y, z0) of the scan
        nib.save(nib.Nifti1Image(hu[:, :, z0:z0 + SLAB_Z], a), data / "imagesTr" / f"slab{k}_0000.nii.gz")
        nib.save(nib.Nifti1Image(labels[:, :, z0:z0 + SLAB_Z], a), data / "labelsTr" / f"slab{k}.nii.gz")
    (data / "dataset.json").write_text(json.dumps({
        "name": "Cranium.inv3 head tissue classes (HU, cleaned)", "channel_names": {"0": "CT"},
        "labels": {name: i for i, name in enumerate(LABELS)}, "numTraining": SLABS, "file_ending": ".nii.gz"}))
    nib.save(nib.Nifti1Image(labels, affine), root / "cranium.labels.nii.gz")
    nib.save(nib.Nifti1Image(hu, affine), whole)
    return data, whole


def end_to_end(engine, path: Path, out: Path) -> np.ndarray:
    """What ``predict`` does with a volume, in this process: read, resample, sliding window, mask back, written."""
    from medfm_compress.runtime.predict_volume import segment_file
    from medfm_compress.runtime.volume_masks import write_nifti_mask

    vol, mask = segment_file(engine, "nifti", path, overlap=0.25, sw_batch_size=4)
    arr, affine = vol.to_source_order(mask)
    write_nifti_mask(arr, affine, out, list(engine.meta.label_names))
    return arr


def run_child(cmd: list[str], workdir: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, the child's peak RSS in MB, result). The peak is the child's own VmHWM, polled every 10 ms once
    it runs ``cmd`` (wait4's ru_maxrss would count the copy of this big process the child is forked as)."""
    import tempfile

    with tempfile.TemporaryFile("w+", dir=workdir) as out, tempfile.TemporaryFile("w+", dir=workdir) as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        status, cmdline = Path(f"/proc/{proc.pid}/status"), Path(f"/proc/{proc.pid}/cmdline")
        peak_kb = 0
        while proc.poll() is None:
            try:
                if cmdline.read_bytes().split(b"\0")[0] == cmd[0].encode():  # exec'd: its own memory from here
                    for line in status.read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            peak_kb = max(peak_kb, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return wall, peak_kb / 1024, subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())


def dice(a: np.ndarray, b: np.ndarray, k: int) -> float:
    x, y = a == k, b == k
    den = int(x.sum()) + int(y.sum())
    return 1.0 if den == 0 else 2.0 * int((x & y).sum()) / den


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/headct3d")
    ap.add_argument("--teacher-epochs", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--per-case", type=int, default=32)
    args = ap.parse_args()
    import nibabel as nib

    from medfm_compress._cache import cache_dir
    from medfm_compress.data.volume import fetch_invesalius_example
    from medfm_compress.runtime import Engine

    root = Path(args.run)
    run = root / "run"
    data_dir, whole = write_dataset(root, fetch_invesalius_example(cache_dir() / "invesalius"))
    data = (f"nifti:{data_dir}?spacing=2,2,1.5&patch=48,48,16&per_case={args.per_case}&window=-1000,1000"
            "&val=1&test=1")
    if not (run / "student.safetensors").exists():
        sh(["distill", "--data", data, "--teacher", TEACHER, "--teacher-epochs", str(args.teacher_epochs),
            "--epochs", str(args.epochs), "--quiet", "--out", str(run)], "distill")
    if not (run / "student.onnx").exists():
        sh(["export", str(run), "--out", str(run / "student.onnx")], "export")
    # A stem: ONNX Runtime and OpenVINO candidates compete; the winner is student.auto.onnx or student.auto.xml.
    stem = run / "student.auto"
    found = [p for p in (run / "student.auto.onnx", run / "student.auto.xml") if p.is_file()]
    if not found:
        sh(["quantize", str(run / "student.onnx"), "--calib-data", data, "--target", "cpu", "--precision", "auto",
            "--num-calib", "64", "--num-holdout", "64", "--out", str(stem), "--quiet"], "quantize auto")
        found = [p for p in (run / "student.auto.onnx", run / "student.auto.xml") if p.is_file()]
    shipped = found[0]
    with open(run / "splits.csv", newline="") as f:
        test_cases = sorted({row["group"] for row in csv.DictReader(f) if row["split"] == "test"})
    zs = sorted(int(c.removeprefix("slab")) for c in test_cases)
    held_out = [(z * SLAB_Z, (z + 1) * SLAB_Z) for z in zs]

    out = root / "masks"
    out.mkdir(parents=True, exist_ok=True)
    print(f"segmenting {whole} ({nib.load(whole).shape}) end to end, {THREADS} threads", flush=True)
    with Engine.load(shipped, threads=THREADS) as student:
        end_to_end(student, whole, out / "student.nii.gz")  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            s_mask = end_to_end(student, whole, out / "student.nii.gz")
            times.append(time.perf_counter() - t0)
        student_s = float(np.median(times))
        student_info = {"backend": student.backend_name, "precision": student.meta.precision}
    print(f"student: {student_s:.2f} s", flush=True)
    with Engine.load(run, threads=THREADS, name="teacher") as teacher:
        t0 = time.perf_counter()
        t_mask = end_to_end(teacher, whole, out / "teacher.nii.gz")
        teacher_s = time.perf_counter() - t0
        teacher_params = teacher.info.get("params")
    print(f"teacher: {teacher_s:.2f} s", flush=True)
    cli_s, cli_rss, proc = run_child([sys.executable, "-m", "medfm_compress", "predict", str(shipped), str(whole),
                                      "--out", str(root / "predict"), "--threads", str(THREADS), "--quiet"], root)
    if proc.returncode != 0:
        raise SystemExit(f"predict failed: {proc.stderr.strip()}")
    cli_mask = np.asarray(nib.load(root / "predict" / "masks" / "cranium.nii.gz").dataobj)
    cpp = REPO / "build" / "cpp" / "medfm-run"
    cpp_fig = {"skipped": f"{cpp} is not built (make cpp)"}
    if cpp.is_file():
        # The C++ runtime runs ONNX: an OpenVINO winner is compared through the fp32 ONNX it was made from, with
        # Python's mask of that same model.
        cpp_model, py_mask = shipped, s_mask
        if shipped.suffix != ".onnx":
            cpp_model = run / "student.onnx"
            with Engine.load(cpp_model, threads=THREADS) as fp32:
                py_mask = end_to_end(fp32, whole, out / "student-fp32.nii.gz")
        cpp_s, cpp_rss, proc = run_child([str(cpp), "predict", str(cpp_model), str(whole), "--mask-out",
                                          str(out / "cpp.nii.gz"), "--threads", str(THREADS)], root)
        if proc.returncode != 0:
            raise SystemExit(f"medfm-run failed: {proc.stderr.strip()}")
        cpp_mask = np.asarray(nib.load(out / "cpp.nii.gz").dataobj)
        cpp_fig = {"model": cpp_model.name, "wall_s": cpp_s, "peak_rss_mb": cpp_rss,
                   "voxel_agreement_with_python": float((cpp_mask == py_mask).mean())}
    labels = np.asarray(nib.load(root / "cranium.labels.nii.gz").dataobj)
    region = np.zeros(s_mask.shape, bool)
    for z0, z1 in held_out:
        region[:, :, z0:z1] = True
    per_class = {LABELS[k]: dice(t_mask[region], s_mask[region], k) for k in (1, 2)}
    vs_labels = {who: {LABELS[k]: dice(m[region], labels[region], k) for k in (1, 2)}
                 for who, m in (("teacher", t_mask), ("student", s_mask))}
    student_params = json.loads((run / "student.json").read_text()).get("num_params")
    figures = {
        "scan": {"file": str(whole), "shape": list(nib.load(whole).shape), "task": "HU tissue classes, cleaned",
                 "labels": list(LABELS)},
        "held_out_slabs": test_cases, "held_out_z": held_out,
        "student": {**student_info, "params": student_params, "end_to_end_s": student_s, "runs_s": times},
        "teacher": {"arch": TEACHER, "params": teacher_params, "end_to_end_s": teacher_s, "backend": "torch fp32"},
        "teacher_over_student_time": teacher_s / student_s,
        "cli_predict": {"wall_s": cli_s, "peak_rss_mb": cli_rss,
                        "voxel_agreement_with_in_process": float((cli_mask == s_mask).mean())},
        "cpp": cpp_fig,
        "teacher_student_dice_held_out": per_class,
        "teacher_student_mean_dice_held_out": float(np.mean(list(per_class.values()))),
        "dice_vs_hu_labels_held_out": vs_labels,
    }
    targets = [
        ("student end to end on the whole scan, in process (s)", student_s, "<= 7"),
        ("student `medfm-compress predict` process, wall incl. start-up (s)", cli_s, "<= 7"),
        ("peak RSS of that process (MB)", cli_rss, "<= 2048"),
        ("teacher / student time per scan", teacher_s / student_s, ">= 20"),
        ("teacher-student mean Dice, held-out z-region", figures["teacher_student_mean_dice_held_out"], ">= 0.90"),
    ]
    if "voxel_agreement_with_python" in cpp_fig:
        targets += [("C++ mask = Python mask (fraction of voxels)", cpp_fig["voxel_agreement_with_python"],
                     ">= 0.999"), ("medfm-run predict wall (s)", cpp_fig["wall_s"], "(for reference)")]
    write_figures("headct_3d", figures, targets, run=str(run), data=data, teacher_epochs=args.teacher_epochs,
                  epochs=args.epochs)


if __name__ == "__main__":
    main()
