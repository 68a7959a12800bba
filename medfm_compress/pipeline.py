"""The whole chain from one recipe: distill -> export -> quantize -> TensorRT engines -> benchmark.

A recipe (YAML, parsed with the safe loader) names the data, the distillation, the quantized variants, the
engines and the benchmark gates. Each stage's outputs are cached by the hash of its config and of the files it
reads: a re-run skips what has not changed and says so; a stage interrupted (even by ``kill -9``) has no
cache entry and is redone. ``pipeline.json`` in the run directory holds the cache entries; ``manifest.json``
holds every stage's record.

Recipe keys (see the shipped ``medfm_compress/recipes/*.yaml``, runnable by name: ``medfm-compress run demo``)::

    version: 1
    name: demo
    out: runs/demo            # run directory
    data: synthetic           # data spec for training, calibration and the benchmark
    seed: 0
    distill: {...}            # DistillConfig fields (not data/out/seed); a foundation teacher (teacher: astra-ct)
                              # is a package, not an artifact of the run: there is no teacher to bench
    export: {...}             # ExportConfig fields (not source/out); null skips export and everything after
    quantize: [{name, ...}]   # QuantizeConfig options per variant (not input/out); calib_data defaults to data;
                              # a target: cpu, precision: auto variant may set format: onnx (default) | openvino |
                              # any (ONNX Runtime and OpenVINO candidates compete: student.<name>.onnx or .xml)
    tensorrt: [{name, source, ...}]  # TensorRTConfig fields per engine; source: 'fp32' or a quantize variant
    bench: {...}              # BenchConfig fields (not artifacts/data/out); null skips the benchmark
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from ._io import atomic_write_json, ensure_dir, sha256_file
from ._registry import Registry
from .errors import ConfigError, MedfmError
from .layout import RunLayout

__all__ = ["Recipe", "load_recipe", "resolve_recipe", "run_pipeline", "DEMOS", "demo_recipe", "packaged_recipes",
           "STAGES", "PipelineResult", "demo_summary"]

RECIPE_VERSION = 1


@dataclass(frozen=True)
class Stage:
    """One kind of pipeline stage: how the pipeline plans, validates and runs it.

    Attributes:
        kind: its recipe key (``distill``, ``export``...).
        config: the name of its config class (``module:Class``, imported when a recipe is checked).
        owned: the config fields the pipeline sets itself (a recipe must not).
        typical_s: its typical duration on a 2-core CPU, for the ETA before a run has its own history.
        plan: ``plan(recipe, layout)``: the units of work of this kind the recipe asks for (``StageSpec``: config,
            the files read, the files written), none where the recipe has no such section.
        run: ``run(spec, recipe, run_dir, progress, engines, force)`` runs one planned stage of this kind.
    """

    kind: str
    config: str
    owned: frozenset[str]
    typical_s: float
    plan: Any
    run: Any

    def config_class(self) -> type:
        import importlib

        module, name = self.config.split(":")
        return getattr(importlib.import_module(module, __package__), name)

# The recipes that ship with the package (medfm_compress/recipes/*.yaml), by name: `medfm-compress run NAME`.
RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
# `medfm-compress demo --task T` runs DEMOS[T], on the embedded synthetic data.
DEMOS = {"classification": "demo", "segmentation": "segmentation-2d", "segmentation-3d": "segmentation-3d"}


def packaged_recipes() -> dict[str, Path]:
    """The shipped recipes by name (the file's stem)."""
    return {p.stem: p for p in sorted(RECIPE_DIR.glob("*.yaml"))}


def demo_recipe(demo: str) -> dict[str, Any]:
    """The raw recipe (a dict, as in its YAML file) of ``medfm-compress demo --task demo``."""
    if demo not in DEMOS:
        raise ConfigError(f"unknown demo {demo!r}; choose one of {', '.join(DEMOS)}")
    return _read_yaml(packaged_recipes()[DEMOS[demo]])


@dataclass
class Recipe:
    """A resolved recipe: every stage section holds every field of its config."""

    name: str
    out: str
    data: str
    seed: int
    distill: dict[str, Any]
    export: dict[str, Any] | None
    quantize: list[dict[str, Any]]
    tensorrt: list[dict[str, Any]]
    bench: dict[str, Any] | None
    version: int = RECIPE_VERSION

    @property
    def teacher_in_run(self) -> bool:
        """Whether the distill stage writes its teacher into the run directory (a foundation encoder from a package,
        ``teacher: astra-ct``, is not copied there)."""
        return _teacher_in_run(self.distill)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "name": self.name, "out": self.out, "data": self.data, "seed": self.seed,
                "distill": self.distill, "export": self.export, "quantize": self.quantize, "tensorrt": self.tensorrt,
                "bench": self.bench}


