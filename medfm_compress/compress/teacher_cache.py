"""The teacher is paid once: its outputs for every training image and augmented view, memory-mapped on disk.

A distillation runs the frozen teacher on the same inputs again and again: every epoch over the training set, and
every rerun (another student, another loss, a resumed run). :class:`TeacherOutputCache` computes the teacher's
logits and pooled embedding once per (image, view) and keeps them in ``.npy`` files opened as memory maps; the
student trains from them. View ``v`` of image ``i`` is :func:`~medfm_compress.compress.train.augment_batch` with
``epoch=v`` (its parameters depend on the seed, the view and the image index alone), so epoch ``e`` trains on view
``e % views`` and the student sees the very inputs the teacher answered; view 0 of a run without augmentation is the
image itself.

The cache's key covers what the outputs depend on: the teacher's weights and preprocessing, the student-preprocessed
training tensor (data, split, size, normalisation), the augmentation seed, the view count and the augmentation's
version. The fill shows progress with an ETA and resumes where it stopped: each block of outputs is flushed before
its rows are marked done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._cache import cache_dir
from .._io import atomic_write_json, ensure_dir

__all__ = ["TeacherOutputCache", "teacher_fingerprint", "tensor_fingerprint", "default_cache_dir",
           "choose_precision", "AUGMENT_VERSION", "MIN_FILL_COSINE"]

# Bumped when augment_batch changes what a view is: older caches then miss instead of serving other inputs.
AUGMENT_VERSION = 1
_FORMAT = 1
# A faster precision fills the cache only when its outputs stay this close to fp32's (per image, logits and
# embeddings alike); measured on a CLIP ViT-B/16 here, bf16 autocast kept 0.99993.
MIN_FILL_COSINE = 0.999


def default_cache_dir() -> Path:
    return cache_dir() / "teacher-outputs"


def _digest_arrays(arrays) -> str:
    h = hashlib.sha256()
    for name, a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def teacher_fingerprint(model) -> str:
    """sha256 of a torch module's parameters and buffers (names, shapes, dtypes, values)."""
    import torch

    with torch.no_grad():
        return _digest_arrays((k, v.detach().float().cpu().numpy() if v.dtype == torch.bfloat16 else v.detach().cpu().numpy())
                              for k, v in model.state_dict().items())


def tensor_fingerprint(x) -> str:
    """sha256 of a tensor's (or array's) values, dtype and shape."""
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return _digest_arrays([("x", a)])


