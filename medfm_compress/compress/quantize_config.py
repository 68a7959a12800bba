"""The quantize stage's config: the input, then typed parts (calibration, gate, and the backend's own settings).

``QuantizeConfig(input=..., calibration=CalibrationConfig(...), gate=GateConfig(...), backend=NNCFConfig(...))``:
the backend config's type says which backend quantizes (the handler is found by that type, as torchao finds a
``quantize_`` handler by its config's type), and holds only the options that backend honours, so an option another
backend would need cannot be set by accident. The command line and recipes stay flat
(``QuantizeConfig.from_options(input=..., target="openvino", calibrator="entropy")``): ``target`` picks the backend
config class, each option goes to the part that declares it, and one that the chosen backend does not take is
refused in one line naming the backends that do.

A new backend is a config class registered under its target name here (:func:`backend_config`) plus a handler
registered for that class (:func:`medfm_compress.compress.quantize.register_target`). This module imports nothing
heavy: configs are built and checked before any backend's dependency is imported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from .._registry import Registry
from ..config import DictConfig, PartedConfig, require_positive, unknown_key
from ..errors import ConfigError
from ..models.card import MODEL_ROLES

__all__ = [
    "QuantizeConfig",
    "CalibrationConfig",
    "GateConfig",
    "BackendConfig",
    "Int8SearchConfig",
    "OnnxRuntimeConfig",
    "NNCFConfig",
    "ModelOptConfig",
    "QATConfig",
    "backend_config",
    "backend_config_class",
    "backend_config_classes",
    "CALIBRATORS",
    "SEARCH_OPTIONS",
    "DEFAULT_SEARCH_BUDGET_S",
    "VOLUME_NUM_HOLDOUT",
]

CONFIG_VERSION = 1
CALIBRATORS = ("minmax", "percentile", "entropy")
# Seconds the recovery search may spend after the first model misses the gate (--search-budget): room for the
# calibrator, weight-range and granularity variants and a latency-aware exclusion of a resnet18-class student.
DEFAULT_SEARCH_BUDGET_S = 300.0
# Held-out patches gating a volume model at the default --num-holdout (64 patches of 32^3 = 2.1 M voxels).
VOLUME_NUM_HOLDOUT = 64
# The options the recovery search varies when the user left them at their default (see Int8SearchConfig.pinned).
SEARCH_OPTIONS = ("calibrator", "percentile", "per_channel", "reduce_range", "auto_exclude")


@dataclass(frozen=True)
class CalibrationConfig(DictConfig):
    """Where the calibration images come from.

    Attributes:
        calib_data: data spec of the calibration images (any spec; folders need no labels).
        num_calib: calibration images, drawn stratified by class.
        allow_random_calibration: calibrate on random tensors when no data is given (recorded in metadata).
    """

    calib_data: str | None = None
    num_calib: int = 256
    allow_random_calibration: bool = False

    def __post_init__(self):
        require_positive(self, "num_calib")


@dataclass(frozen=True)
class GateConfig(DictConfig):
    """The parity gate: the quantized model against fp32 on held-out images; a model that misses it is not written.

    Attributes:
        num_holdout: held-out images for the parity gate (val split first), at most the split's size. 512: a 99%
            agreement measured on 256 images has a standard error of 0.6 pt, as wide as the gate's margin. A volume
            model left at this default is gated on :data:`VOLUME_NUM_HOLDOUT` patches: each holds tens of thousands
            of voxels, and 512 of them made the gate minutes long per candidate.
        min_agreement: top-1 agreement with fp32 (0 disables), judged by the 95% Wilson lower bound over the held-out
            images. 0.975 is what a 0.99 point value shows on the default 512 held-out images (it passes with up to
            5 of 512 disagreeing, 3 of 400); 150 images that all agree are the fewest that can show it. For a
            segmentation model, its pixel agreement (a point value: pixels are not independent cases).
        min_cosine: mean logit cosine with fp32 (None disables; an embedding model's gate, 0.99 when not given).
        min_dice: segmentation models: mean Dice of the quantized model's label maps against fp32's, judged by the
            lower bound of its 95% bootstrap interval over held-out cases.
        min_pearson: regression models: Pearson r of the quantized model's outputs with fp32's.
        allow_small_holdout: judge agreement and Dice by their point values (a warning states the interval) instead
            of refusing a held-out set too small to show ``min_agreement`` even if every image agreed.
    """

    num_holdout: int = 512
    min_agreement: float = 0.975
    min_cosine: float | None = None
    min_dice: float = 0.99
    min_pearson: float = 0.99
    allow_small_holdout: bool = False

    def __post_init__(self):
        require_positive(self, "num_holdout")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ConfigError(f"--min-agreement must be in [0, 1], got {self.min_agreement}")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise ConfigError(f"--min-cosine must be in [-1, 1], got {self.min_cosine}")
        if not 0.0 <= self.min_dice <= 1.0:
            raise ConfigError(f"--min-dice must be in [0, 1], got {self.min_dice}")
        if not -1.0 <= self.min_pearson <= 1.0:
            raise ConfigError(f"--min-pearson must be in [-1, 1], got {self.min_pearson}")


@dataclass(frozen=True)
class BackendConfig(DictConfig):
    """A backend's own settings; its type selects the backend (``target``: its name on the command line).

    Attributes:
        latency_runs: timed runs per candidate where latency decides or is reported (auto, auto-exclude, search,
            the int8 model's speed check against fp32).
    """

    target: ClassVar[str] = ""
    latency_runs: int = 50

    def __post_init__(self):
        require_positive(self, "latency_runs")


@dataclass(frozen=True)
class Int8SearchConfig(BackendConfig):
    """What the two static-int8 backends on the CPU (ONNX Runtime, NNCF) share: weight scales, exclusion and the
    recovery search (:mod:`medfm_compress.compress.quantize_search`).

    Attributes:
        calibrator: ``minmax`` | ``percentile`` | ``entropy`` (activation ranges).
        per_channel: per-channel weight scales.
        reduce_range: 7-bit weights (range -64..64). ORT's U8S8 kernels on x86 without VNNI (AVX2, AVX-512 without
            VNNI) add pairs of uint8 x int8 products in 16 bits, which saturates for full-range weights; measured on
            an AVX2 machine, a resnet18-class student's logits came out at 22.3 dB SQNR fused vs 33.9 dB for the same
            QDQ model unfused, and 32.1 dB with 7-bit weights at the same speed. NNCF: its overflow fix on every layer
            (NNCF's default: the first only). Off (``--full-range-weights``) only for VNNI-only deployments.
        auto_exclude: keep the most damaging nodes in fp32 until the parity gate holds.
        exclude_nodes: node names always kept in fp32.
        search: when the first int8 model misses the parity gate, search the backend's remedies (calibrators and
            percentiles, weight range, per-channel or per-tensor weights, latency-aware exclusion of nodes, and on
            ``cpu`` OpenVINO) and ship the fastest candidate that passes and is faster than fp32; off: the first
            model ships or is refused.
        search_budget: seconds the search may spend (default :data:`DEFAULT_SEARCH_BUDGET_S`); checked before each
            candidate starts, so a candidate under way finishes.
        pinned: options of :data:`SEARCH_OPTIONS` the user set explicitly; the search never varies them (nor any
            option set away from its default). The CLI names every such flag given on the command line.
    """

    calibrator: str = "minmax"
    per_channel: bool = True
    reduce_range: bool = True
    auto_exclude: bool = False
    exclude_nodes: tuple[str, ...] | None = None
    search: bool = True
    search_budget: float | None = None
    pinned: tuple[str, ...] = ()

    def __post_init__(self):
        super().__post_init__()
        if self.calibrator not in CALIBRATORS:
            raise ConfigError(f"--calibrator must be one of {', '.join(CALIBRATORS)}, got {self.calibrator!r}")
        if self.search_budget is not None:
            if not self.search:
                raise ConfigError("--search-budget has no effect with --no-search; give one of them")
            if not self.search_budget > 0:
                raise ConfigError(f"--search-budget must be > 0 seconds, got {self.search_budget}")
        unknown = sorted(set(self.pinned) - set(SEARCH_OPTIONS))
        if unknown:
            raise ConfigError(f"pinned names unknown search options {unknown}; valid: {', '.join(SEARCH_OPTIONS)}")
        foreign = sorted(set(self.pinned) - {f.name for f in dataclasses.fields(self)})
        if foreign:
            raise ConfigError(f"pinned names {foreign}, which --target {self.target} does not take")

    @property
    def search_budget_s(self) -> float:
        return DEFAULT_SEARCH_BUDGET_S if self.search_budget is None else float(self.search_budget)

    def pinned_options(self) -> frozenset[str]:
        """The options of :data:`SEARCH_OPTIONS` the search keeps as given: named in ``pinned`` or set away from
        their default."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return frozenset(self.pinned) | {n for n in SEARCH_OPTIONS if n in defaults and getattr(self, n) != defaults[n]}


_BACKEND_CONFIGS: Registry[type[BackendConfig]] = Registry("quantization target", origin=lambda c: c.__module__)


def backend_config(target: str):
    """Class decorator registering a backend config class under ``--target target``."""

    def deco(cls: type[BackendConfig]) -> type[BackendConfig]:
        cls.target = target
        _BACKEND_CONFIGS.register(target, cls)
        return cls

    return deco


def backend_config_classes() -> dict[str, type[BackendConfig]]:
    return {c.target: c for c in _BACKEND_CONFIGS}


def backend_config_class(target: str) -> type[BackendConfig]:
    if target not in _BACKEND_CONFIGS:
        raise ConfigError(f"unknown --target {target!r}; available: {', '.join(sorted(_BACKEND_CONFIGS.names()))}")
    return _BACKEND_CONFIGS.get(target)


@backend_config("cpu")
@dataclass(frozen=True)
class OnnxRuntimeConfig(Int8SearchConfig):
    """ONNX Runtime on the CPU: static QDQ U8S8 int8 (and the search), dynamic int8, fp16, or ``auto``.

    Attributes:
        num_bins: histogram bins of the percentile/entropy calibrators (ORT would silently use 128).
        percentile: percentile of the percentile calibrator.
        fp16_io: with ``fp16``, make the model's input and output float16 too.
        batch_sizes: with ``--precision auto``: the batch sizes the model will run at (default: batch 1; a volume
            model: 4, the windows per call of its sliding window). Every candidate is timed at each (ONNX Runtime
            ones at batch > 1 also as one single-threaded stream per core) and the choice is made per batch size:
            the first batch size's winner is written at ``out``, another model winning a later batch size beside it
            as ``<stem>.bs<N>.onnx|.xml``; the artifacts' metadata and the report say which file and run settings
            (``streams``) to use at which batch size.
    """

    num_bins: int = 2048
    percentile: float = 99.999
    fp16_io: bool = False
    batch_sizes: tuple[int, ...] | None = None

    def __post_init__(self):
        super().__post_init__()
        require_positive(self, "num_bins")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"--percentile must be in (50, 100], got {self.percentile}")
        if self.batch_sizes is not None:
            sizes = tuple(self.batch_sizes)
            if not sizes or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in sizes):
                raise ConfigError(
                    f"batch_sizes (--batch-sizes) must be positive integers, e.g. 1,32; got {self.batch_sizes!r}"
                )
            object.__setattr__(self, "batch_sizes", tuple(dict.fromkeys(sizes)))


