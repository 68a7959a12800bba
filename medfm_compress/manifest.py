"""The run directory's ``manifest.json``: one record per stage with hashed inputs and outputs.

Stages communicate through files; the manifest says which file came from which inputs and config, so any
stage can run alone, elsewhere, later, and ``verify`` can tell when an artifact changed.
"""

from __future__ import annotations

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

__all__ = ["Manifest", "StageRecord", "MANIFEST_NAME", "MANIFEST_VERSION", "check_inputs"]

MANIFEST_NAME = "manifest.json"
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
    try:
        rel = str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        rel = str(path.resolve())
    return {"path": rel, "sha256": sha256_file(path), "size_bytes": path.stat().st_size}


class Manifest:
    """Reads and appends to ``RUN_DIR/manifest.json``."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / MANIFEST_NAME
        self.data: dict[str, Any] = {"manifest_version": MANIFEST_VERSION, "stages": []}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise MedfmError(f"{self.path} is not valid JSON ({e}); delete it to start the run afresh") from None
            if self.data.get("manifest_version") != MANIFEST_VERSION:
                raise MedfmError(
                    f"{self.path} has manifest_version {self.data.get('manifest_version')!r}, "
                    f"this tool writes {MANIFEST_VERSION}; use a new run directory"
                )

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
        stages = [
            s for s in self.data["stages"]
            if not (s.get("stage") == rec.stage and (not paths or paths & {o["path"] for o in s.get("outputs", {}).values()}))
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

    def verify(self) -> list[str]:
        """Re-hash every recorded output; return one line per artifact that changed or is missing."""
        problems = []
        for s in self.data["stages"]:
            for name, entry in s.get("outputs", {}).items():
                path = Path(entry["path"])
                if not path.is_absolute():
                    path = self.run_dir / path
                if not path.exists():
                    problems.append(f"{s['stage']}/{name}: {path} is missing")
                elif sha256_file(path) != entry["sha256"]:
                    problems.append(f"{s['stage']}/{name}: {path} changed since it was written (sha256 differs)")
        return problems

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