class TeacherOutputCache:
    """Teacher outputs for ``n`` images x ``views`` in ``directory/<key>/``: ``emb.npy`` ``(views, n, D)``,
    ``logits.npy`` ``(views, n, C)`` when the teacher has a head, ``patch.npy`` ``(views, n, D', g, g)`` (float16)
    when its patch-token map is kept, ``done.npy`` ``(views, n)``, ``meta.json``."""

    def __init__(self, directory: str | Path, key: dict[str, Any], n: int, views: int):
        if n < 1 or views < 1:
            raise ValueError(f"a teacher output cache needs images and views, got n={n} views={views}")
        self.key = key
        # The view count is part of the name: runs with other counts keep caches of their own side by side.
        self.digest = hashlib.sha256(json.dumps({**key, "views": views, "n": n, "format": _FORMAT},
                                                sort_keys=True).encode()).hexdigest()[:32]
        self.path = Path(directory) / self.digest
        self.n, self.views = n, views
        self.emb: np.ndarray | None = None
        self.logits: np.ndarray | None = None
        self.patch: np.ndarray | None = None
        self.done: np.ndarray | None = None
        self.computed = 0  # outputs computed by this process (the rest were read back)
        self.engine: dict[str, Any] = {}  # how the outputs were computed (recorded in meta.json when created)

    # ----- storage -----
    def _open(self) -> bool:
        """Open an existing cache; False when there is none (or an unreadable one, which is removed)."""
        meta = self.path / "meta.json"
        if not meta.is_file():
            return False
        try:
            info = json.loads(meta.read_text())
            if info.get("key") != self.key or (info["views"], info["n"]) != (self.views, self.n):
                raise ValueError("key mismatch")
            self.emb = np.load(self.path / "emb.npy", mmap_mode="r+")
            self.logits = np.load(self.path / "logits.npy", mmap_mode="r+") if info["logits_dim"] else None
            self.patch = np.load(self.path / "patch.npy", mmap_mode="r+") if info.get("patch_shape") else None
            self.done = np.load(self.path / "done.npy", mmap_mode="r+")
            if self.done.shape != (self.views, self.n) or self.emb.shape[:2] != (self.views, self.n):
                raise ValueError("shape mismatch")
            return True
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            shutil.rmtree(self.path, ignore_errors=True)
            return False

    def _create(self, emb_dim: int, logits_dim: int | None, patch_shape: tuple[int, ...] | None = None) -> None:
        """Create the arrays in a temporary folder and move it into place (a crash leaves no half-made cache)."""
        ensure_dir(self.path.parent)
        tmp = self.path.parent / f".{self.digest}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        np.lib.format.open_memmap(tmp / "emb.npy", mode="w+", dtype=np.float32, shape=(self.views, self.n, emb_dim)).flush()
        if logits_dim:
            np.lib.format.open_memmap(tmp / "logits.npy", mode="w+", dtype=np.float32,
                                      shape=(self.views, self.n, logits_dim)).flush()
        if patch_shape:
            np.lib.format.open_memmap(tmp / "patch.npy", mode="w+", dtype=np.float16,
                                      shape=(self.views, self.n, *patch_shape)).flush()
        np.lib.format.open_memmap(tmp / "done.npy", mode="w+", dtype=np.bool_, shape=(self.views, self.n)).flush()
        atomic_write_json(tmp / "meta.json", {"key": self.key, "views": self.views, "n": self.n, "emb_dim": emb_dim,
                                              "logits_dim": logits_dim or 0, "format": _FORMAT, "engine": self.engine,
                                              "patch_shape": list(patch_shape) if patch_shape else None})
        try:
            os.replace(tmp, self.path)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
        if not self._open():
            raise OSError(f"could not create the teacher output cache at {self.path}")

    # ----- filling -----
    def fill(self, compute: Callable[[int, np.ndarray], tuple[Any, ...]], batch_size: int = 64,
             log: Callable[[str], None] = print, progress: bool = True, what: str = "teacher") -> None:
        """Compute the outputs not stored yet: ``compute(view, index)`` -> ``(logits or None, embeddings)`` (and, for
        a cache of patch maps, the maps third) for the images ``index`` of ``view``, ``batch_size`` at a time;
        progress (rate, ETA) goes to stderr."""
        from tqdm.auto import tqdm

        if self.done is None and not self._open():
            logits, emb, *maps = compute(0, np.arange(1))
            self._create(int(np.asarray(_np(emb)).shape[1]), int(_np(logits).shape[1]) if logits is not None else None,
                         tuple(_np(maps[0]).shape[1:]) if maps else None)
        todo = int((~self.done).sum())
        if todo == 0:
            log(f"{what} outputs: all {self.views} view(s) x {self.n} images read from {self.path}")
            return
        stored = self.views * self.n - todo
        log(f"{what} outputs: computing {todo} of {self.views} view(s) x {self.n} images"
            + (f" ({stored} already stored)" if stored else "") + f", cached in {self.path}")
        t0 = time.perf_counter()
        bar = tqdm(total=todo, desc=f"{what} outputs", unit="img", disable=not progress, leave=False, file=sys.stderr)
        for view in range(self.views):
            missing = np.flatnonzero(~self.done[view])
            for s in range(0, len(missing), batch_size):
                idx = missing[s : s + batch_size]
                logits, emb, *maps = compute(view, idx)
                self.emb[view, idx] = _np(emb)
                if self.patch is not None:
                    self.patch[view, idx] = _np(maps[0]).astype(np.float16)
                    self.patch.flush()
                if self.logits is not None:
                    if logits is None:
                        raise ValueError("the teacher returned no logits for a cache that holds them")
                    self.logits[view, idx] = _np(logits)
                self.emb.flush()
                if self.logits is not None:
                    self.logits.flush()
                self.done[view, idx] = True  # marked only once its outputs are on disk
                self.done.flush()
                self.computed += len(idx)
                bar.update(len(idx))
        bar.close()
        dt = time.perf_counter() - t0
        log(f"{what} outputs: {self.computed} computed in {dt:.1f} s ({1000 * dt / max(self.computed, 1):.1f} ms "
            "per image)")

    # ----- reading -----
    def get(self, view: int, index, device=None):
        """``(logits or None, embeddings)`` of ``view`` for the images ``index``, as float32 tensors."""
        import torch

        idx = np.asarray(index.cpu() if hasattr(index, "cpu") else index)
        if not self.done[view, idx].all():
            raise RuntimeError("teacher outputs requested before they were computed")
        emb = torch.from_numpy(np.ascontiguousarray(self.emb[view, idx])).to(device)
        logits = (torch.from_numpy(np.ascontiguousarray(self.logits[view, idx])).to(device)
                  if self.logits is not None else None)
        return logits, emb

    def get_patch(self, view: int, index, device=None):
        """The patch maps of ``view`` for the images ``index``, as a float32 tensor."""
        import torch

        idx = np.asarray(index.cpu() if hasattr(index, "cpu") else index)
        if self.patch is None:
            raise RuntimeError("this teacher output cache holds no patch maps")
        return torch.from_numpy(np.ascontiguousarray(self.patch[view, idx], dtype=np.float32)).to(device)


