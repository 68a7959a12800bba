"""Latency measurement of an :class:`~medfm_compress.runtime.Engine`.

Two numbers, reported separately:

* engine-only: ``engine.run`` on an already preprocessed batch (what the backend costs);
* end-to-end: one raw image -> preprocessing -> engine -> probabilities and argmax, per case, as a scanner
  console sees it.

Each warms up (a count of calls and a minimum time), then times N calls or runs for a duration. On CUDA the
timing uses CUDA events around the engine call plus a synchronize, and peak device memory is recorded.
The timed loop does nothing but call the engine and read the clock, so its overhead stays within a few
microseconds of a bare backend loop (see ``benchmarks/harness_overhead.py``).
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import ConfigError
from ..runtime.timing import (
    BLOCK_WARMUP,
    LatencyConfig,
    no_gc,
    peak_rss_bytes,
    summarize,
    timed_loop,
    warm_up,
)

__all__ = [
    "LatencyConfig",
    "measure_engine",
    "measure_engines",
    "measure_callable",
    "measure_end_to_end",
    "measure_volume_end_to_end",
    "summarize",
    "peak_rss_bytes",
]


def _is_cuda(engine) -> bool:
    return str(engine.info.get("device") or "cpu").startswith("cuda")


def _cuda_events_apply(engine) -> bool:
    """CUDA events only measure engines that queue work on torch's current stream; others use the host clock
    (their run() returns host arrays, so it is synchronous anyway)."""
    return bool(getattr(engine, "supports_cuda_events", False)) and _is_cuda(engine)


def _cuda_event_loop(engine, call, cfg: LatencyConfig) -> tuple[list[float], int | None]:
    """Warm up, then time each call between CUDA events (synchronised); returns times and peak device memory."""
    import torch

    perf = time.perf_counter
    warm_up(call, cfg)
    engine.synchronize()
    torch.cuda.reset_peak_memory_stats()
    pairs = []
    end = perf() + (cfg.duration_s or 0.0)
    with no_gc():
        while len(pairs) < cfg.iterations or perf() < end:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            call()
            e.record()
            pairs.append((s, e))
        torch.cuda.synchronize()
    times = [s.elapsed_time(e) / 1e3 for s, e in pairs]
    return times, int(torch.cuda.max_memory_allocated())


def measure_callable(call, batch_size: int = 1, cfg: LatencyConfig | None = None) -> dict:
    """Host-clock latency of ``call()`` (e.g. a torch model that is not an exported artifact), same statistics
    as :func:`measure_engine`."""
    cfg = cfg or LatencyConfig()
    stats = summarize(timed_loop(call, cfg), batch_size)
    stats.update(clock="perf_counter", peak_rss_bytes=peak_rss_bytes())
    return stats


def measure_engine(engine, tensors: np.ndarray, cfg: LatencyConfig | None = None) -> dict:
    """Engine-only latency of ``engine.run(tensors)`` (a preprocessed batch)."""
    return measure_engines({0: (engine, tensors)}, cfg)[0]


def measure_engines(items: dict, cfg: LatencyConfig | None = None, rounds: int = 1, on_done=None) -> dict:
    """Engine-only latency of several ``key -> (engine, preprocessed batch)`` items, interleaved.

    Each item is warmed up, then the timed calls are split into ``rounds`` blocks and every round times each
    item's block in turn, so load that drifts while the benchmark runs lands on all items alike (comparisons
    between them stay fair, and two runs agree better than back-to-back measurement). ``cfg.iterations`` and
    ``cfg.duration_s`` are totals per item. Returns ``key -> statistics``: :func:`summarize`'s plus the clock,
    threads, peak RSS, peak device memory (CUDA events) and the number of rounds.
    ``on_done(key)`` is called once per item when its last round is timed.
    """
    cfg = cfg or LatencyConfig()
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    # Each block after the first item's starts with a few untimed calls: the previous item's runtime may still be
    # spinning its thread pool (ONNX Runtime does after every run), and its first calls would time that instead.
    per_round = LatencyConfig(iterations=max(1, -(-cfg.iterations // rounds)),
                              warmup=BLOCK_WARMUP if len(items) > 1 else 0, warmup_s=0.0,
                              duration_s=cfg.duration_s / rounds if cfg.duration_s else None,
                              cuda_events=cfg.cuda_events)
    prepared = {}
    for key, (engine, tensors) in items.items():
        x = engine.check_input(tensors)
        # Call the backend hook directly: the input was checked once above, and the timed loop must measure
        # the backend, not the checks (the public run() adds only those checks).
        run = engine._run_impl
        if _is_cuda(engine):
            engine.synchronize()
        warm_up(lambda r=run, x=x: r(x), cfg)
        events = cfg.cuda_events and _cuda_events_apply(engine)
        prepared[key] = (engine, x, run, events, [], [])
    for r in range(rounds):
        for key, (engine, x, run, events, times, peaks) in prepared.items():
            if events:
                t, peak = _cuda_event_loop(engine, lambda r=run, x=x: r(x), per_round)
                peaks.append(peak)
            else:
                if _is_cuda(engine):
                    engine.synchronize()
                t = timed_loop(lambda r=run, x=x: r(x), per_round)
            times.extend(t)
            if r == rounds - 1 and on_done is not None:
                on_done(key)
    out = {}
    for key, (engine, x, _run, events, times, peaks) in prepared.items():
        stats = summarize(times, x.shape[0])
        stats.update(clock="cuda_events" if events else "perf_counter", threads=engine.info.get("threads"),
                     peak_rss_bytes=peak_rss_bytes(), peak_device_memory_bytes=max(peaks) if peaks else None,
                     rounds=rounds)
        out[key] = stats
    return out


def measure_end_to_end(engine, raw_images: np.ndarray, cfg: LatencyConfig | None = None, shapes=None,
                       sw_batch_size: int = 4, overlap: float = 0.25) -> dict:
    """Per-case latency of raw image -> preprocessing -> engine -> probabilities + argmax (batch 1); for
    segmentation the label map resized (nearest) back to the raw image's size. A 2-D segmentation model trained on
    patches (``medfm.tiles``) segments each whole image by sliding windows instead (``sw_batch_size`` windows per
    engine call, ``overlap``), each image cropped to its true size from ``shapes``.

    Cycles through ``raw_images`` so that preprocessing sees real, varying cases.
    """
    from ..runtime.sliding_window import class_argmax, whole_logits
    from ..runtime.tasks import get_task

    cfg = cfg or LatencyConfig()
    if len(raw_images) == 0:
        raise ConfigError("end-to-end latency needs at least one raw image")
    task = get_task(engine.meta.task)
    pre = engine.meta.preprocess
    n = min(len(raw_images), 64)
    cases = [raw_images[i : i + 1] if shapes is None else np.asarray(raw_images[i])[None, :shapes[i][0], :shapes[i][1]]
             for i in range(n)]
    state = {"i": 0}

    def one_case():
        img = cases[state["i"] % len(cases)]
        state["i"] += 1
        if pre.tiles:
            return class_argmax(whole_logits(engine, img[0], overlap, sw_batch_size, normalize=False))
        return task.case_result(engine.run(pre(img)), img.shape[1:3])

    def synced():
        one_case()
        engine.synchronize()

    times = timed_loop(synced, cfg)
    stats = summarize(times, 1)
    stats.update(clock="perf_counter", threads=engine.info.get("threads"), peak_rss_bytes=peak_rss_bytes())
    return stats


def measure_volume_end_to_end(engine, volumes: np.ndarray, shapes, spacing, sw_batch_size: int = 4,
                              overlap: float = 0.25, runs: int = 5) -> dict:
    """Per-volume latency of what ``predict`` does with a volume: NIfTI file read -> resampling to the model's
    spacing -> sliding-window inference -> the mask back on the volume's grid -> NIfTI mask written.

    Up to four held-out cases (each cropped to its true size) are written as NIfTI files first (not timed); one
    untimed warm-up volume, then ``runs`` timed ones cycling through them. ``peak_rss_bytes`` is this process's
    peak so far (models and data loaded included): an upper bound of what the chain itself needs."""
    import tempfile
    from pathlib import Path

    from ..runtime.predict_volume import segment_file
    from ..runtime.volume_masks import write_nifti_mask

    try:
        import nibabel as nib
    except ImportError:
        return {"skipped": "needs nibabel (the [nifti] extra) to write and read the volumes"}
    with tempfile.TemporaryDirectory(prefix="medfm-e2e-") as tmp:
        files = []
        for i, shape in enumerate(list(shapes)[:4]):
            case = np.asarray(volumes[i])[tuple(slice(0, n) for n in shape)]
            path = Path(tmp) / f"case{i}.nii.gz"
            nib.save(nib.Nifti1Image(case.astype(np.int16 if np.issubdtype(case.dtype, np.integer) else np.float32),
                                     np.diag([*spacing, 1.0])), str(path))
            files.append(path)

        def one(i: int) -> None:
            vol, mask = segment_file(engine, "nifti", files[i % len(files)], overlap, sw_batch_size)
            arr, affine = vol.to_source_order(mask)
            write_nifti_mask(arr, affine, Path(tmp) / "mask.nii.gz")

        one(0)
        times = []
        for i in range(runs):
            t0 = time.perf_counter()
            one(i)
            times.append(time.perf_counter() - t0)
    stats = summarize(times, 1)
    stats.update(clock="perf_counter", unit="volume", threads=engine.info.get("threads"),
                 volume_shapes=[list(s) for s in list(shapes)[:4]], sw_batch_size=sw_batch_size, overlap=overlap,
                 peak_rss_bytes=peak_rss_bytes())
    return stats
