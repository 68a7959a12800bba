"""Where cached artifacts (generated data, trained default teachers) live."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """``$MEDFM_CACHE_DIR``, else ``$XDG_CACHE_HOME/medfm-compress``, else ``~/.cache/medfm-compress``."""
    env = os.environ.get("MEDFM_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medfm-compress"
