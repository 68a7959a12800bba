"""The run directory's ``manifest.json``: one record per stage with hashed inputs and outputs.

Stages communicate through files; the manifest says which file came from which inputs and config, so any
stage can run alone, elsewhere, later, and ``verify`` can tell when an artifact changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._env import fingerprint
from ._io import atomic_write_json, sha256_file
from .errors import IntegrityError, MedfmError
from .layout import RunLayout

__all__ = ["Manifest", "StageRecord", "MANIFEST_NAME", "MANIFEST_VERSION", "check_inputs"]

MANIFEST_NAME = RunLayout(".").manifest.name
MANIFEST_VERSION = 1


@dataclass
class StageRecord:
    """What one stage read and wrote."""

    stage: str
    config: dict[str, Any]
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "config": self.config,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "metrics": self.metrics,
            "started": self.started,
            "finished": self.finished,
        }


def _file_entry(path: Path, root: Path) -> dict[str, Any]:
    """A file's record: its path relative to the run directory, or, for a file outside it, the absolute path
    marked ``external`` (the run's verdict does not depend on it)."""
    try:
        entry = {"path": str(path.resolve().relative_to(root.resolve()))}
    except ValueError:
        entry = {"path": str(path.resolve()), "external": True}
    return {**entry, "sha256": sha256_file(path), "size_bytes": path.stat().st_size}


@contextlib.contextmanager
def _locked(directory: Path):
    """An exclusive advisory lock on the run directory itself for the duration of the block (no lock file is left
    behind): two stages that finish at once on one run directory take turns at its manifest instead of one
    overwriting the other's record. Where ``fcntl`` does not exist (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on the platforms we test
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class Manifest:
    """Reads and appends to ``RUN_DIR/manifest.json``."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / MANIFEST_NAME
        self.data: dict[str, Any] = self._read()

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"manifest_version": MANIFEST_VERSION, "stages": []}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise MedfmError(f"{self.path} is not valid JSON ({e}); delete it to start the run afresh") from None
        if data.get("manifest_version") != MANIFEST_VERSION:
            raise MedfmError(
                f"{self.path} has manifest_version {data.get('manifest_version')!r}, "
                f"this tool writes {MANIFEST_VERSION}; use a new run directory"
            )
        return data

    def start(self, stage: str, config: dict[str, Any], inputs: dict[str, str | os.PathLike] | None = None) -> StageRecord:
        """Begin a record; inputs that are files are hashed now, before the stage reads them."""
        rec = StageRecord(stage=stage, config=config)
        for name, p in (inputs or {}).items():
            path = Path(p)
            if path.is_file():
                rec.inputs[name] = _file_entry(path, self.run_dir)
            else:
                rec.inputs[name] = {"spec": str(p)}
        return rec

    def finish(self, rec: StageRecord, outputs: dict[str, str | os.PathLike], metrics: dict[str, Any] | None = None) -> None:
        """Hash outputs, replace any earlier record of the same stage, and write the manifest atomically."""
        for name, p in outputs.items():
            rec.outputs[name] = _file_entry(Path(p), self.run_dir)
        rec.metrics.update(metrics or {})
        rec.finished = time.time()
        # A re-run of a stage replaces its earlier record; variants of one stage (several quantized models)
        # write different files and keep a record each.
        paths = {o["path"] for o in rec.outputs.values()}
        with _locked(self.run_dir):
            # Re-read under the lock: another stage may have finished on this run directory since we opened it.
            self.data = self._read()
            stages = [
                s for s in self.data["stages"]
                if not (s.get("stage") == rec.stage
                        and (not paths or paths & {o["path"] for o in s.get("outputs", {}).values()}))
            ]
            stages.append(rec.to_dict())
            self.data["stages"] = stages
            self.data["fingerprint"] = fingerprint()
            atomic_write_json(self.path, self.data)

    def stage(self, name: str) -> dict[str, Any] | None:
        """The latest record of stage ``name``, or None."""
        for s in reversed(self.data["stages"]):
            if s.get("stage") == name:
                return s
        return None

    def verify(self, strict: bool = False) -> tuple[list[str], list[str]]:
        """Re-hash every recorded output: ``(problems, notes)``, one line each.

        Files inside the run directory are its verdict: a missing or changed one is a problem. Files a stage wrote
        outside it (``export RUN --out /elsewhere/x.onnx``) are recorded as external: a missing or changed one is
        a note, not a failure, unless ``strict``.
        """
        problems, notes = [], []
        for s in self.data["stages"]:
            for name, entry in s.get("outputs", {}).items():
                path = Path(entry["path"])
                external = bool(entry.get("external")) or path.is_absolute()
                if not path.is_absolute():
                    path = self.run_dir / path
                if not path.exists():
                    line = f"{s['stage']}/{name}: {path} is missing"
                elif sha256_file(path) != entry["sha256"]:
                    line = f"{s['stage']}/{name}: {path} changed since it was written (sha256 differs)"
                else:
                    continue
                if external and not strict:
                    notes.append(f"external (outside the run directory, not part of its verdict): {line}")
                else:
                    problems.append(line)
        return problems, notes

    def check_input(self, path: str | os.PathLike, force: bool = False) -> bool:
        """Refuse an input file recorded as an output whose bytes changed since, unless ``force``.

        With ``force`` a changed file is used, and a one-line warning on stderr says so. Returns True when the
        file differs from its record (and was let through by ``force``).
        """
        p = Path(path).resolve()
        for s in self.data["stages"]:
            for entry in s.get("outputs", {}).values():
                q = Path(entry["path"])
                q = (q if q.is_absolute() else self.run_dir / q).resolve()
                if q == p and p.exists() and sha256_file(p) != entry["sha256"]:
                    if force:
                        print(f"warning: {p} differs from the sha256 recorded in {self.path}; "
                              "using it anyway (--force)", file=sys.stderr, flush=True)
                        return True
                    raise IntegrityError(
                        f"{p} differs from the sha256 recorded in {self.path}; re-run stage "
                        f"'{s['stage']}' or pass --force to use it anyway"
                    )
        return False


def check_inputs(paths, force: bool = False) -> None:
    """:meth:`Manifest.check_input` for each existing file against the ``manifest.json`` beside it, if any.

    For inputs given by path (a teacher's weights, a benchmarked artifact) that may live in some run directory.
    """
    for path in paths:
        p = Path(path)
        if p.is_file() and (p.parent / MANIFEST_NAME).is_file():
            Manifest(p.parent).check_input(p, force)