def _teacher_in_run(raw_distill: Any) -> bool:
    """Whether a distill section's teacher source writes the teacher into the run directory."""
    from .compress.distill import DistillConfig
    from .compress.teachers import teacher_source
    from .config import config_from_dict

    if not isinstance(raw_distill, dict):
        return True
    try:
        known = set(DistillConfig.option_names())
        cfg = config_from_dict(DistillConfig, {k: v for k, v in raw_distill.items() if k in known}, "distill")
        return teacher_source(cfg).writes_artifact()
    except MedfmError:  # a section that does not validate is reported where it is checked
        return True


def _unknown(key: str, valid, where: str) -> ConfigError:
    near = difflib.get_close_matches(key, list(valid), n=1)
    hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown key '{key}' in {where}{hint}")


def _section(stage: str, raw: Any, where: str, extra: dict[str, Any], named: bool = False) -> dict[str, Any]:
    """Validate one stage section against its config class; return all its fields (defaults filled)."""
    from .config import config_from_dict

    cls = _STAGES.get(stage).config_class()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    name = None
    source = None
    fmt = raw.pop("format", None) if stage == "quantize" else None
    if named:
        name = raw.pop("name", None)
        if not isinstance(name, str) or not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{where} needs a 'name' made of letters, digits, '-' and '_'")
        if stage == "tensorrt":
            source = raw.pop("source", "fp32")
            if not isinstance(source, str):
                raise ConfigError(f"{where}.source must be 'fp32' or the name of a quantize variant")
    owned = _STAGES.get(stage).owned
    valid = [name for name in cls.option_names() if name not in owned]
    for key in raw:
        if key in owned:
            raise ConfigError(f"{where}.{key} is set by the pipeline; remove it from the recipe")
        if key not in valid:
            raise _unknown(key, valid + (["name"] if named else []) + (["source"] if stage == "tensorrt" else [])
                           + (["format"] if stage == "quantize" else []), where)
    cfg = config_from_dict(cls, {**extra, **raw}, f"{where} ('{name}')" if named else where)
    if fmt is not None:
        if fmt not in VARIANT_FORMATS:
            raise ConfigError(f"{where}.format must be one of {', '.join(VARIANT_FORMATS)}, got {fmt!r}")
        if (cfg.target, cfg.precision) != ("cpu", "auto"):
            raise ConfigError(f"{where}.format chooses the engines of a target: cpu, precision: auto variant; "
                              f"target {cfg.target} with precision {cfg.precision} writes "
                              f"{_config_target_suffix(cfg.target)} files: remove format")
    out = {k: v for k, v in cfg.to_options().items() if k not in owned}
    if named:
        out = {"name": name, **({"source": source} if stage == "tensorrt" else {}),
               **({"format": fmt} if fmt is not None else {}), **out}
    return out


# What a cpu auto variant may write: an ONNX model (ONNX Runtime candidates), an OpenVINO IR, or whichever wins.
VARIANT_FORMATS = ("onnx", "openvino", "any")


def _config_target_suffix(target: str) -> str:
    from .compress.quantize import get_target

    return get_target(target).suffix


def _check_variant(variant: dict[str, Any], source: str, where: str) -> None:
    """A quantize variant its target can run: its precision and method, and no option the target would ignore
    (caught here, before distillation, not in the quantize stage an hour later)."""
    from .compress.quantize import QuantizeConfig, get_target
    from .config import config_from_dict

    cfg = config_from_dict(QuantizeConfig, {**{k: v for k, v in variant.items() if k not in ("name", "format")},
                                            "input": source}, where)
    try:
        get_target(cfg.target).check_config(cfg)
    except ConfigError as e:
        raise ConfigError(f"{where} ('{variant['name']}'): {e}") from None