@backend_config("openvino")
@dataclass(frozen=True)
class NNCFConfig(Int8SearchConfig):
    """OpenVINO IR: fp32 or bf16 conversion, or NNCF's int8 (accuracy-controlled with ``auto_exclude``)."""


@dataclass(frozen=True)
class QATConfig(DictConfig):
    """Quantization-aware distillation of a fake-quant student. ``None`` means "use the default".

    Defaults from benchmarks/qat_recovery.py: on a tiny synthetic run KD alone at lr 1e-4 for 3 epochs did not
    recover a 4-bit PTQ loss; KD + hard-label CE at lr 5e-4 for 5 epochs did. On the resnet18_w32 student
    (results/qat_recovery-w32.json) these settings took a 4-bit PTQ drop of 4.57 AUC points to -0.34."""

    epochs: int = 5
    lr: float = 5e-4
    weight_decay: float = 0.0
    batch_size: int = 64
    temperature: float = 2.0
    ce_weight: float = 1.0
    seed: int = 0
    augment: bool = False

    def __post_init__(self):
        if self.epochs < 1:
            raise ConfigError(f"QAT epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"QAT lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"QAT batch size must be >= 1, got {self.batch_size}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")


@backend_config("tensorrt")
@dataclass(frozen=True)
class ModelOptConfig(BackendConfig):
    """Symmetric QDQ ONNX for TensorRT by NVIDIA ModelOpt (PTQ, or QAT distilled from a teacher).

    Attributes:
        teacher: teacher of ``--method qat`` (default: the run directory's).
        qat: the quantization-aware distillation's settings (None: :class:`QATConfig`'s defaults).
    """

    teacher: str | None = None
    qat: QATConfig | None = None


