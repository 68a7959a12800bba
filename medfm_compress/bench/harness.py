"""``run_bench``: artifacts x batch sizes -> latency, accuracy parity against a reference, gates, reports."""

from __future__ import annotations

import contextlib
import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DictConfig, option_value
from ..errors import ConfigError, DataError, MedfmError, UsageError
from ..layout import RunLayout
from ..runtime.tasks import drop_gates, get_task, loss_upper_bound, models_where, task_names
from .latency import LatencyConfig, measure_end_to_end, measure_engines, measure_volume_end_to_end

__all__ = ["BenchConfig", "run_bench", "evaluate_gates", "parse_artifacts", "split_artifact_options",
           "RELATIVE_GATES", "ABSOLUTE_GATES"]

# Gates that compare an artifact with the reference (so never judge the reference itself), and gates that judge
# each artifact on its own (the reference included: a CI budget on the one model it ships must bite).
RELATIVE_GATES = (*drop_gates(), "min_agreement", "min_speedup")
ABSOLUTE_GATES = ("max_p50_ms", "max_size_mb")


def parse_artifacts(items: tuple[str, ...] | list[str]) -> tuple[tuple[str, str], ...]:
    """``["name=path", ...]`` -> ``(("name", "path"), ...)``; a bare path is named after its file stem.

    A path may end in ``?key=value&...``: backend options for that artifact (see :func:`split_artifact_options`).
    """
    out: list[tuple[str, str]] = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or "?" in name:
            name, path = Path(item.partition("?")[0]).stem or item, item
        if not name or not path:
            raise ConfigError(f"artifact {item!r} must be NAME=PATH (e.g. int8=runs/p/student.int8.onnx)")
        split_artifact_options(path)  # a malformed option fails here, before anything loads
        out.append((name, path))
    return tuple(out)


def split_artifact_options(path: str) -> tuple[str, dict[str, Any]]:
    """``"runs/p?name=teacher&precision=fp16"`` -> ``("runs/p", {"name": "teacher", "precision": "fp16"})``.

    Values ``true/false/yes/no/on/off`` become booleans and numbers become int or float; the backend checks
    the option names (an unknown one is an error naming those it knows).
    """
    base, sep, query = path.partition("?")
    if not sep:
        return path, {}
    opts: dict[str, Any] = {}
    for kv in query.split("&"):
        key, eq, value = kv.partition("=")
        if not key or not eq:
            raise ConfigError(f"artifact option {kv!r} in {path!r} must be KEY=VALUE "
                              "(e.g. runs/p?name=teacher&cuda_graphs=true)")
        opts[key] = option_value(value)
    return base, opts


