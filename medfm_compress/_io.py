"""Atomic file writes and hashing.

Every artifact is written to a temporary file in the destination directory, flushed, fsync'ed and then
renamed over the destination, so an interrupted write never leaves a truncated artifact and a failed write
(disk full, permission) leaves the previous artifact intact.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import MedfmError

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "sha256_file",
    "ensure_dir",
    "new_file_mode",
    "read_json",
    "no_partial_output",
]


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) or raise a one-line error saying why it cannot be used."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MedfmError(f"cannot create output directory {p}: {e.strerror}; choose a writable --out") from None
    if not os.access(p, os.W_OK):
        raise MedfmError(f"output directory {p} is not writable; choose a writable --out")
    return p


def _os_error_message(path: Path, e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing {path}; free space and retry (the previous file, if any, is intact)"
    if e.errno == errno.EFBIG:
        # A file-size limit (ulimit -f, RLIMIT_FSIZE) or the filesystem's largest file: to the user, a full disk.
        return (f"disk full or file size limit reached while writing {path} (file too large); free space or raise "
                "the limit (ulimit -f) and retry (the previous file, if any, is intact)")
    return f"cannot write {path}: {e.strerror or e}; check the directory exists and is writable"


def new_file_mode() -> int:
    """The permission bits ``open(path, "w")`` would give a new file under the current umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    The temporary file is removed if the block raises, so nothing half-written is ever left behind.
    """
    dest = Path(path)
    ensure_dir(dest.parent if str(dest.parent) else ".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix or ".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600; an artifact gets the mode a new file gets here (0644 under umask 022), so a
        # runtime service running as another user can read it.
        os.chmod(tmp, new_file_mode())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise MedfmError(_os_error_message(dest, e)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover - numpy is a hard dependency
        pass
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple | set):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: str | os.PathLike, what: str, error: type[MedfmError] = MedfmError, missing_hint: str = "") -> Any:
    """The JSON document at ``path``; missing or unreadable is a one-line ``error`` naming ``what`` it is."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist{missing_hint}") from None
    except (OSError, ValueError) as e:
        raise error(f"{what} {p} is not valid JSON ({e})") from None


@contextlib.contextmanager
def no_partial_output(out: str | os.PathLike, keep_log: str | None = None,
                      keep_on: tuple[type[BaseException], ...] = ()) -> Iterator[Path]:
    """Run a stage that writes into folder ``out``; if it fails, remove everything it created there.

    Files and folders that existed before are left as they were (a failed re-run does not destroy an earlier
    good run). ``keep_log`` names a log file the stage writes (e.g. ``train.log``): when the stage fails it is
    kept, renamed ``<stem>.error.log``, so what is left says what it is. A folder the stage created and that
    ends up empty is removed. Exceptions in ``keep_on`` (an interruption that saved a checkpoint to resume
    from) leave everything in place.
    """
    root = Path(out)
    existed = root.exists()
    before = {p for p in root.rglob("*")} if existed else set()
    try:
        yield root
    except keep_on:
        raise
    except BaseException:
        log = root / keep_log if keep_log else None
        kept = None
        if log is not None and log.is_file() and log not in before:
            kept = root / f"{log.stem}.error.log"
            with contextlib.suppress(OSError):
                os.replace(log, kept)
        if root.exists():
            created = [p for p in root.rglob("*") if p not in before and p != kept]
            for p in sorted(created, key=lambda q: len(q.parts), reverse=True):
                with contextlib.suppress(OSError):
                    if p.is_dir() and not p.is_symlink():
                        p.rmdir() if not any(p.iterdir()) else None
                    else:
                        p.unlink()
            if not existed:
                with contextlib.suppress(OSError):
                    if not any(root.iterdir()):
                        root.rmdir()
        raise
