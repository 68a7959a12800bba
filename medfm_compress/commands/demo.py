"""``medfm-compress demo`` (defined with ``run`` in commands/run.py)."""

from .run import demo_command as command

__all__ = ["command"]