@dataclass(frozen=True)
class BenchConfig(DictConfig):
    """What to benchmark and which gates to apply.

    Attributes:
        artifacts: ``(name, path)`` pairs; a path is a run directory or stem (torch), card, .safetensors,
            .onnx or TensorRT plan.
        reference: name of the artifact the others are compared with (default: the first).
        data: data spec whose ``split`` holds the held-out cases (real labels).
        split: split to evaluate on.
        batch_sizes: batch sizes to time engine-only; end-to-end is timed per case (batch 1).
        iterations, warmup, warmup_s, duration_s: see :class:`~medfm_compress.bench.latency.LatencyConfig`;
            iterations and duration are totals per (artifact, batch size), split evenly over the rounds.
        rounds: engine-only latency is measured in this many rounds, each timing every artifact and batch
            size in turn (interleaved), so machine load that drifts during the run hits all of them alike.
        threads: intra-op threads for every engine (None: all cores).
        device: engine device (None: each backend's default, CPU).
        backend: force one backend for every artifact (None: chosen from each path).
        eval_batch_size: batch size used to compute logits on the split.
        sw_batch_size, sw_overlap: volumes (3-D segmentation data): the sliding window's windows per engine call and
            overlap, for the scores on whole cases and the end-to-end time per volume.
        n_resamples, seed: paired bootstrap settings.
        max_auc_drop: non-inferiority margin in AUC percentage points: the upper 95% CI bound of the
            reference-minus-artifact macro AUC drop must be below it.
        max_dice_drop: the same for segmentation, in mean-Dice points (100 x Dice): the upper 95% CI bound of the
            reference-minus-artifact mean Dice drop (paired bootstrap over cases) must be below it.
        max_mae_increase: the same for regression, in the target's units: the upper 95% CI bound of the
            artifact-minus-reference mean absolute error must be below it.
        min_agreement: minimum top-1 agreement with the reference (0-1; segmentation: pixel agreement).
        min_speedup: minimum reference p50 / artifact p50, engine-only at batch 1 (or the smallest batch).
        max_p50_ms: maximum engine-only p50 at that batch.
        max_size_mb: maximum artifact size in MB (1e6 bytes).
        gate_on: names of the artifacts the gates judge (None: all of them); the others are measured and
            reported only. Absolute gates (max_p50_ms, max_size_mb) judge each of these, the reference included;
            relative gates (max_auc_drop, min_agreement, min_speedup) judge each but the reference. A gate left
            with nothing to judge is a usage error, never a pass.
        out: directory to write report.json/report.md/junit.xml/pareto.png (None: write nothing).
        progress: show a progress bar.
        force: benchmark an artifact whose hash differs from its run directory's manifest (warns).
    """

    artifacts: tuple[tuple[str, str], ...]
    reference: str | None = None
    data: str = "synthetic"
    split: str = "test"
    batch_sizes: tuple[int, ...] = (1,)
    iterations: int = 100
    warmup: int = 10
    warmup_s: float = 0.0
    duration_s: float | None = None
    rounds: int = 5
    threads: int | None = None
    device: str | None = None
    backend: str | None = None
    eval_batch_size: int = 32
    sw_batch_size: int = 4
    sw_overlap: float = 0.25
    n_resamples: int = 1000
    seed: int = 0
    max_auc_drop: float | None = None
    max_dice_drop: float | None = None
    max_mae_increase: float | None = None
    min_agreement: float | None = None
    min_speedup: float | None = None
    max_p50_ms: float | None = None
    max_size_mb: float | None = None
    gate_on: tuple[str, ...] | None = None
    out: str | None = None
    progress: bool = True
    force: bool = False

    def __post_init__(self):
        if not self.artifacts:
            raise ConfigError("give at least one artifact as NAME=PATH")
        names = [n for n, _ in self.artifacts]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"artifact name(s) {', '.join(dup)} given twice; names must be unique")
        if self.reference is not None and self.reference not in names:
            raise ConfigError(f"--reference {self.reference!r} is not one of the artifacts ({', '.join(names)})")
        unknown = sorted(set(self.gate_on or ()) - set(names))
        if unknown:
            raise ConfigError(f"--gate-on names {', '.join(unknown)}, which are not artifacts ({', '.join(names)})")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch sizes must be >= 1, got {self.batch_sizes}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if self.sw_batch_size < 1 or not 0.0 <= self.sw_overlap < 1.0:
            raise ConfigError(f"sw_batch_size must be >= 1 and sw_overlap in [0, 1), got {self.sw_batch_size} and "
                              f"{self.sw_overlap}")
        if self.eval_batch_size < 1 or self.n_resamples < 1:
            raise ConfigError("eval batch size and bootstrap resamples must be >= 1")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"--min-agreement is a fraction in [0, 1], got {self.min_agreement}")
        LatencyConfig(self.iterations, self.warmup, self.warmup_s, self.duration_s)  # validates
        for gate in self.given_gates():
            if not self.judged_by(gate):
                judged = f"--gate-on {','.join(self.gate_on)}" if self.gate_on is not None else "the artifacts given"
                raise UsageError(
                    f"--{gate.replace('_', '-')} compares artifacts with the reference {self.reference_name!r}, but "
                    f"{judged} leave(s) nothing else to judge; add an artifact to compare, or drop the gate"
                )

    @property
    def reference_name(self) -> str:
        return self.reference or self.artifacts[0][0]

    def given_gates(self) -> list[str]:
        return [g for g in (*RELATIVE_GATES, *ABSOLUTE_GATES) if getattr(self, g) is not None]

    def judged_by(self, gate: str) -> list[str]:
        """Names of the artifacts ``gate`` judges: the ``gate_on`` ones (default all), less the reference for a
        gate that compares with it."""
        names = [n for n, _ in self.artifacts if self.gate_on is None or n in self.gate_on]
        return [n for n in names if n != self.reference_name] if gate in RELATIVE_GATES else names

    @property
    def latency(self) -> LatencyConfig:
        return LatencyConfig(self.iterations, self.warmup, self.warmup_s, self.duration_s)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="bench", unit="step", disable=not enabled, leave=False)


