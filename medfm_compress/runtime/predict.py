"""``predict``: apply a deployed model to cases and write its predictions; what an edge box runs.

Raw image -> the model's own preprocessing (``engine.meta.preprocess``) -> ``engine.run`` ->
:func:`~medfm_compress.metrics.probabilities`, the code path bench's end-to-end timing measures
(:func:`medfm_compress.bench.latency.measure_end_to_end`). Cases are streamed in batches: memory does not grow
with their number. Each case is preprocessed on its own (images of different sizes mix in one folder, and a
case's result never depends on its neighbours in a batch), then stacked into the batch the engine runs; a
worker thread reads and preprocesses files up to two batches ahead while the engine runs (``workers``).

Outputs, in ``cfg.out``:

* ``predictions.csv``: per case ``file``, the top-1 ``label`` (multi-label: ``labels``, the labels with a
  probability >= 0.5, ``|``-separated), one probability column per label, and ``error`` (the reason a case was
  skipped with ``skip_bad``; empty otherwise). An embedding model's CSV has ``file``, ``row`` (its row in
  ``embeddings.npy``) and ``error``.
* ``predictions.json``: the model, task, label names and inputs, then one record per case in the CSV's order
  (``file``, ``label``/``labels``, ``probabilities`` by label, or ``row``; ``error`` for a skipped case), then
  the counts.
* ``embeddings.npy`` (embedding models): float32, one row per predicted case.
* ``masks/`` (segmentation models): one PNG label map per case (8-bit, pixel value = class index, 0 = background)
  at the input image's own size (the model's map resized with nearest-neighbour; a model trained on patches,
  ``medfm.tiles``, runs on the whole image at its own resolution by sliding windows of its input size, as 3-D
  models do, and its map needs no resizing); the CSV then has ``file``,
  ``mask`` (its path under the output folder) and per class its area in pixels (``area_<label>``), and ``error``.

Every output is written to a temporary file in ``cfg.out`` and renamed when the run succeeds: a failure leaves
no output (and no temporary file) behind; the previous run's outputs, if any, stay intact.

This module reads files and folders (:mod:`medfm_compress.runtime.images`); a data spec is resolved one layer up
(:func:`medfm_compress.data.cases.input_cases`) into the same :class:`Cases` stream.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_path, ensure_dir
from ..errors import ConfigError, DataError, MedfmError, ModelError, first_line
from .images import find_image_files, read_any
from .predict_result import CSV_NAME, EMBEDDINGS_NAME, JSON_NAME, MASKS_DIR, PredictResult
from .sliding_window import windows_logits
from .tasks import get_task

__all__ = [
    "Case",
    "Cases",
    "PredictConfig",
    "PredictResult",
    "predict",
    "file_cases",
    "chain_cases",
    "CSV_NAME",
    "JSON_NAME",
    "EMBEDDINGS_NAME",
    "MASKS_DIR",
]

@dataclass(frozen=True)
class Case:
    """One case: its name in the outputs (a file path, or ``spec#index``) and a function that returns its raw
    image (decoded only when its batch is assembled; a decode error names the file)."""

    name: str
    load: Callable[[], np.ndarray]


@dataclass(frozen=True)
class Cases:
    """A stream of ``total`` cases (``items`` is iterated once), with notes for the summary (e.g. which split of a
    data spec was used)."""

    total: int
    items: Iterable[Case]
    notes: tuple[str, ...] = ()
    # Whether cases may be loaded from worker threads (files: yes; a data layer reader sharing a file handle: no).
    threadsafe: bool = False


def file_cases(
    inputs: Iterable[str | os.PathLike],
    window: tuple[float, float] | None = None,
    exclude: str | os.PathLike | None = None,
) -> Cases:
    """Cases from image/DICOM/``.npy`` files and folders (recursively, sorted). ``window``: the model's intensity
    window (DICOM is then read in its modality units for the model to window); ``exclude``: a folder to skip
    (the output folder)."""
    files = find_image_files(inputs, exclude=exclude)

    def items() -> Iterator[Case]:
        for f in files:
            yield Case(f, lambda f=f: read_any(f, window))

    return Cases(len(files), items(), threadsafe=True)


def chain_cases(parts: Iterable[Cases]) -> Cases:
    """One stream of several inputs' cases, in order."""
    parts = list(parts)

    def items() -> Iterator[Case]:
        for p in parts:
            yield from p.items

    return Cases(
        sum(p.total for p in parts),
        items(),
        tuple(n for p in parts for n in p.notes),
        threadsafe=all(p.threadsafe for p in parts),
    )


@dataclass(frozen=True)
class PredictConfig:
    """What ``medfm-compress predict`` does.

    Attributes:
        model: the artifact (``.onnx``; ``.xml`` OpenVINO IR where openvino is installed; anything
            :meth:`Engine.load <medfm_compress.runtime.Engine.load>` opens).
        inputs: image files (PNG, JPEG, NPY, DICOM) and folders of them; data specs are resolved by
            :func:`medfm_compress.data.cases.input_cases` (what the command does).
        out: output folder.
        batch_size: cases per engine call (a model with a fixed batch size runs at that size).
        skip_bad: record an unreadable case in the outputs (its ``error``) and go on, instead of stopping.
        backend, device, threads: as for :meth:`Engine.load <medfm_compress.runtime.Engine.load>`.
        input_size, channels, mean, std: the preprocessing of a model without medfm metadata (a foreign ONNX);
            its labels are then ``class_0..class_{N-1}`` and its task multi-class.
        workers: threads that read and preprocess cases ahead of the engine (at most two batches ahead; 0: in the
            calling thread). Data-spec cases are always read in the calling thread.
        sw_overlap, sw_batch_size: the sliding window of a 3-D model or a 2-D one trained on patches: the overlap
            of neighbouring windows (fraction of the window) and the windows per engine call.
        progress: a progress bar on stderr.
    """

    model: str
    inputs: tuple[str, ...]
    out: str
    batch_size: int = 32
    skip_bad: bool = False
    backend: str | None = None
    device: str | None = None
    threads: int | None = None
    input_size: int | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    workers: int = 1
    progress: bool = True
    sw_overlap: float = 0.25
    sw_batch_size: int = 4

    def __post_init__(self):
        if not 0.0 <= self.sw_overlap < 1.0:
            raise ConfigError(f"sliding-window overlap must be in [0, 1), got {self.sw_overlap}")
        if self.sw_batch_size < 1:
            raise ConfigError(f"sliding-window batch size must be >= 1, got {self.sw_batch_size}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if not self.inputs:
            raise ConfigError("predict needs at least one input (image files, folders or a data spec)")

    @property
    def metadata_flags(self) -> bool:
        return any(v is not None for v in (self.input_size, self.channels, self.mean, self.std))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Outputs:
    """The run's output files: the CSV and JSON, each written to a temporary file in the output folder and renamed on
    success, and the rows the task's writer puts in them (with any files of its own)."""

    def __init__(self, stack: contextlib.ExitStack, out: Path, task, labels: list[str], total: int, width: int,
                 header: dict[str, Any]):
        self.csv_path, self.json_path = out / CSV_NAME, out / JSON_NAME
        csv_tmp = stack.enter_context(atomic_path(self.csv_path))
        json_tmp = stack.enter_context(atomic_path(self.json_path))
        # Closed by finish(), where a write error surfaces; on a failed run, closed quietly.
        self._csv_fh = open(csv_tmp, "w", newline="", encoding="utf-8")
        stack.callback(_close_quietly, self._csv_fh)
        self._json_fh = open(json_tmp, "w", encoding="utf-8")
        stack.callback(_close_quietly, self._json_fh)
        self.writer = task.predict_writer(self._csv_fh, self._json_fh, out, labels)
        self.writer.open(stack, total, width)
        head = json.dumps(header, indent=2)
        self._json_fh.write(head[:-2] + ',\n  "cases": [')

    @property
    def predicted(self) -> int:
        return self.writer.predicted

    @property
    def skipped(self) -> int:
        return self.writer.skipped

    def finish(self) -> None:
        counts = {"cases": self.predicted + self.skipped, "predicted": self.predicted, "skipped": self.skipped}
        self._json_fh.write(("\n  " if self.writer.rows else "") + '],\n  "counts": ' + json.dumps(counts) + "\n}\n")
        self._csv_fh.close()  # flushed here, so that a full disk is reported as such (closing again is a no-op)
        self._json_fh.close()
        self.writer.finish()


def _close_quietly(fh) -> None:
    """Close a file on the way out of a failed run: its temporary file is removed anyway, and a second error from
    flushing what a full disk refused must not replace the first one."""
    with contextlib.suppress(OSError):
        fh.close()


def _load_engine(cfg: PredictConfig):
    from . import Engine, backend_for_path
    from .metadata import meta_from_flags

    options: dict[str, Any] = {}
    if cfg.metadata_flags:
        options["metadata"] = meta_from_flags(str(cfg.model), cfg.input_size, cfg.channels, cfg.mean, cfg.std)
    backend = cfg.backend or backend_for_path(cfg.model)
    if backend == "onnxruntime":
        # Between two runs this process decodes and writes: ONNX Runtime's threads must not spin-wait for the
        # next run on the cores that work needs (on 2 cores: ~1.7x the images/s).
        options["session_config"] = {"session.intra_op.allow_spinning": "0"}
    return Engine.load(cfg.model, backend=backend, device=cfg.device, threads=cfg.threads, **options)


def _batch_size(engine, wanted: int) -> int:
    lo, hi = engine.batch_range
    if engine.fixed_batch is not None:
        return engine.fixed_batch
    return max(lo, min(wanted, hi) if hi is not None else wanted)


def _probe(engine) -> int:
    """The output width (classes), from one run on zeros (also the warm-up); a model whose output is not ``(N, K)``
    (segmentation: ``(N, K, H, W)``) or whose run fails is a one-line error."""
    x = np.zeros((engine.fixed_batch or 1, *engine.input_shape), dtype=np.float32)
    try:
        y = np.asarray(engine.run(x))
    except (DataError, ModelError, ConfigError):
        raise
    except Exception as e:  # a runtime's own exception types (shape mismatch, unsupported op)
        raise ModelError(f"{engine.path} fails on an input of shape {x.shape}: {first_line(e)}") from None
    task = get_task(engine.meta.task)
    if y.ndim != task.output_rank(len(engine.input_shape) - 1) or y.shape[0] != x.shape[0]:
        raise ModelError(f"{engine.path} outputs shape {y.shape} for a batch of {x.shape[0]}; predict needs "
                         f"{task.output_shape_text()} for a {task.name} model")
    return int(y.shape[1])


def _refuse_volumes(cfg, pre) -> None:
    """A 2-D model named volumes (NIfTI, .inv3, a volume kind): one line saying a volume needs a 3-D model."""
    from .predict_volume import VOLUME_INPUT_KINDS, VOLUME_SUFFIXES

    for raw in cfg.inputs:
        text = str(raw)
        kind = text.partition(":")[0]
        if kind in VOLUME_INPUT_KINDS or text.lower().endswith(VOLUME_SUFFIXES):
            size = "x".join(str(int(v)) for v in pre.input_size)
            raise ConfigError(f"{text} is a volume; {cfg.model} takes 2-D images ({size}): a volume needs a 3-D "
                              "segmentation model")


def predict(cfg: PredictConfig, cases: Cases | Callable[[Any], Cases] | None = None) -> PredictResult:
    """Run ``cfg.model`` on every case and write ``predictions.csv``, ``predictions.json`` (and, for an embedding
    model, ``embeddings.npy``) into ``cfg.out``; see the module docstring.

    ``cases``: the cases to run, or a function of the loaded model's
    :class:`~medfm_compress.runtime.metadata.ModelMeta` that returns them (how DICOM is read depends on the
    model's intensity window), e.g. :func:`medfm_compress.data.cases.input_cases`, which also resolves data
    specs; None reads ``cfg.inputs`` as files and folders.

    A case that cannot be read or preprocessed stops the run with a one-line
    :class:`~medfm_compress.errors.DataError` naming it, and nothing is written; with ``cfg.skip_bad`` it is
    recorded in the outputs with its reason and the run goes on.
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    created = not out.exists()
    try:
        with _load_engine(cfg) as engine:
            meta = engine.meta
            pre, task = meta.preprocess, get_task(meta.task, str(cfg.model))
            if pre.is_volume and task.dense:  # whole volumes, by sliding windows (.predict_volume)
                from .predict_volume import predict_volumes

                result = predict_volumes(cfg, engine, out)
                result.seconds = time.perf_counter() - t_start
                return result
            if cases is None or callable(cases):
                _refuse_volumes(cfg, pre)
            if cases is None:
                cases = file_cases(cfg.inputs, window=pre.window, exclude=out)
            elif callable(cases):
                cases = cases(meta)
            if cases.total < 1:
                raise DataError(f"no cases to predict in {', '.join(map(str, cfg.inputs))}")
            batch = _batch_size(engine, cfg.batch_size)
            width = _probe(engine)
            labels = task.output_labels(meta.label_names, width)
            if labels and len(labels) != width:
                raise ModelError(
                    f"{cfg.model} outputs {width} values per case but its metadata names "
                    f"{len(labels)} labels; re-export it"
                )
            header = {
                "model": str(cfg.model),
                "backend": engine.backend_name,
                "task": task.name,
                "label_names": labels,
                "inputs": [str(i) for i in cfg.inputs],
            }
            ensure_dir(out)
            buf = np.zeros((batch, *engine.input_shape), dtype=np.float32)
            names: list[str] = []
            sizes: list[tuple[int, int]] = []  # each case's own (H, W): segmentation masks go back to it
            with contextlib.ExitStack() as stack:
                outputs = _Outputs(stack, out, task, labels, cases.total, width, header)
                bar = stack.enter_context(
                    tqdm(
                        total=cases.total,
                        disable=not cfg.progress,
                        file=sys.stderr,
                        unit="img",
                        desc="predict",
                        dynamic_ncols=True,
                    )
                )
                t_loop = time.perf_counter()

                def flush() -> None:
                    n = len(names)
                    logits = np.asarray(engine.run(buf if engine.fixed_batch is not None else buf[:n]))[:n]
                    outputs.writer.add_batch(names, logits, sizes)
                    bar.update(n)
                    names.clear()
                    sizes.clear()

                workers = cfg.workers if cases.threadsafe else 0
                stream = stack.enter_context(contextlib.closing(_prepared(cases, pre, workers, 2 * batch)))
                try:
                    for case, prepared, error in stream:
                        if error is not None:
                            if not cfg.skip_bad:
                                raise error
                            outputs.writer.add_bad(case.name, str(error))
                            bar.update(1)
                            continue
                        x, hw = prepared
                        if pre.tiles:  # a model trained on patches: the whole image, by sliding windows
                            logits = windows_logits(engine, x[None], cfg.sw_overlap, cfg.sw_batch_size,
                                                    normalize=False)
                            outputs.writer.add_batch([case.name], logits, [hw])
                            bar.update(1)
                            continue
                        buf[len(names)] = x
                        names.append(case.name)
                        sizes.append(hw)
                        if len(names) == batch:
                            flush()
                    if names:
                        flush()
                    loop_s = time.perf_counter() - t_loop
                    outputs.finish()
                except OSError as e:  # writing the outputs (readers turn their own errors into DataError)
                    raise MedfmError(_write_error(out, e)) from None
            result = PredictResult(
                model=str(cfg.model),
                backend=engine.backend_name,
                task=task.name,
                label_names=labels,
                cases=outputs.predicted + outputs.skipped,
                predicted=outputs.predicted,
                skipped=outputs.skipped,
                seconds=0.0,
                images_per_s=outputs.predicted / loop_s if loop_s > 0 else float("inf"),
                batch_size=batch,
                csv_path=outputs.csv_path,
                json_path=outputs.json_path,
                **outputs.writer.paths(),
                notes=list(cases.notes),
            )
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if the run left it empty
        raise
    result.seconds = time.perf_counter() - t_start
    return result


def _write_error(out: Path, e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (
            f"disk full (or file size limit reached) while writing predictions to {out}; free space and retry "
            "(nothing was written; earlier outputs there, if any, are intact)"
        )
    return f"cannot write predictions to {out}: {e.strerror or e}; check the folder is writable"


def _prepared(
    cases: Cases, pre, workers: int, ahead: int
) -> Iterator[tuple[Case, tuple[np.ndarray, tuple[int, int]] | None, DataError | None]]:
    """``(case, (tensor, raw (H, W)), None)`` or, for a bad case, ``(case, None, error)``, in the cases' order; with
    ``workers``,
    read and preprocessed by that many threads at most ``ahead`` cases ahead (memory stays bounded)."""
    if workers < 1:
        for case in cases.items:
            try:
                yield case, _prepare(case, pre), None
            except DataError as e:
                yield case, None, e
        return
    from concurrent.futures import ThreadPoolExecutor

    def done(case: Case, future) -> tuple[Case, tuple[np.ndarray, tuple[int, int]] | None, DataError | None]:
        try:
            return case, future.result(), None
        except DataError as e:
            return case, None, e

    pool = ThreadPoolExecutor(workers, thread_name_prefix="predict-read")
    pending: deque = deque()
    try:
        for case in cases.items:
            pending.append((case, pool.submit(_prepare, case, pre)))
            if len(pending) >= ahead:
                yield done(*pending.popleft())
        while pending:
            yield done(*pending.popleft())
    finally:
        # A stopped run (an error, Ctrl-C) drops what was read ahead instead of reading it.
        pool.shutdown(wait=True, cancel_futures=True)


def _prepare(case: Case, pre) -> tuple[np.ndarray, tuple[int, int]]:
    """One case's preprocessed ``(C, ...)`` tensor and its raw image's ``(H, W)``; a bad case is a DataError naming
    it."""
    raw = np.asarray(case.load())  # readers name the file in their errors
    try:
        x = pre.whole(raw[None]) if pre.tiles else pre(raw[None])
        return x[0], (int(raw.shape[0]), int(raw.shape[1]) if raw.ndim > 1 else 1)
    except DataError as e:
        raise DataError(f"{case.name}: {e}") from None