def _np(t) -> np.ndarray:
    if t is None:
        return None  # type: ignore[return-value]
    return t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t, np.float32)


# The most views a teacher answers by default: a small data set trained for many short epochs (a step budget)
# cycles through these instead of paying the teacher again every epoch.
DEFAULT_MAX_VIEWS = 12


def training_views(cfg) -> int:
    """Views of each training image the teacher answers: 1 without augmentation; else ``--teacher-views``, by
    default one per epoch (every epoch its own view, as a teacher run at every step would see), at most
    :data:`DEFAULT_MAX_VIEWS`."""
    if not cfg.loop.augment:
        return 1
    return int(cfg.teacher.views or min(cfg.loop.epochs, DEFAULT_MAX_VIEWS))


def view_inputs(x, index, view: int, augment: bool, seed: int):
    """The student's (and teacher's) input of view ``view`` for the training images ``x`` (their indices ``index``)."""
    from .train import augment_batch

    if not augment:
        return x
    return augment_batch(x.cpu(), np.asarray(index), seed, view).to(x.device)


def teacher_outputs(run, teacher, views: int, patch: bool = False) -> TeacherOutputCache:
    """The run's teacher outputs for every training image and view, computed where the cache lacks them (rank 0
    fills; other ranks wait, then read); ``patch``: its patch-token maps too."""
    import torch

    cfg = run.cfg
    x, src = run.teacher_inputs("train")
    key = {"teacher": getattr(teacher.model, "fingerprint", None) or teacher_fingerprint(teacher.model),
           "teacher_arch": teacher.card.arch,
           "teacher_preprocess": teacher.card.preprocess.to_dict(), "inputs": tensor_fingerprint(x),
           "student_preprocess": src.to_dict(), "augment": bool(cfg.loop.augment),
           "seed": cfg.seed if cfg.loop.augment else None, "augment_version": AUGMENT_VERSION}
    if patch:
        from ..models.features import PATCH_GRID

        key["patch_grid"] = PATCH_GRID
    cache = TeacherOutputCache(cfg.teacher.cache or default_cache_dir(), key, len(x), views)
    batch = cfg.teacher.batch_size or 64
    precision: dict[str, Any] = {"precision": "fp32"}

    def compute(view, idx):
        bi = torch.as_tensor(idx, device=x.device)
        xb = view_inputs(x[bi], idx, view, cfg.loop.augment, cfg.seed)
        runner = precision.get("runner", teacher)
        if patch:
            return runner.outputs(xb, src, batch_size=len(xb), precision=precision["precision"], patch=True)
        return runner.outputs(xb, src, batch_size=len(xb), precision=precision["precision"])

    def fill():
        if not cache._open() or not cache.done.all():  # chosen (and timed) only when there is something to compute
            # (the arrays opened here are the ones fill() then uses)
            # (OpenVINO's graph gives logits and embedding only: a fill of patch maps stays in torch)
            precision.update(choose_precision(teacher, x[: min(len(x), 16)], src, run.log, openvino=not patch))
        cache.engine = {k: v for k, v in precision.items() if k != "runner"}
        cache.fill(compute, batch, run.log, cfg.progress and run.rank == 0,
                   what=f"teacher {teacher.card.arch} ({precision['precision']})")

    if run.distributed:
        import torch.distributed as dist

        if run.rank == 0:
            fill()
        dist.barrier()
        if run.rank != 0:
            fill()
    else:
        fill()
    return cache


