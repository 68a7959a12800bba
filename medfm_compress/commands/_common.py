"""Option parsing helpers shared by the commands."""

from __future__ import annotations

import click

__all__ = ["csv_option", "foreign_model_options"]


def csv_option(value: str | None, cast=str) -> tuple | None:
    """Parse ``"a,b,c"`` into a tuple (None stays None); a bad item is a click usage error."""
    if value is None:
        return None
    try:
        return tuple(cast(v.strip()) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of {cast.__name__}") from None


def foreign_model_options(fn):
    """``--input-size``, ``--channels``, ``--mean``, ``--std``: the preprocessing of an ONNX without medfm metadata
    (quantize and predict take the same four)."""
    for option in reversed((
        click.option("--input-size", default=None, type=int, help="For an ONNX without medfm metadata: input size."),
        click.option("--channels", default=None, type=int, help="For an ONNX without medfm metadata: channels."),
        click.option("--mean", default=None,
                     help="For an ONNX without medfm metadata: per-channel mean, e.g. 0.485,0.456,0.406."),
        click.option("--std", default=None, help="For an ONNX without medfm metadata: per-channel std."),
    )):
        fn = option(fn)
    return fn


def teacher_normalisation_options(fn):
    """``--teacher-mean`` / ``--teacher-std`` (adapt and distill): a teacher's own normalisation, parsed into
    tuples of floats under the same names."""
    for option in reversed((
        click.option("--teacher-mean", default=None, metavar="M[,M,M]", callback=_floats,
                     help="The teacher's own normalisation mean, one value or one per channel, for a teacher built "
                     "from an architecture and weights (default: its pretraining's from timm, else the data's)."),
        click.option("--teacher-std", default=None, metavar="S[,S,S]", callback=_floats,
                     help="The teacher's normalisation std (with --teacher-mean)."),
    )):
        fn = option(fn)
    return fn


def _floats(_ctx, _param, value):
    return csv_option(value, float)


def field_default(config: type, name: str) -> str:
    """``" [default: X]"`` for help text, from a config dataclass's own default of ``name`` (defaults live once, in
    the config); empty where the field defaults to None (the library then decides)."""
    from ..config import PartedConfig

    value = (config.option_default(name) if issubclass(config, PartedConfig)
             else config.__dataclass_fields__[name].default)
    return f" [default: {value}]" if value is not None else ""


def given_options(options: dict) -> dict:
    """The options given on the command line (every option defaults to None), as config keyword arguments."""
    return {k: v for k, v in options.items() if v is not None}