@dataclass(frozen=True)
class QuantizeConfig(PartedConfig):
    """``medfm-compress quantize``: the input model, how to calibrate, the gate, and the backend's settings.

    Attributes:
        input: an ONNX file or a run directory (its ``model`` is exported first).
        out: output ONNX path (default: next to the input, ``<stem>.<precision>.onnx``). With ``--target cpu
            --precision auto`` an ``.onnx`` or ``.xml`` out limits the candidates to that kind; any other name is a
            stem to which the winner's suffix is added (``student.auto`` -> ``student.auto.xml`` when an OpenVINO IR
            wins), so every engine competes.
        precision: what the backend should produce (``int8``, ``int8-dynamic``, ``fp16``, ``auto`` on cpu).
        method: ``ptq`` (post-training); backends may register more (``qat``).
        model: which model of a run directory (student, teacher, baseline).
        input_size, channels, mean, std: preprocessing of an ONNX without medfm metadata.
        seed: sampling seed.
        force: use an input whose hash differs from the run manifest.
        progress: print progress lines.
        calibration, gate: :class:`CalibrationConfig`, :class:`GateConfig`.
        backend: the backend's config; its type selects the backend (``target``).
    """

    SELECTORS: ClassVar[dict[str, Any]] = {"target": "cpu"}

    input: str
    out: str | None = None
    precision: str = "int8"
    method: str = "ptq"
    model: str = "student"
    input_size: int | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    seed: int = 0
    force: bool = False
    progress: bool = True
    version: int = CONFIG_VERSION
    calibration: CalibrationConfig = CalibrationConfig()
    gate: GateConfig = GateConfig()
    backend: BackendConfig = OnnxRuntimeConfig()

    def __post_init__(self):
        if self.version != CONFIG_VERSION:
            raise ConfigError(
                f"quantize config version {self.version} is not supported (expected {CONFIG_VERSION})"
            )
        if self.model not in MODEL_ROLES:
            raise ConfigError(f"--model must be student, teacher or baseline, got {self.model!r}")
        if type(self.backend) not in set(_BACKEND_CONFIGS):
            raise ConfigError(f"backend {type(self.backend).__name__} is not a registered backend config; "
                              f"registered: {', '.join(c.__name__ for c in _BACKEND_CONFIGS)}")
        if getattr(self.backend, "batch_sizes", None) is not None and self.precision != "auto":
            raise ConfigError(
                "batch_sizes (--batch-sizes) chooses the model per batch size with precision auto; precision "
                f"{self.precision} makes one model for every batch size: remove batch_sizes"
            )

    @property
    def target(self) -> str:
        """The backend's name on the command line (``--target``)."""
        return self.backend.target

    def selector_values(self) -> dict[str, Any]:
        return {"target": self.target}

    def with_backend(self, **changes: Any) -> QuantizeConfig:
        """This config with some of the backend's settings changed (a search candidate's)."""
        return dataclasses.replace(self, backend=dataclasses.replace(self.backend, **changes))

    def with_gate(self, **changes: Any) -> QuantizeConfig:
        return dataclasses.replace(self, gate=dataclasses.replace(self.gate, **changes))

    @classmethod
    def part_classes(cls, options: dict[str, Any]) -> dict[str, type]:
        target = options.get("target")
        backend = options.get("backend")
        if target is not None and not isinstance(target, str):
            raise ConfigError(f"target must be a string, got {target!r}")
        if isinstance(backend, BackendConfig):
            cls_ = type(backend)
            if target is not None and backend_config_class(target) is not cls_:
                raise ConfigError(f"--target {target} takes a {backend_config_class(target).__name__}, not the "
                                  f"{cls_.__name__} given as backend (--target {cls_.target}'s)")
        else:
            cls_ = backend_config_class(target or cls.SELECTORS["target"])
        return {"calibration": CalibrationConfig, "gate": GateConfig, "backend": cls_}

    @classmethod
    def all_part_classes(cls) -> list[type]:
        return [CalibrationConfig, GateConfig, *_BACKEND_CONFIGS]

    @classmethod
    def unknown_option(cls, key: str, options: dict[str, Any], where: str) -> ConfigError:
        takers = [c.target for c in _BACKEND_CONFIGS if key in {f.name for f in dataclasses.fields(c)}]
        if takers:
            target = cls.part_classes(options)["backend"].target
            return ConfigError(f"{where + ': ' if where else ''}--target {target} does not use {key} "
                               f"({options[key]!r}); remove it (it is an option of --target {' and '.join(takers)})")
        return unknown_key(key, cls.option_names(), where)

    @classmethod
    def from_options(cls, where: str = "quantize config", /, **options: Any) -> QuantizeConfig:
        return super().from_options(where, **options)
