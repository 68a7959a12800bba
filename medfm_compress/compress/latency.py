"""Timing quantization candidates on this machine (ONNX Runtime or OpenVINO), on the runtime's one latency loop.

``--precision auto``, ``--auto-exclude`` and OpenVINO's accuracy control decide by latency: each candidate is
timed as a no-argument call on a random batch, and the final decision times every candidate in one interleaved
loop (:func:`~medfm_compress.runtime.timing.interleaved_times`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..runtime.timing import LatencyConfig, interleaved_times, timed_loop

__all__ = ["candidate_call", "latency_ms", "interleaved_latency_ms"]

ENGINES = ("onnxruntime", "openvino")


def candidate_call(engine: str, model: Any, x: np.ndarray, precision: str = "fp32",
                   threads: int | None = None) -> Callable[[], object]:
    """A no-argument call that runs ``model`` once on ``x`` in ``engine`` (``onnxruntime``: a proto or path;
    ``openvino``: an ``openvino.Model`` or path, run at the inference precision of an artifact of ``precision``)."""
    if engine == "openvino":
        from ..runtime.openvino_loader import compile_ov, ov_inference_precision

        req = compile_ov(model, "CPU", threads, inference_precision=ov_inference_precision(precision)
                         ).create_infer_request()
        return lambda: req.infer(x, share_inputs=True)
    if engine != "onnxruntime":
        raise ValueError(f"unknown candidate engine {engine!r}; one of {ENGINES}")
    from ..runtime.onnx_loader import ort_session

    sess = ort_session(model, threads=threads)
    feed = {sess.get_inputs()[0].name: x}
    return lambda: sess.run(None, feed)


def latency_ms(model: Any, shape: tuple[int, ...], runs: int = 50, warmup: int = 5, threads: int | None = None,
               input_dtype=np.float32, engine: str = "onnxruntime", precision: str = "fp32") -> float:
    """p50 latency (ms) of one model at ``shape`` on a random input (all cores unless ``threads``)."""
    x = np.random.default_rng(0).standard_normal(shape).astype(input_dtype)
    call = candidate_call(engine, model, x, precision, threads)
    return float(np.percentile(timed_loop(call, LatencyConfig(iterations=runs, warmup=warmup)), 50) * 1000.0)


def interleaved_latency_ms(models: dict[str, tuple[Any, ...]], shape: tuple[int, ...], runs: int = 50,
                           dtypes: dict[str, Any] | None = None, rounds: int = 5, warmup: int = 5) -> dict[str, float]:
    """p50 latency (ms) of each ``name -> (engine, model[, artifact precision])`` at ``shape``, every model timed
    in each of ``rounds`` rounds (``runs`` calls in all), so drifting background load hits all of them alike."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    calls = {k: candidate_call(eng, m, x.astype((dtypes or {}).get(k, np.float32)), *rest)
             for k, (eng, m, *rest) in models.items()}
    times = interleaved_times(calls, runs=runs, rounds=rounds, warmup=warmup)
    return {k: float(np.percentile(v, 50) * 1000.0) for k, v in times.items()}
