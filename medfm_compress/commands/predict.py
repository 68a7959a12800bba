"""``medfm-compress predict ARTIFACT INPUT... --out DIR``."""

from __future__ import annotations

import json

import click

from ._common import csv_option, foreign_model_options


@click.command(name="predict")
@click.argument("artifact", type=click.Path(dir_okay=True))
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True)
@click.option(
    "--out", "out", metavar="DIR", required=True, type=click.Path(file_okay=False), help="Output folder."
)
@click.option(
    "--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Cases per run."
)
@click.option(
    "--skip-bad",
    is_flag=True,
    help="Record an unreadable case in the outputs (its error column) and go on, instead of stopping.",
)
@click.option("--backend", default=None, help="Runtime backend (default: from the artifact's suffix).")
@click.option(
    "--device", default=None, help="Backend device, e.g. cpu, cuda:0 (onnxruntime), CPU (openvino)."
)
@click.option(
    "--threads", default=None, type=click.IntRange(min=1), help="Intra-op threads (default: all cores)."
)
@foreign_model_options
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=0),
    help="Threads reading and preprocessing files ahead of the model (0: none).",
)
@click.option("--overlap", "sw_overlap", default=0.25, show_default=True, type=click.FloatRange(0.0, 0.95),
              help="3-D models and 2-D ones trained on patches: overlap of neighbouring sliding windows (fraction of "
                   "a window).")
@click.option("--sw-batch-size", default=4, show_default=True, type=click.IntRange(min=1),
              help="3-D models and 2-D ones trained on patches: sliding windows per engine call.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(
    artifact,
    inputs,
    out,
    batch_size,
    skip_bad,
    backend,
    device,
    threads,
    input_size,
    channels,
    mean,
    std,
    workers,
    sw_overlap,
    sw_batch_size,
    quiet,
    as_json,
):
    """Apply the model ARTIFACT (.onnx; .xml OpenVINO IR with the openvino extra) to every INPUT and write
    DIR/predictions.csv and DIR/predictions.json (embedding models: DIR/embeddings.npy too).

    INPUT: image files (PNG, JPEG, NPY, DICOM), folders of them (recursively, in sorted order), or a data spec
    (e.g. synthetic?size=32, folder:DIR, medmnist:FILE.npz), whose test split is used. Preprocessing comes from
    the model's metadata. An unreadable file stops the run and nothing is written, unless --skip-bad.

    A 3-D segmentation model takes volumes: nifti:FILE, dicom-series:DIR, inv3:FILE, nifti:DIR (a data set's
    imagesTs/) or .nii/.nii.gz/.inv3 paths; each is resampled to the model's voxel spacing, segmented by sliding
    windows and written as DIR/masks/NAME.nii.gz on the input's grid (a DICOM series also as NAME.seg.dcm). A 2-D
    segmentation model trained on patches (distilled on folder:DIR?patch=H,W) segments each whole image at its own
    resolution by sliding windows.
    """
    from ..data.cases import input_cases
    from ..runtime.predict import PredictConfig, predict
    from ..runtime.tasks import get_task

    cfg = PredictConfig(
        model=artifact,
        inputs=tuple(inputs),
        out=out,
        batch_size=batch_size,
        skip_bad=skip_bad,
        backend=backend,
        device=device,
        threads=threads,
        input_size=input_size,
        channels=channels,
        mean=csv_option(mean, float),
        std=csv_option(std, float),
        workers=workers,
        progress=not quiet and not as_json,
        sw_overlap=sw_overlap,
        sw_batch_size=sw_batch_size,
    )
    res = predict(cfg, lambda meta: input_cases(cfg.inputs, window=meta.preprocess.window, exclude=cfg.out))
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2))
        return
    for note in res.notes:
        click.echo(note)
    if res.volumes:
        click.echo(f"segmented {res.predicted} volume(s) in {res.seconds:.2f} s ({res.backend}, sliding windows of "
                   f"{res.batch_size}); wrote {res.csv_path}, {res.json_path}, {res.masks_path}/")
        return
    kind = f"{res.task}, {len(res.label_names)} labels" if get_task(res.task).has_labels else "embeddings"
    skipped = f"; skipped {res.skipped} unreadable (see the error column)" if res.skipped else ""
    click.echo(
        f"predicted {res.predicted} of {res.cases} cases ({kind}){skipped} in {res.seconds:.2f} s with loading; "
        f"{res.images_per_s:.1f} images/s in the prediction loop ({res.backend}, batch {res.batch_size})"
    )
    wrote = [res.csv_path, res.json_path] + ([res.embeddings_path] if res.embeddings_path else []) + (
        [f"{res.masks_path}/ ({res.predicted} label map(s) at each image's size)"] if res.masks_path else [])
    click.echo(f"wrote {', '.join(map(str, wrote))}")
