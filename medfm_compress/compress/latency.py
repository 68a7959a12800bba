"""Timing quantization candidates on this machine (ONNX Runtime or OpenVINO), on the runtime's one latency loop.

``--precision auto``, ``--auto-exclude`` and OpenVINO's accuracy control decide by latency: each candidate is
timed as a no-argument call on a random batch, and the final decision times every candidate in one interleaved
loop (:func:`~medfm_compress.runtime.timing.interleaved_times`). ``--batch-sizes`` times them at each batch size,
ONNX Runtime candidates also as concurrent single-threaded sub-batches (``streams``, the engine option of
:class:`~medfm_compress.runtime.onnxruntime_backend.OnnxRuntimeEngine`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..runtime.timing import LatencyConfig, interleaved_times, timed_loop

__all__ = ["candidate_call", "latency_ms", "interleaved_latency_ms"]

ENGINES = ("onnxruntime", "openvino")


def candidate_call(engine: str, model: Any, x: np.ndarray, precision: str = "fp32",
                   threads: int | None = None, streams: int = 1) -> Callable[[], object]:
    """A no-argument call that runs ``model`` once on ``x`` in ``engine`` (``onnxruntime``: a proto or path;
    ``openvino``: an ``openvino.Model`` or path, run at the inference precision of an artifact of ``precision``).
    ``streams`` > 1 (ONNX Runtime): ``x`` as that many sub-batches at once, each on ``threads // streams`` threads,
    as the engine runs it with its ``streams`` option."""
    if streams > 1 and engine != "onnxruntime":
        raise ValueError(f"streams apply to onnxruntime candidates, not {engine}")
    if engine == "openvino":
        from ..runtime.openvino_loader import compile_ov, ov_inference_precision

        req = compile_ov(model, "CPU", threads, inference_precision=ov_inference_precision(precision)
                         ).create_infer_request()
        return lambda: req.infer(x, share_inputs=True)
    if engine != "onnxruntime":
        raise ValueError(f"unknown candidate engine {engine!r}; one of {ENGINES}")
    from ..runtime.onnx_loader import BatchStreams, ort_session

    sess = ort_session(model, threads=threads, streams=streams)
    name = sess.get_inputs()[0].name
    if streams > 1:
        runner = BatchStreams(streams)
        return lambda: runner.run(lambda part: sess.run(None, {name: part})[0], x)
    feed = {name: x}
    return lambda: sess.run(None, feed)


def latency_ms(model: Any, shape: tuple[int, ...], runs: int = 50, warmup: int = 5, threads: int | None = None,
               input_dtype=np.float32, engine: str = "onnxruntime", precision: str = "fp32") -> float:
    """p50 latency (ms) of one model at ``shape`` on a random input (all cores unless ``threads``)."""
    x = np.random.default_rng(0).standard_normal(shape).astype(input_dtype)
    call = candidate_call(engine, model, x, precision, threads=threads)
    return float(np.percentile(timed_loop(call, LatencyConfig(iterations=runs, warmup=warmup)), 50) * 1000.0)


def interleaved_latency_ms(models: dict[str, tuple[Any, ...]], shape: tuple[int, ...], runs: int = 50,
                           dtypes: dict[str, Any] | None = None, rounds: int = 5, warmup: int = 5) -> dict[str, float]:
    """p50 latency (ms) of each ``name -> (engine, model[, artifact precision[, streams]])`` at ``shape``, every
    model timed in each of ``rounds`` rounds (``runs`` calls in all), so drifting background load hits all of them
    alike."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    calls = {k: candidate_call(eng, m, x.astype((dtypes or {}).get(k, np.float32)), *rest[:1],
                               streams=rest[1] if len(rest) > 1 else 1)
             for k, (eng, m, *rest) in models.items()}
    times = interleaved_times(calls, runs=runs, rounds=rounds, warmup=warmup)
    return {k: float(np.percentile(v, 50) * 1000.0) for k, v in times.items()}
