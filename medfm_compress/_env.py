"""Hardware and software fingerprint recorded with every artifact and report.

Reads only what is cheap and side-effect free: it never initialises CUDA (GPU names come from
``nvidia-smi`` when present) and reports versions of backends only if they are installed.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import shutil
import subprocess

__all__ = ["fingerprint", "package_versions"]

_PACKAGES = (
    "medfm-compress",
    "torch",
    "timm",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxslim",
    "tensorrt",
    "tensorrt-rtx-cu13",
    "nvidia-modelopt",
    "openvino",
    "nncf",
)


def package_versions() -> dict[str, str]:
    """Versions of the packages that influence results, for those that are installed."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _cpuinfo() -> dict[str, str]:
    """The first value of each key in /proc/cpuinfo (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep:
                    info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


# Instruction-set extensions that change which CPU kernels run (int8 dot products, bf16/fp16 arithmetic): two
# machines with the same model name (a cloud "AMD EPYC") but different sets are not comparable for latency.
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",
                "amx_bf16", "asimd", "sve")


def _cpu_features(info: dict[str, str]) -> list[str]:
    have = set((info.get("flags") or info.get("Features") or "").split())
    return [f for f in CPU_FEATURES if f in have]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16); elsewhere bf16 is emulated and slow."""
    return bool({"avx512_bf16", "amx_bf16"} & set(_cpu_features(_cpuinfo())))


def _gpu_info() -> tuple[str | None, str | None]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None, None
    try:
        res = subprocess.run(
            [smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    line = res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else ""
    if not line:
        return None, None
    name, _, driver = line.partition(",")
    return name.strip(), driver.strip() or None


@functools.lru_cache(maxsize=1)
def fingerprint() -> dict:
    """Machine fingerprint: CPU model, its kernel-relevant instruction-set extensions, cores, GPU name and driver,
    OS, Python and package versions."""
    gpu, driver = _gpu_info()
    info = _cpuinfo()
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_features": _cpu_features(info),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": gpu,
        "driver": driver,
        "versions": package_versions(),
    }