def resolve_recipe(raw: dict[str, Any], where: str = "recipe") -> Recipe:
    """Check a recipe mapping and fill every default; unknown keys are errors naming the nearest valid key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a YAML mapping")
    for key in raw:
        top = ("version", "name", "out", "data", "seed", *STAGES)
        if key not in top:
            raise _unknown(key, top, where)
    if raw.get("version", RECIPE_VERSION) != RECIPE_VERSION:
        raise ConfigError(f"{where} has version {raw.get('version')!r}; this tool reads version {RECIPE_VERSION}")
    for key, typ in (("name", str), ("out", str), ("data", str), ("seed", int)):
        if key in raw and (not isinstance(raw[key], typ) or isinstance(raw[key], bool)):
            raise ConfigError(f"{where}.{key} must be a {typ.__name__}, got {raw[key]!r}")
    data = raw.get("data", "synthetic")
    seed = raw.get("seed", 0)
    out = raw.get("out") or f"runs/{raw.get('name', 'recipe')}"
    placeholder = {"source": out, "input": out, "onnx": "x.onnx"}
    distill = _section("distill", raw.get("distill") or {}, f"{where}.distill", {"data": data, "out": out, "seed": seed})
    export = (None if "export" in raw and raw["export"] is None
              else _section("export", raw.get("export") or {}, f"{where}.export", {"source": placeholder["source"]}))
    variants = raw.get("quantize") or []
    if not isinstance(variants, list):
        raise ConfigError(f"{where}.quantize must be a list of variants")
    quantize = [_section("quantize", v, f"{where}.quantize[{i}]", {"input": placeholder["input"]}, named=True)
                for i, v in enumerate(variants)]
    for i, q in enumerate(quantize):
        if q.get("calib_data") is None:
            q["calib_data"] = data
        _check_variant(q, placeholder["input"], f"{where}.quantize[{i}]")
    engines = raw.get("tensorrt") or []
    if not isinstance(engines, list):
        raise ConfigError(f"{where}.tensorrt must be a list of engines")
    tensorrt = [_section("tensorrt", v, f"{where}.tensorrt[{i}]", {"onnx": placeholder["onnx"], "out": "x.engine"},
                         named=True) for i, v in enumerate(engines)]
    names = [v["name"] for v in quantize] + [e["name"] for e in tensorrt]
    dup = {n for n in names if names.count(n) > 1 and [v["name"] for v in quantize].count(n) > 1}
    if dup:
        raise ConfigError(f"{where}: quantize variant names must be unique (repeated: {', '.join(sorted(dup))})")
    qnames = {v["name"] for v in quantize}
    onnx_variants = {v["name"] for v in quantize if v["target"] != "openvino" and v.get("format", "onnx") == "onnx"}
    for e in tensorrt:
        if e["source"] != "fp32" and e["source"] not in qnames:
            raise ConfigError(f"{where}.tensorrt '{e['name']}': source '{e['source']}' is neither 'fp32' nor a quantize "
                              f"variant ({', '.join(sorted(qnames)) or 'none defined'})")
        if e["source"] != "fp32" and e["source"] not in onnx_variants:
            raise ConfigError(f"{where}.tensorrt '{e['name']}': source '{e['source']}' is (or may be) an OpenVINO IR; "
                              "TensorRT builds from ONNX: use 'fp32' or a tensorrt/cpu quantize variant without format")
    if (quantize or tensorrt) and export is None:
        raise ConfigError(f"{where}: quantize/tensorrt need the exported ONNX; do not set export: null")
    bench = None
    if not ("bench" in raw and raw["bench"] is None):
        braw = raw.get("bench") or {}
        # Validate against the names the bench stage will give its artifacts (engines only run on GPUs).
        names = [*(["teacher"] if _teacher_in_run(distill) else []), *(["baseline"] if distill.get("baseline") else []), "student-fp32",
                 *(f"student-{q['name']}" for q in quantize if q["target"] != "tensorrt"),
                 *(f"student-{e['name']}" for e in tensorrt)]
        bench = _section("bench", braw, f"{where}.bench", {"artifacts": tuple((n, "x") for n in dict.fromkeys(names)),
                                                           "data": data})
    return Recipe(name=raw.get("name", "recipe"), out=out, data=data, seed=seed, distill=distill, export=export,
                  quantize=quantize, tensorrt=tensorrt, bench=bench)


def load_recipe(path: str | Path) -> Recipe:
    """Read and resolve a YAML recipe (safe loader: no Python objects): a file, or the name of a shipped recipe
    (:func:`packaged_recipes`)."""
    p = Path(path)
    if not p.exists() and str(path) in packaged_recipes():
        p = packaged_recipes()[str(path)]
    return resolve_recipe(_read_yaml(p), where=str(p))


def _read_yaml(p: Path) -> dict[str, Any]:
    import yaml

    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"recipe {p} does not exist; give a recipe file or the name of a shipped one "
                          f"({', '.join(packaged_recipes())})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe {p} cannot be read ({e})") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"recipe {p} is not valid YAML ({first})") from None
    return raw if raw is not None else {}


# ---------------------------------------------------------------------------------------------------------
# Running


@dataclass
class StageSpec:
    """One unit of work: an id, the stage kind, its config, the files it reads and will write."""

    id: str
    kind: str
    config: dict[str, Any]
    reads: list[Path]
    writes: dict[str, Path]


@dataclass
class PipelineResult:
    run_dir: Path
    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    report: dict[str, Any] | None = None
    report_files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


def _distill_outputs(recipe: Recipe, layout: RunLayout) -> dict[str, Path]:
    out = {"student_weights": layout.weights("student"), "student_card": layout.card("student")}
    if recipe.teacher_in_run:  # a foundation teacher is a pip-installed package, not an artifact of the run
        out |= {"teacher_weights": layout.weights("teacher"), "teacher_card": layout.card("teacher")}
    out["metrics"] = layout.metrics
    if recipe.distill.get("baseline"):
        out |= {"baseline_weights": layout.weights("baseline"), "baseline_card": layout.card("baseline")}
    return out


def _plan_distill(recipe: Recipe, layout: RunLayout) -> list[StageSpec]:
    reads = [Path(recipe.distill["teacher_weights"])] if recipe.distill.get("teacher_weights") else []
    return [StageSpec("distill", "distill", {"data": recipe.data, "seed": recipe.seed, **recipe.distill}, reads,
                      _distill_outputs(recipe, layout))]


def _plan_export(recipe: Recipe, layout: RunLayout) -> list[StageSpec]:
    if recipe.export is None:
        return []
    return [StageSpec("export", "export", recipe.export, [layout.weights("student"), layout.card("student")],
                      {"onnx": layout.onnx})]


def _plan_quantize(recipe: Recipe, layout: RunLayout) -> list[StageSpec]:
    out = []
    for q in recipe.quantize:
        path = _variant_path(layout.root, q)
        reads = [layout.onnx]
        if q.get("method") == "qat" and recipe.teacher_in_run:
            reads += [layout.weights("student"), layout.weights("teacher")]
        writes = {"model": path, **({"weights": path.with_suffix(".bin")} if path.suffix == ".xml" else {})}
        out.append(StageSpec(f"quantize:{q['name']}", "quantize", q, reads, writes))
    return out


def _plan_tensorrt(recipe: Recipe, layout: RunLayout) -> list[StageSpec]:
    variants = {q["name"]: q for q in recipe.quantize}
    out = []
    for e in recipe.tensorrt:
        src = layout.onnx if e["source"] == "fp32" else _variant_path(layout.root, variants[e["source"]])
        path = layout.engine(e["name"])
        out.append(StageSpec(f"tensorrt:{e['name']}", "tensorrt", e, [src],
                             {"engine": path, "sidecar": path.with_name(path.name + ".json")}))
    return out


def _plan_bench(recipe: Recipe, layout: RunLayout) -> list[StageSpec]:
    if recipe.bench is None or recipe.export is None:  # bench compares the exported student with the others
        return []
    reads = [*([layout.weights("teacher")] if recipe.teacher_in_run else []), layout.onnx,
             *(_variant_path(layout.root, q) for q in recipe.quantize)]
    if recipe.distill.get("baseline"):
        reads.append(layout.weights("baseline"))
    return [StageSpec("bench", "bench", recipe.bench, reads, {"report": layout.report})]


def _plan(recipe: Recipe, run_dir: Path) -> list[StageSpec]:
    """Every unit of work of the recipe, in order: each registered stage plans its own."""
    layout = RunLayout(run_dir)
    return [spec for stage in _STAGES for spec in stage.plan(recipe, layout)]


def _cache_key(spec: StageSpec) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"id": spec.id, "config": spec.config, "tool": __version__}, sort_keys=True, default=str).encode())
    for p in spec.reads:
        h.update(str(p.name).encode())
        h.update(sha256_file(p).encode() if p.is_file() else b"missing")
    return h.hexdigest()


def _cached(state: dict, spec: StageSpec, key: str) -> bool:
    entry = state.get(spec.id)
    if not entry or entry.get("key") != key:
        return False
    for name, path in spec.writes.items():
        rec = entry.get("outputs", {}).get(name)
        if rec is None or not path.is_file() or sha256_file(path) != rec:
            return False
    return True


def _gpu_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False


def _variant_stem(run_dir: Path, variant: dict[str, Any]) -> Path:
    return RunLayout(run_dir).variant_stem(variant["name"])


def _variant_path(run_dir: Path, variant: dict[str, Any]) -> Path:
    """Where a quantize variant's model goes: the file type its target writes (.onnx, or .xml for openvino). A
    ``format: any`` variant writes the winner's type, so its path is the file its stage wrote (``.onnx`` before)."""
    stem = _variant_stem(run_dir, variant)
    fmt = variant.get("format")
    if fmt == "any":
        xml = stem.with_name(stem.name + ".xml")
        return xml if xml.is_file() else stem.with_name(stem.name + ".onnx")
    suffix = ".xml" if fmt == "openvino" else _config_target_suffix(variant["target"])
    return stem.with_name(stem.name + suffix)


