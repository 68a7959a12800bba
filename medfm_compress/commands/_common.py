"""Option parsing helpers shared by the commands."""

from __future__ import annotations

import click

__all__ = ["csv_option"]


def csv_option(value: str | None, cast=str) -> tuple | None:
    """Parse ``"a,b,c"`` into a tuple (None stays None); a bad item is a click usage error."""
    if value is None:
        return None
    try:
        return tuple(cast(v.strip()) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of {cast.__name__}") from None
