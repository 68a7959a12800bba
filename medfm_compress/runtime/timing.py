"""The one latency loop: warm-up, timed calls between two clock reads, percentiles.

Everything that times an engine uses these: the benchmark harness (:mod:`medfm_compress.bench.latency`, which
adds CUDA events and interleaved rounds over engines), quantization's candidate timing
(:mod:`medfm_compress.compress.latency`) and the benchmarks. They sit in the runtime layer so that every
layer above can use them and ``bench`` runs in the edge install.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import sys
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = [
    "LatencyConfig",
    "BLOCK_WARMUP",
    "summarize",
    "peak_rss_bytes",
    "no_gc",
    "warm_up",
    "timed_loop",
    "interleaved_times",
]

# Untimed calls at the start of each interleaved block: the previous item's runtime may still be spinning its
# thread pool (ONNX Runtime does after every run), and the first calls would time that instead.
BLOCK_WARMUP = 3


@dataclass(frozen=True)
class LatencyConfig:
    """How long to warm up and measure.

    Attributes:
        iterations: timed calls (used when ``duration_s`` is None; also the minimum with a duration).
        warmup: untimed calls first.
        warmup_s: minimum warm-up time in seconds (keeps calling after ``warmup`` calls until it passes).
        duration_s: when set, keep timing until this many seconds have passed (at least ``iterations`` calls).
        cuda_events: on CUDA engines, time with CUDA events (device time) instead of the host clock.
    """

    iterations: int = 100
    warmup: int = 10
    warmup_s: float = 0.0
    duration_s: float | None = None
    cuda_events: bool = True

    def __post_init__(self):
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}")
        if self.warmup < 0 or self.warmup_s < 0:
            raise ConfigError("warmup and warmup_s must be >= 0")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError(f"duration must be > 0 seconds, got {self.duration_s}")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(rss if sys.platform == "darwin" else rss * 1024)


def summarize(times_s: np.ndarray | list[float], batch_size: int = 1) -> dict[str, float | int]:
    """Percentiles, mean, std, min (ms) and throughput (items/s) of per-call times in seconds."""
    t = np.asarray(times_s, dtype=np.float64) * 1e3
    if t.size == 0:
        raise ValueError("no timings to summarise")
    p50, p90, p95, p99 = np.percentile(t, [50, 90, 95, 99])
    mean = float(t.mean())
    return {
        "n": int(t.size),
        "batch_size": int(batch_size),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "mean_ms": mean,
        "std_ms": float(t.std()),
        "min_ms": float(t.min()),
        "max_ms": float(t.max()),
        "throughput_per_s": float(batch_size * 1e3 / mean) if mean > 0 else float("inf"),
    }


@contextlib.contextmanager
def no_gc():
    """Keep Python's cyclic garbage collector out of the timed region (as ``timeit`` does): a collection
    landing inside one timed call is noise from the harness, not a cost of the engine."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def timed_loop(call, cfg: LatencyConfig) -> list[float]:
    """Warm up, then time ``call()`` with the host clock; the loop body is just the call and two clock reads."""
    with no_gc():
        return _timed_loop_impl(call, cfg)


def warm_up(call, cfg: LatencyConfig) -> None:
    """Untimed calls: at least ``cfg.warmup`` of them, and for at least ``cfg.warmup_s`` seconds."""
    perf = time.perf_counter
    start = perf()
    i = 0
    while i < cfg.warmup or perf() - start < cfg.warmup_s:
        call()
        i += 1


def _timed_loop_impl(call, cfg: LatencyConfig) -> list[float]:
    perf = time.perf_counter
    warm_up(call, cfg)
    times: list[float] = []
    append = times.append
    if cfg.duration_s is None:
        for _ in range(cfg.iterations):
            t0 = perf()
            call()
            append(perf() - t0)
    else:
        end = perf() + cfg.duration_s
        while len(times) < cfg.iterations or perf() < end:
            t0 = perf()
            call()
            append(perf() - t0)
    return times




def interleaved_times(calls: dict[Hashable, Callable[[], object]], runs: int = 50, rounds: int = 5,
                      warmup: int = 5) -> dict[Hashable, list[float]]:
    """Per-call times (s) of each ``key -> call``, interleaved: every call is warmed up, then each of ``rounds``
    rounds times a block of every call in turn (``runs`` calls per key in all, each block opening with
    :data:`BLOCK_WARMUP` untimed calls), so load that drifts during the measurement hits all of them alike."""
    if rounds < 1 or runs < 1:
        raise ConfigError(f"runs and rounds must be >= 1, got {runs} and {rounds}")
    for call in calls.values():
        warm_up(call, LatencyConfig(warmup=warmup))
    block = LatencyConfig(iterations=max(1, runs // rounds), warmup=BLOCK_WARMUP if len(calls) > 1 else 0)
    times: dict[Hashable, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            times[key].extend(timed_loop(call, block))
    return times