def _batch_artifacts(run_dir: Path, variant: dict[str, Any]) -> list[tuple[str, str]]:
    """Bench artifacts for a ``precision: auto`` variant with ``batch_sizes``: each batch size whose recommended
    artifact or run settings (``streams``) differ from the variant's own model, as ``student-<name>-bs<N>``."""
    if not variant.get("batch_sizes") or len(variant["batch_sizes"]) < 2:
        return []
    from .runtime.onnx_loader import read_meta

    main = _variant_path(run_dir, variant)
    rows = ((read_meta(main).provenance.get("quantization") or {}).get("auto") or {}).get("by_batch") or []
    out: dict[str, str] = {}
    for row in rows:
        if row["artifact"] == main.name and row["streams"] <= 1:
            continue
        path = str(run_dir / row["artifact"]) + (f"?streams={row['streams']}" if row["streams"] > 1 else "")
        if path not in out.values():
            out[f"student-{variant['name']}-bs{row['batch_size']}"] = path
    return list(out.items())


def _stage_config(spec: StageSpec, recipe: Recipe, **owned: Any):
    """The stage's config object: the recipe section plus the fields the pipeline owns."""
    from .config import config_from_dict

    cls = _STAGES.get(spec.kind).config_class()
    cfg_dict = {k: v for k, v in spec.config.items() if k not in ("name", "source", "format")}
    return config_from_dict(cls, {**cfg_dict, **owned}, spec.id)