class _OpenVINOTeacher:
    """The frozen teacher exported (logits and embedding as two outputs) and run by OpenVINO at bf16: on CPUs with
    native bf16 the fastest engine here for transformer teachers (a CLIP ViT-B/16: 22.6 ms per image against 110 in
    eager fp32, its outputs within cosine 0.9999 of fp32's)."""

    def __init__(self, teacher, example):
        from ..export.openvino import onnx_to_ov
        from ..runtime.openvino_loader import compile_ov

        what = f"teacher {teacher.card.arch}"
        engine = teacher.model if getattr(teacher.model, "is_engine", False) else None
        if engine is not None:  # a teacher held as an engine: its own graph, cut down to the tensors used
            ov_model = engine.openvino_model(onnx_to_ov)
        else:
            ov_model = onnx_to_ov(_torch_graph(teacher.model, example), source=what)
        self.teacher, self.engine = teacher, engine
        self.compiled = compile_ov(ov_model, inference_precision="bf16", source=what)

    def outputs(self, x, student_pre, batch_size=128, precision: str = "openvino-bf16"):
        import torch

        from .taskprep import adapt_batch

        logits, embs = [], []
        for i in range(0, len(x), batch_size):
            xb = adapt_batch(x[i : i + batch_size], student_pre, self.teacher.card.preprocess)
            xn = xb.detach().cpu().numpy()
            if self.engine is not None:
                from ..models.engine_teacher import run_by_name

                lo, em = self.engine.split(run_by_name(self.compiled, xn, self.engine.wanted))
                out = [torch.from_numpy(a) for a in (lo, em) if a is not None]
            else:
                out = [torch.from_numpy(np.asarray(v, np.float32)) for v in self.compiled(xn).values()]
            if len(out) == 2:
                logits.append(out[0])
            embs.append(out[-1])
        return (torch.cat(logits) if logits else None), torch.cat(embs)


def _torch_graph(model, example):
    """The torch teacher exported to ONNX with its logits (where it has a head) and embedding as outputs."""
    import io
    import warnings

    import onnx
    import torch

    from ..models.features import FeatureTap

    class _Both(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            with FeatureTap(self.model) as tap:
                logits, emb = tap.run(x)
            return (emb,) if logits is None else (logits, emb)

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Both(model).eval(), (example,), buf, input_names=["x"], dynamic_axes={"x": {0: "batch"}},
                          opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _openvino_runner(teacher, probe, student_pre, log):
    from ..errors import BackendMissingError
    from .taskprep import adapt_batch

    try:
        return _OpenVINOTeacher(teacher, adapt_batch(probe[:1], student_pre, teacher.card.preprocess).cpu())
    except (ImportError, BackendMissingError):  # OpenVINO is not installed: the torch engines remain
        return None
    except Exception as e:  # noqa: BLE001  # an architecture the exporter or OpenVINO cannot take: the torch engines remain
        log(f"teacher precision: openvino-bf16 unavailable for {teacher.card.arch} "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''})")
        return None