def _check_windowed(name: str, pre, data, spec: str) -> None:
    """Refuse, in one line, a segmentation artifact that would not segment the data's cases the way predict does:
    a 2-D model on volumes (or the reverse), a model trained on patches on data of whole images resized (or the
    reverse)."""
    if data.volumes != pre.is_volume:
        raise DataError(f"artifact '{name}' takes {'volumes' if pre.is_volume else '2-D images'}, but {spec} holds "
                        f"{'volumes' if data.volumes else '2-D images'}: bench it on data of its kind")
    if not data.volumes and data.whole_cases != pre.tiles:
        size = "x".join(str(v) for v in pre.input_size)
        raise DataError(
            f"artifact '{name}' was trained on {size} patches at the images' own resolution, but {spec} resizes whole "
            f"images: add ?patch={size.replace('x', ',')} to the data spec" if pre.tiles else
            f"artifact '{name}' takes images resized to {size}, but {spec} holds whole images for a model trained on "
            f"patches: drop ?patch= from the data spec")


def _latency_inputs(engine, images: np.ndarray, batch: int) -> np.ndarray:
    """A preprocessed batch of real cases (repeated when the split is smaller than the batch)."""
    idx = np.arange(batch) % len(images)
    return engine.preprocess(images[idx])


def _artifact_files(path: str, options: dict[str, Any]) -> list[Path]:
    """The files an artifact path is read from (a run directory's model, a card's weights, an IR's .bin)."""
    p = Path(path)
    if p.is_dir():
        name = options.get("name", "student")
        return [RunLayout(p).weights(name), RunLayout(p).card(name)]
    if not p.exists() or p.suffix.lower() == ".json":
        return [p.with_suffix(".json"), p.with_suffix(".safetensors")]
    if p.suffix.lower() == ".xml":
        return [p, p.with_suffix(".bin")]
    return [p]


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Benchmark every artifact, compare each with the reference, evaluate the gates, write the reports.

    Returns the report dict (see :mod:`medfm_compress.bench.report`); ``report["passed"]`` says whether every
    gate held. Raises :class:`~medfm_compress.errors.MedfmError` for bad input (nothing is written then).
    """
    from ..data import load_data
    from ..data.dataset import require_task
    from ..runtime import Engine
    from .parity import (
        check_data_matches,
        evaluate,
        parity,
        predict_logits,
        predict_whole_logits,
        reference_thresholds,
    )
    from .report import SCHEMA_VERSION, write_reports

    task_data = load_data(cfg.data)
    require_task(task_data, task_names(), "bench")
    split = task_data.split(cfg.split)
    task = get_task(task_data.task)
    if task.label_rank is not None and split.labels.ndim != task.label_rank:
        raise DataError(f"{cfg.data}: the {cfg.split} split has no class labels to score against")
    for gate in drop_gates():
        if getattr(cfg, gate) is not None and gate != task.drop_gate:
            judges = models_where(lambda t, g=gate: t.drop_gate == g)
            raise UsageError(f"--{gate.replace('_', '-')} judges {judges}, but {cfg.data} is a {task.name} task"
                             + (f": use --{task.drop_gate.replace('_', '-')} POINTS" if task.drop_gate else ""))
    whole = task.dense and task_data.whole_cases
    spacing = None
    if whole:  # whole cases, scored as predict segments them (sliding windows); HD95 in mm for volumes
        from ..data.patches import case_shapes

        shapes = case_shapes(task_data, cfg.split)
        if task_data.volumes:
            spacing = task_data.spacing_mm or (1.0, 1.0, 1.0)
    ref_name = cfg.reference_name
    order = [(n, p) for n, p in cfg.artifacts if n == ref_name] + [(n, p) for n, p in cfg.artifacts if n != ref_name]
    # Cheap checks first, so a bad invocation fails before any progress output or model loading.
    if cfg.backend is not None:
        from ..runtime import get_backend

        get_backend(cfg.backend)
    for name, path in order:
        p = Path(split_artifact_options(path)[0])
        if not p.exists() and not p.with_suffix(".json").exists():
            raise MedfmError(f"artifact '{name}': {p} does not exist; check the NAME=PATH argument")
    from ..manifest import check_inputs

    for _, path in order:
        check_inputs(_artifact_files(*split_artifact_options(path)), cfg.force)
    steps_per = 1 + len(cfg.batch_sizes) + 1
    bar = _progress(len(order) * steps_per, cfg.progress)
    lat_cfg = cfg.latency
    entries: list[dict[str, Any]] = []
    ref_logits = thresholds = None
    try:
        with contextlib.ExitStack() as stack:
            # Phase 1: load every artifact and score it on the split; the engines stay open for the timing.
            engines: dict[str, Any] = {}
            for name, path in order:
                bar.set_postfix_str(name)
                file, options = split_artifact_options(path)
                eng = stack.enter_context(Engine.load(file, backend=cfg.backend, device=cfg.device,
                                                      threads=cfg.threads, **options))
                engines[name] = eng
                check_data_matches(name, eng, task_data.task, task_data.num_classes, task_data.channels)
                if task.dense:
                    _check_windowed(name, eng.meta.preprocess, task_data, cfg.data)
                if whole:
                    logits = predict_whole_logits(eng, split.images, shapes, cfg.sw_batch_size, cfg.sw_overlap)
                else:
                    logits = predict_logits(eng, split.images, cfg.eval_batch_size)
                bar.update(1)
                if ref_logits is None:
                    ref_logits = logits
                    thresholds = reference_thresholds(logits, split.labels, task_data.task)
                metrics = evaluate(logits, split.labels, task_data.task, task_data.label_names, thresholds,
                                   spacing=spacing)
                par = parity(ref_logits, logits, split.labels, task_data.task, thresholds, cfg.n_resamples, cfg.seed)
                for m, d in par["deltas"].items():
                    if m in metrics:
                        metrics[f"{m}_ci"] = [d["test_ci_low"], d["test_ci_high"]]
                info = eng.info
                entries.append({
                    "name": name,
                    "path": file,
                    "options": options,
                    "reference": name == ref_name,
                    **{k: info.get(k) for k in ("sha256", "backend", "precision", "device", "threads", "params",
                                                "size_bytes")},
                    "file": info.get("path"),
                    "backend_info": {k: v for k, v in info.items()
                                     if k not in ("sha256", "backend", "precision", "device", "threads", "params",
                                                  "size_bytes", "path")},
                    "latency": {},
                    "end_to_end": None,
                    "metrics": metrics,
                    "parity": None if name == ref_name else par,
                    "self_check": par["deltas"] if name == ref_name else None,
                })
            # Phase 2: engine-only latency, every (artifact, batch size) timed in turn in each of cfg.rounds
            # rounds, so load that drifts over the run hits every artifact alike.
            by_name = {e["name"]: e for e in entries}
            timed: dict[tuple[str, int], tuple[Any, np.ndarray]] = {}
            for name, eng in engines.items():
                lo, hi = eng.batch_range
                for b in cfg.batch_sizes:
                    if b < lo or (hi is not None and b > hi):
                        by_name[name]["latency"][str(b)] = {"skipped": f"artifact accepts batch sizes {lo}..{hi}"}
                        bar.update(1)
                    else:
                        timed[(name, b)] = (eng, _latency_inputs(eng, split.images, b))
            bar.set_postfix_str(f"latency, {cfg.rounds} round(s)")
            for (name, b), stats in measure_engines(timed, lat_cfg, cfg.rounds,
                                                    on_done=lambda _key: bar.update(1)).items():
                by_name[name]["latency"][str(b)] = {"engine": stats}
            # Phase 3: end-to-end per case (batch 1), artifact by artifact.
            for name, eng in engines.items():
                bar.set_postfix_str(f"{name} end-to-end")
                if whole and task_data.volumes:
                    by_name[name]["end_to_end"] = measure_volume_end_to_end(
                        eng, split.images, shapes, spacing, cfg.sw_batch_size, cfg.sw_overlap,
                        runs=max(3, min(cfg.iterations, 8)))
                elif whole:  # 2-D images by sliding windows, each at its own size
                    by_name[name]["end_to_end"] = measure_end_to_end(eng, split.images, lat_cfg, shapes,
                                                                     cfg.sw_batch_size, cfg.sw_overlap)
                elif eng.batch_range[0] == 1:
                    by_name[name]["end_to_end"] = measure_end_to_end(eng, split.images, lat_cfg)
                bar.update(1)
    finally:
        bar.close()
    entries.sort(key=lambda e: [n for n, _ in cfg.artifacts].index(e["name"]))
    gates = evaluate_gates(cfg, entries, task)
    report = {
        "schema_version": SCHEMA_VERSION,
        "tool": "medfm-compress bench",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": _fingerprint(),
        "config": cfg.to_dict() | {"artifacts": [list(a) for a in cfg.artifacts]},
        "data": {"spec": cfg.data, "split": cfg.split, "n": len(split), "task": task_data.task,
                 "label_names": list(task_data.label_names),
                 **({"volumes": True, "spacing_mm": list(spacing)} if whole and task_data.volumes else {}),
                 **({"case_shapes": [list(v) for v in shapes]} if whole else {})},
        "reference": ref_name,
        "artifacts": entries,
        "gates": gates,
        "passed": all(g["passed"] for g in gates),
    }
    if cfg.out:
        write_reports(report, cfg.out)
    return report


def _fingerprint() -> dict[str, Any]:
    from .._env import fingerprint

    return dict(fingerprint())


def _gate_batch(entry: dict) -> str | None:
    """The batch size gates use: 1 if measured, else the smallest measured batch."""
    measured = sorted((int(b) for b, v in entry["latency"].items() if "engine" in v))
    return str(measured[0]) if measured else None


def _p50(entry: dict, batch: str | None) -> float | None:
    if batch is None or "engine" not in entry["latency"].get(batch, {}):
        return None
    return entry["latency"][batch]["engine"]["p50_ms"]


def evaluate_gates(cfg: BenchConfig, entries: list[dict], task) -> list[dict]:
    """One record per (gate, judged artifact): name, artifact, value, threshold, passed (see
    :meth:`BenchConfig.judged_by` for which artifacts each gate judges); ``task`` (a name or a task) says which drop
    gate applies and what agreement means."""
    task = get_task(task)
    ref = next(e for e in entries if e["reference"])
    gates: list[dict] = []

    def add(kind: str, entry: dict, value, threshold, passed: bool, detail: str):
        gates.append({"name": f"{kind}[{entry['name']}]", "gate": kind, "artifact": entry["name"],
                      "value": value, "threshold": threshold, "passed": bool(passed), "detail": detail})

    judged = {gate: set(cfg.judged_by(gate)) for gate in cfg.given_gates()}
    for e in entries:
        if task.drop_gate is not None and e["name"] in judged.get(task.drop_gate, ()):
            # How much worse than the reference, at the upper 95% CI bound of the paired bootstrap.
            upper = loss_upper_bound(task, e["parity"]["deltas"][task.headline_metric])
            threshold = getattr(cfg, task.drop_gate)
            add(task.drop_gate, e, upper, threshold, upper is not None and upper < threshold, task.drop_detail)
        if e["name"] in judged.get("min_agreement", ()):
            v = e["parity"]["top1_agreement"]
            add("min_agreement", e, v, cfg.min_agreement, v is not None and v >= cfg.min_agreement,
                task.agreement_text)
        b = _gate_batch(e)
        if e["name"] in judged.get("min_speedup", ()):
            rp, ep = _p50(ref, b), _p50(e, b)
            v = rp / ep if rp and ep else None
            add("min_speedup", e, v, cfg.min_speedup, v is not None and v >= cfg.min_speedup,
                f"reference p50 / artifact p50, engine-only, batch {b}")
        if e["name"] in judged.get("max_p50_ms", ()):
            v = _p50(e, b)
            add("max_p50_ms", e, v, cfg.max_p50_ms, v is not None and v <= cfg.max_p50_ms,
                f"engine-only p50 at batch {b} (ms)")
        if e["name"] in judged.get("max_size_mb", ()):
            v = e["size_bytes"] / 1e6
            add("max_size_mb", e, v, cfg.max_size_mb, v <= cfg.max_size_mb, "artifact size (MB)")
    return gates