def _run_distill(spec: StageSpec, recipe: Recipe, run_dir: Path, progress: bool, engines: dict[str, Path],
                 force: bool) -> Any:
    from .compress.distill import distill

    return distill(_stage_config(spec, recipe, out=str(run_dir), progress=progress, force=force))


def _run_export(spec: StageSpec, recipe: Recipe, run_dir: Path, progress: bool, engines: dict[str, Path],
                force: bool) -> Any:
    from .export.onnx import export_onnx

    return export_onnx(_stage_config(spec, recipe, source=str(run_dir), out=str(spec.writes["onnx"]), force=force))


def _run_quantize(spec: StageSpec, recipe: Recipe, run_dir: Path, progress: bool, engines: dict[str, Path],
                  force: bool) -> Any:
    from .compress.quantize import quantize

    src = str(run_dir) if spec.config.get("method") == "qat" else str(spec.reads[0])
    any_engine = spec.config.get("format") == "any"
    # format: any gives quantize a stem, which the winner's suffix completes (.onnx or .xml).
    out = _variant_stem(run_dir, spec.config) if any_engine else spec.writes["model"]
    res = quantize(_stage_config(spec, recipe, input=src, out=str(out), progress=progress, force=force))
    if any_engine:
        # The other kind's file from an earlier run would be taken for this variant's model: it goes.
        keep = {res.path, *([res.path.with_suffix(".bin")] if res.path.suffix == ".xml" else [])}
        for suffix in (".onnx", ".xml", ".bin"):
            stale = out.with_name(out.name + suffix)
            if stale not in keep and stale.is_file():
                stale.unlink()
    return res


def _run_tensorrt(spec: StageSpec, recipe: Recipe, run_dir: Path, progress: bool, engines: dict[str, Path],
                  force: bool) -> Any:
    from .export.tensorrt import build_engine

    cfg = _stage_config(spec, recipe, onnx=str(spec.reads[0]), out=str(spec.writes["engine"]), force=force)
    return build_engine(cfg, progress=progress)


