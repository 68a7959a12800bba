"""User-facing errors.

Every error a user can cause (bad file, bad flag, bad data) is a :class:`MedfmError`. The CLI catches it
once, prints its one-line message and exits with status 1. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "MedfmError",
    "ConfigError",
    "DataError",
    "ModelError",
    "ExportError",
    "BackendMissingError",
    "IntegrityError",
    "GateFailure",
    "UsageError",
    "first_line",
]


class MedfmError(Exception):
    """Base class for errors caused by user input; the message says what is wrong and how to fix it."""

    exit_code = 1

    def __init__(self, message: str):
        # Keep the message on one line: the CLI prints exactly this.
        super().__init__(" ".join(str(message).split()))


class ConfigError(MedfmError):
    """An option, recipe or configuration value is invalid."""


class DataError(MedfmError):
    """A data spec, file or array is missing, corrupt or inconsistent."""


class ModelError(MedfmError):
    """A model spec, architecture or weight file cannot be used."""


class ExportError(MedfmError):
    """An export or quantization step failed a check."""


class BackendMissingError(MedfmError):
    """An optional backend is not installed."""

    def __init__(self, backend: str, extra: str, detail: str = ""):
        msg = f"{backend} is not installed; install it with: pip install 'medfm-compress[{extra}]'"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class IntegrityError(MedfmError):
    """An artifact does not match the hash recorded in the manifest."""


class UsageError(MedfmError):
    """Options that contradict each other or ask for nothing (a gate with nothing to judge); exit status 2, as
    for click's own usage errors."""

    exit_code = 2


class GateFailure(MedfmError):
    """A benchmark or parity gate failed; exit status 3 so CI can tell it from a usage error."""

    exit_code = 3


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first non-empty line of a third-party exception's message (for one-line errors), or its type name."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0][:limit] if lines else type(e).__name__
