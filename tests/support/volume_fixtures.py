"""Small synthetic CT volumes written in the real file formats (InVesalius .inv3, NIfTI, DICOM series)."""

from __future__ import annotations

import io
import plistlib
import tarfile
from pathlib import Path

import numpy as np


def head_like(shape_zyx=(40, 48, 48), seed: int = 0) -> np.ndarray:
    """int16 HU ``(Z, Y, X)``: air around an ellipsoid of soft tissue with a bright 'bone' shell and noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_zyx], indexing="ij")
    r = np.sqrt((x / 0.8) ** 2 + (y / 0.8) ** 2 + (z / 0.95) ** 2)
    hu = np.full(shape_zyx, -1000.0)
    hu[r < 0.9] = 40.0 + 30.0 * np.sin(6 * x[r < 0.9]) * np.cos(5 * z[r < 0.9])
    hu[(r >= 0.8) & (r < 0.9)] = 900.0
    hu += rng.normal(0, 15, shape_zyx)
    return np.clip(hu, -1024, 3000).astype(np.int16)


def write_inv3(
    path: Path, matrix_zyx: np.ndarray, spacing_xyz=(0.9, 0.9, 1.5), folder: str = "tmpabc",
    masks: dict[str, np.ndarray] | None = None,
) -> Path:
    """An InVesalius 3 project: gzip tar with ``folder/main.plist`` and the raw ``folder/matrix.dat``; ``masks``
    (name: bool ``(Z, Y, X)``) as InVesalius writes them: ``mask_N.plist`` + uint8 0/255 ``mask_N.dat`` with one
    extra leading voxel on every axis."""
    main = {
        "format_version": 1,
        "modality": "CT",
        "name": "synthetic",
        "matrix": {"dtype": str(matrix_zyx.dtype), "filename": "matrix.dat", "shape": list(matrix_zyx.shape)},
        "spacing": [float(s) for s in spacing_xyz],
    }
    members = {
        f"{folder}/main.plist": plistlib.dumps(main),
        f"{folder}/matrix.dat": matrix_zyx.astype("<" + matrix_zyx.dtype.str[1:]).tobytes(),
    }
    for k, (name, mask) in enumerate((masks or {}).items()):
        padded = np.zeros(tuple(n + 1 for n in mask.shape), dtype=np.uint8)
        padded[1:, 1:, 1:] = np.where(mask, 255, 0)
        members[f"{folder}/mask_{k}.plist"] = plistlib.dumps({"name": name, "index": k})
        members[f"{folder}/mask_{k}.dat"] = padded.tobytes()
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def ct_dataset(rows: int, cols: int, pixels_u16: np.ndarray, slope: float = 1.0, intercept: float = -1024.0):
    """A MONOCHROME2 16-bit CT image dataset (file meta, fresh SOP instance UID), ready for more tags and
    ``save_as``; shared by the series and single-image writers of the tests."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, cols
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels_u16, dtype=np.uint16).tobytes()
    return ds