def _run_bench(spec: StageSpec, recipe: Recipe, run_dir: Path, progress: bool, engines: dict[str, Path],
               force: bool) -> Any:
    from .bench.harness import run_bench
    from .bench.report import write_reports

    layout = RunLayout(run_dir)
    artifacts = [("teacher", str(layout.model("teacher")))] if recipe.teacher_in_run else []
    if recipe.distill.get("baseline"):
        artifacts.append(("baseline", str(layout.model("baseline"))))
    artifacts.append(("student-fp32", str(layout.onnx)))
    for q in recipe.quantize:
        # QDQ models made for TensorRT are not meant for the CPU runtime; their engines are benched on GPUs.
        if q["target"] != "tensorrt":
            artifacts.append((f"student-{q['name']}", str(_variant_path(run_dir, q))))
            # An auto variant chosen per batch size: the artifacts (or run settings) it names for other batch sizes.
            artifacts += _batch_artifacts(run_dir, q)
    if _gpu_available():
        artifacts += [(f"student-{name}", str(path)) for name, path in engines.items()]
    gate_on = spec.config.get("gate_on")
    if gate_on is not None:
        present = {n for n, _ in artifacts}
        gate_on = [n for n in gate_on if n in present]
    # Data without a test split of its own (volume crops) is benchmarked on its held-out data when the run has it.
    bench_data = recipe.distill.get("eval_data") or recipe.data
    cfg = _stage_config(spec, recipe, artifacts=artifacts, data=bench_data, gate_on=gate_on,
                        out=str(spec.writes["report"].parent), progress=progress, force=force)
    report = run_bench(cfg)
    training = _training_summary(run_dir, recipe)
    if training:
        report["training"] = training
    write_reports(report, spec.writes["report"].parent)
    return report


def _training_summary(run_dir: Path, recipe: Recipe) -> dict[str, Any] | None:
    """What report.md says about how the student was trained: label fraction, teacher / student / label-only
    baseline in the task's score columns, distilled minus baseline with its paired 95% CI, and the distill run's
    warnings."""
    from ._io import read_json
    from .runtime.tasks import get_task

    path = RunLayout(run_dir).metrics
    if not recipe.teacher_in_run or not path.is_file():
        return None
    m = read_json(path, "distill metrics")
    task = get_task(m["task"])
    keep = (*(key for _, key, _ in task.score_columns(m.get("student") or {})), "hd95_unit", "params", "arch")
    out: dict[str, Any] = {"label_fraction": recipe.distill.get("label_fraction", 1.0),
                           "test_size": m.get("test_size"), "task": m.get("task")}
    for role in ("teacher", "student", "baseline"):
        if role in m:
            out[role] = {k: m[role][k] for k in keep if k in m[role]}
    gain = task.shown.gain_key
    for k in ("student_teacher_agreement", f"{gain}_retention", f"distill_gain_{gain}", f"distill_gain_{gain}_ci",
              "warnings"):
        if k in m:
            out[k] = m[k]
    return out


# The stages, registered in the one place, in the order a recipe runs them; each plans and runs its own work.
_STAGES: Registry[Stage] = Registry("pipeline stage")
for _stage in (
    Stage("distill", ".compress.distill:DistillConfig",
          frozenset({"data", "out", "seed", "resume", "progress", "version", "force"}), 300.0, _plan_distill,
          _run_distill),
    Stage("export", ".export.onnx:ExportConfig", frozenset({"source", "out", "force", "version"}), 10.0, _plan_export,
          _run_export),
    Stage("quantize", ".compress.quantize:QuantizeConfig", frozenset({"input", "out", "progress", "force"}), 20.0,
          _plan_quantize, _run_quantize),
    Stage("tensorrt", ".export.tensorrt:TensorRTConfig", frozenset({"onnx", "out", "version", "force"}), 10.0,
          _plan_tensorrt, _run_tensorrt),
    Stage("bench", ".bench.harness:BenchConfig", frozenset({"artifacts", "data", "out", "progress", "force"}), 60.0,
          _plan_bench, _run_bench),
):
    _STAGES.register(_stage.kind, _stage)
del _stage
STAGES = _STAGES.names()
# Stage kind -> the function that runs it.
STAGE_RUNNERS = {s.kind: s.run for s in _STAGES}


def _run_stage(spec: StageSpec, recipe: Recipe, run_dir: Path, progress: bool, engines: dict[str, Path],
               force: bool = False) -> Any:
    return STAGE_RUNNERS[spec.kind](spec, recipe, run_dir, progress, engines, force)