def _fidelity(got, ref) -> float:
    """The lowest per-image cosine of ``got`` to ``ref``; for one output per image (a regression), where a cosine is
    only a sign, ``1 - err**2 / 2`` of the error relative to the outputs' spread (what a cosine would be for that
    relative error)."""
    import torch

    if ref.shape[1] > 1:
        return float(torch.nn.functional.cosine_similarity(got, ref, dim=1).min())
    rel = (got - ref).abs().max() / (ref.std() + ref.abs().mean() + 1e-12)
    return float(1.0 - rel**2 / 2)


def choose_precision(teacher, probe, student_pre, log: Callable[[str], None] = print,
                     openvino: bool = True) -> dict[str, Any]:
    """The fastest engine the teacher's outputs can be computed with here: eager fp32; where the hardware has bf16
    (a GPU, a CPU with AVX512-BF16 / AMX) also bf16 autocast and, on the CPU with OpenVINO installed, the teacher
    exported and run by OpenVINO at bf16; each kept only when its outputs on ``probe`` stay within
    :data:`MIN_FILL_COSINE` of fp32's. Returns ``{"precision", "ms_per_image", "min_cosine", "fp32_ms_per_image"}``
    and, for OpenVINO, ``"runner"`` (an object with the teacher's ``outputs``)."""
    import torch

    from .._env import cpu_has_native_bf16

    candidates: dict[str, Any] = {"fp32": teacher}
    engine = getattr(getattr(teacher, "model", None), "is_engine", False)  # an engine-held teacher: no torch autocast
    if probe.device.type == "cuda" or cpu_has_native_bf16():
        if not engine:
            candidates["bf16"] = teacher
        if probe.device.type == "cpu" and openvino:
            runner = _openvino_runner(teacher, probe, student_pre, log)
            if runner is not None:
                candidates["openvino-bf16"] = runner
    if len(candidates) == 1:
        return {"precision": "fp32"}

    def timed(precision):
        runner = candidates[precision]
        runner.outputs(probe[:2], student_pre, batch_size=2, precision=precision)  # warm-up
        if probe.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = runner.outputs(probe, student_pre, batch_size=len(probe), precision=precision)
        if probe.device.type == "cuda":
            torch.cuda.synchronize()
        return out, 1000 * (time.perf_counter() - t0) / len(probe)

    (ref_logits, ref_emb), fp32_ms = timed("fp32")
    rows = {"fp32": (fp32_ms, 1.0)}
    for precision in list(candidates)[1:]:
        (lo, em), ms = timed(precision)
        cos = [_fidelity(em, ref_emb)]
        if ref_logits is not None and lo is not None:
            cos.append(_fidelity(lo, ref_logits))
        rows[precision] = (ms, float(min(cos)))
    ok = {p: r for p, r in rows.items() if r[1] >= MIN_FILL_COSINE}
    best = min(ok, key=lambda p: ok[p][0])
    log("teacher precision: " + ", ".join(f"{p} {ms:.1f} ms/image (cosine to fp32 {c:.5f})"
                                          for p, (ms, c) in rows.items())
        + f"; filling in {best}" + ("" if best == "fp32" else f" ({fp32_ms / ok[best][0]:.1f}x fp32)"))
    chosen = {"precision": best, "ms_per_image": round(ok[best][0], 3), "min_cosine": round(ok[best][1], 6),
              "fp32_ms_per_image": round(fp32_ms, 3)}
    return chosen | ({"runner": candidates[best]} if candidates[best] is not teacher else {})