def write_dicom_series(
    folder: Path, hu_zyx: np.ndarray, spacing_xyz=(0.8, 0.7, 2.0), slope=1.0, intercept=-1024.0, order=None
) -> Path:
    """One CT series, one file per slice, written in ``order`` (default reversed) so the reader must sort."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    nz = hu_zyx.shape[0]
    stored = np.round((hu_zyx.astype(np.float64) - intercept) / slope).astype(np.uint16)
    for k in order if order is not None else range(nz - 1, -1, -1):
        ds = ct_dataset(hu_zyx.shape[1], hu_zyx.shape[2], stored[k], slope, intercept)
        ds.SeriesInstanceUID = series
        # The patient, study and frame-of-reference module of a real series (a DICOM SEG copies them).
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = study, frame
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "PHANTOM1", "Phantom^One", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 1, k + 1
        ds.SliceThickness = spacing_xyz[2]
        ds.PixelSpacing = [spacing_xyz[1], spacing_xyz[0]]  # row spacing (y), column spacing (x)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, -50.0 + k * spacing_xyz[2]]
        ds.save_as(folder / f"slice_{(k * 7919) % 1000:04d}_{k}.dcm", enforce_file_format=True)
    (folder / "README.txt").write_text("not a DICOM file")
    return folder


# Settings of a tiny 3-D distillation that runs in seconds (random-weight teacher of the astra-ct interface).
TINY = {"teacher": "astra-ct-tiny", "widths": (8, 16, 32), "head_hidden": 64, "batch_size": 4}


def crop_specs(folder: Path) -> dict[str, str]:
    """Train and held-out crop specs on a synthetic head volume written to ``folder``: disjoint z regions."""
    path = write_inv3(folder / "head.inv3", head_like((40, 48, 48)), (0.9, 0.9, 1.5))
    common = f"inv3:{path}?crop=32,32,16&min_fg=0.2"
    return {"train": f"{common}&n=8&z=0,18&seed=0", "eval": f"{common}&n=4&z=22,40&seed=1"}


def conv3d_seg_model(path, weights, bias, batch="N", input_size=(16, 16, 12), task="segmentation", spacing=None,
                     names=("background", "liver", "spleen", "kidney"), window=(-200.0, 300.0)):
    """An ONNX 3-D "segmentation model": two 3x3x3 convolutions with a ReLU between (so windows' borders matter),
    with our metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from medfm_compress.runtime.metadata import ModelMeta, encode_metadata
    from medfm_compress.runtime.preprocess import PreprocessSpec

    k = weights[1].shape[0]
    dims = len(input_size)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1] * 2 * dims),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Conv", ["r", "w2", "b2"], ["logits"], pads=[1] * 2 * dims)],
        "seg3d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, *input_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, k, *input_size])],
        [numpy_helper.from_array(weights[0], "w1"), numpy_helper.from_array(bias[0], "b1"),
         numpy_helper.from_array(weights[1], "w2"), numpy_helper.from_array(bias[1], "b2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pre = PreprocessSpec(tuple(input_size), 1, (0.5,), (0.25,), window=window, spacing=spacing)
    for key, v in encode_metadata(ModelMeta(pre, task, list(names) if task == "segmentation" else list(names)[:2],
                                            arch="test:conv3d")).items():
        model.metadata_props.add(key=key, value=v)
    onnx.save(model, str(path))
    return path


def write_msd_folder(root: Path, n_cases: int = 4, shape=(24, 20, 16), spacing=(8.0, 7.5, 7.5), seed: int = 0,
                     v2: bool = True, flip_first: bool = False) -> Path:
    """A segmentation data set in the MSD / nnU-Net layout from small ``synthetic3d`` phantoms: ``dataset.json``,
    ``imagesTr/CASE_0000.nii.gz`` (v2; MSD: ``CASE.nii.gz`` and a ``training`` list) and ``labelsTr/CASE.nii.gz``,
    stored in RAS order with their affine; ``flip_first`` stores the first case in LPS order instead (its affine
    says so)."""
    import json

    import nibabel as nib

    from medfm_compress.data.synthetic3d import SEGMENTATION3D_NAMES, Synthetic3DConfig, generate_volumes

    arrays = generate_volumes(Synthetic3DConfig(seed=seed, shape=shape, spacing=spacing, n_train=n_cases, n_val=1,
                                                n_test=1))
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    training = []
    for i in range(n_cases):
        img, lab = arrays["train_images"][i], arrays["train_masks"][i]  # LPS voxel order
        if flip_first and i == 0:
            affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
            affine[:3, 3] = [(shape[0] - 1) * spacing[0], (shape[1] - 1) * spacing[1], 0.0]
            store_img, store_lab = img, lab
        else:
            affine = np.diag([*spacing, 1.0])
            store_img, store_lab = img[::-1, ::-1].copy(), lab[::-1, ::-1].copy()
        name = f"case_{i:03d}"
        img_name = f"{name}_0000.nii.gz" if v2 else f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(store_img, affine), root / "imagesTr" / img_name)
        nib.save(nib.Nifti1Image(store_lab, affine), root / "labelsTr" / f"{name}.nii.gz")
        training.append({"image": f"./imagesTr/{img_name}", "label": f"./labelsTr/{name}.nii.gz"})
    if v2:
        meta = {"name": "phantoms", "channel_names": {"0": "CT"},
                "labels": {n: i for i, n in enumerate(SEGMENTATION3D_NAMES)}, "numTraining": n_cases,
                "file_ending": ".nii.gz"}
    else:
        meta = {"name": "phantoms", "modality": {"0": "CT"},
                "labels": {str(i): n for i, n in enumerate(SEGMENTATION3D_NAMES)}, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root