def _fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def run_pipeline(recipe: Recipe, from_stage: str | None = None, only: str | None = None, progress: bool = True,
                 echo=None, force: bool = False) -> PipelineResult:
    """Run ``recipe``'s stages in order, skipping those whose cache entry is still valid.

    Args:
        from_stage: re-run this stage (a kind like ``quantize`` or an id like ``quantize:int8``) and all later ones.
        only: run just this stage (kind or id); its inputs must exist.
        progress: show stage and per-step progress on stderr.
        echo: callable for progress lines (default: click.echo to stderr).
        force: let stages use run-directory files whose hash differs from the manifest (each warns); without
            it a stage refuses them.
    """
    import click

    say = echo or (lambda line: click.echo(line, err=True))
    run_dir = ensure_dir(recipe.out)
    plan = _plan(recipe, run_dir)
    ids = [s.id for s in plan]
    kinds = [s.kind for s in plan]

    def match(name: str | None, what: str) -> int | None:
        if name is None:
            return None
        if name in ids:
            return ids.index(name)
        if name in kinds:
            return kinds.index(name)
        valid = sorted(set(ids) | set(kinds))
        near = difflib.get_close_matches(name, valid, n=1)
        raise ConfigError(f"{what} '{name}' is not a stage of this recipe ({', '.join(valid)})"
                          + (f"; did you mean '{near[0]}'?" if near else ""))

    start = match(from_stage, "--from")
    only_idx = match(only, "--only")
    state_path = RunLayout(run_dir).pipeline_state
    try:
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    except ValueError:
        state = {}  # a damaged cache index only costs a re-run
    result = PipelineResult(run_dir=run_dir)
    t0 = time.time()
    engines: dict[str, Path] = {}
    if only_idx is None:
        selected = list(range(len(plan)))
    elif only in ids:
        selected = [only_idx]
    else:  # a stage kind: every variant of it
        selected = [i for i, s in enumerate(plan) if s.kind == only]
    durations = {s.id: state.get(s.id, {}).get("seconds", _STAGES.get(s.kind).typical_s) for s in plan}
    for n, i in enumerate(selected, start=1):
        spec = plan[i]
        missing = [p for p in spec.reads if not p.is_file()]
        if missing:
            raise MedfmError(f"stage {spec.id} needs {missing[0]}, which does not exist; run the earlier stages first "
                             "(drop --only)")
        key = _cache_key(spec)
        forced = (start is not None and i >= start) or only_idx is not None
        remaining = sum(durations[plan[j].id] for j in selected[n - 1 :])
        if not forced and _cached(state, spec, key):
            result.cached.append(spec.id)
            if progress:
                say(f"[{n}/{len(selected)}] {spec.id}: cached (inputs and config unchanged)")
            if spec.kind == "tensorrt":
                engines[spec.id.split(":", 1)[1]] = spec.writes["engine"]
            if spec.kind == "bench":
                from .bench.report import load_report

                result.report = load_report(spec.writes["report"])
            continue
        if progress:
            say(f"[{n}/{len(selected)}] {spec.id}: running  (elapsed {_fmt_s(time.time() - t0)}, "
                f"ETA ~{_fmt_s(remaining)})")
        # Forget the entry first: an interrupted stage must be redone next time.
        state.pop(spec.id, None)
        atomic_write_json(state_path, state)
        t_stage = time.time()
        out = _run_stage(spec, recipe, run_dir, progress, engines, force)
        # What a stage wrote can decide later paths (a format: any variant's .onnx or .xml): plan again.
        plan = _plan(recipe, run_dir)
        spec = plan[i]
        if spec.kind == "tensorrt":
            engines[spec.id.split(":", 1)[1]] = spec.writes["engine"]
        if spec.kind == "bench":
            result.report = out
        state[spec.id] = {"key": key, "seconds": round(time.time() - t_stage, 1),
                          "outputs": {k: sha256_file(p) for k, p in spec.writes.items() if p.is_file()}}
        atomic_write_json(state_path, state)
        result.ran.append(spec.id)
    if recipe.bench is not None:
        rdir = RunLayout(run_dir).report_dir
        result.report_files = {n: rdir / n for n in ("report.json", "report.md", "junit.xml", "pareto.png")
                               if (rdir / n).exists()}
    result.seconds = round(time.time() - t0, 1)
    return result


def demo_summary(report: dict[str, Any] | None) -> list[str]:
    """The lines the demo ends with: what distillation bought over label-only training at the run's label
    fraction, and what the shipped (first gated) student costs against the reference in latency and AUC
    (segmentation: mean Dice, in points).

    Each difference comes with its 95% CI from the report; a part the report lacks is left out.
    """
    if not report:
        return []
    lines = []
    t = report.get("training") or {}
    from .runtime.tasks import get_task

    name = t.get("task") or (report.get("data") or {}).get("task")
    if name is None:  # not a bench report (its data names the task)
        return lines
    task = get_task(name)
    shown = task.shown
    metric, name, scale, fmt = task.headline_metric, shown.headline, shown.points, shown.points_fmt
    gain = t.get(f"distill_gain_{shown.gain_key}")
    ci = t.get(f"distill_gain_{shown.gain_key}_ci") or [None, None]
    if gain is not None and t.get("student") and t.get("baseline"):
        verdict = ("distillation pays" if ci[0] is not None and ci[0] > 0 else
                   "distillation loses" if ci[1] is not None and ci[1] < 0 else "no significant difference")
        ci_text = f"[{scale * ci[0]:{fmt}}, {scale * ci[1]:{fmt}}]" if None not in ci else "[unknown]"
        teacher = (t.get("teacher") or {}).get(metric)
        what, unit = shown.labels, shown.points_unit
        lines += [f"  {100 * t.get('label_fraction', 1.0):g}% of the training {what}: distilled student {name} "
                  f"{t['student'][metric]:.4f}, label-only baseline {t['baseline'][metric]:.4f} (same "
                  "architecture and steps)" + (f", teacher {teacher:.4f}" if teacher is not None else ""),
                  f"  distilled minus label-only: {scale * gain:{fmt}}{unit}, paired 95% CI {ci_text}: {verdict}"]
    elif t.get("student") and (t.get("teacher") or {}).get(metric) is not None:
        lines.append(f"  {100 * t.get('label_fraction', 1.0):g}% of the training {shown.labels}: "
                     f"distilled student {name} {t['student'][metric]:.4f}, teacher {t['teacher'][metric]:.4f} "
                     "(no label-only baseline: distill's --baseline adds one)")
    arts = {a["name"]: a for a in report.get("artifacts", [])}
    ref = arts.get(report.get("reference"))
    shipped = next((arts[n] for n in (report.get("config") or {}).get("gate_on") or [] if n in arts), None)
    if ref is not None and shipped is not None:

        def p50(a):
            lat = a.get("latency") or {}
            batch = min(lat, key=int) if lat else None
            return (batch, lat[batch]["engine"]["p50_ms"]) if batch is not None else (None, None)

        (batch, ref_ms), (_, ms) = p50(ref), p50(shipped)
        auc = ((shipped.get("parity") or {}).get("deltas") or {}).get(metric) or {}
        parts = []
        if ref_ms and ms:
            parts.append(f"{ref_ms / ms:.0f}x faster at batch {batch} (engine p50 {ms:.3f} vs {ref_ms:.2f} ms, "
                         f"{shipped.get('threads')} thread(s) each)")
        if auc.get("delta") is not None and auc.get("ci_low") is not None:
            change = (f"{name} drop {-100 * auc['delta']:.2f} points" if auc["delta"] <= 0 else
                      f"{name} {100 * auc['delta']:+.2f} points (higher)")
            parts.append(f"{change} (95% CI upper bound of the drop {-100 * auc['ci_low']:.2f})")
        e2e_ref, e2e = (ref.get("end_to_end") or {}).get("p50_ms"), (shipped.get("end_to_end") or {}).get("p50_ms")
        if (report.get("data") or {}).get("volumes") and e2e_ref and e2e:
            parts.append(f"a whole volume end to end (read, resample, sliding window, mask written): {e2e / 1e3:.2f} s "
                         f"vs {e2e_ref / 1e3:.2f} s ({e2e_ref / e2e:.1f}x)")
        if shipped.get("size_bytes") and ref.get("size_bytes"):
            parts.append(f"{shipped['size_bytes'] / 1e6:.2f} MB vs {ref['size_bytes'] / 1e6:.1f} MB")
        if parts:
            lines += [f"  {shipped['name']} ({shipped.get('backend')} {shipped.get('precision')}) vs {ref['name']} "
                      f"({ref.get('backend')} {ref.get('precision')}): {parts[0]}", *(f"  {p}" for p in parts[1:])]
    if not lines:
        return []
    if report.get("gates"):
        lines.append(f"  gates: {'all passed' if report.get('passed') else 'FAILED'}")
    return ["", "Demo summary", *lines]


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML; loading it back gives the same recipe."""
    import yaml

    return yaml.safe_dump(copy.deepcopy(recipe.to_dict()), sort_keys=False, default_flow_style=False)
