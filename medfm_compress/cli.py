"""The ``medfm-compress`` command line: thin click commands over the library functions.

Each command parses options into one config object, calls one library function and prints the result.
User errors (:class:`~medfm_compress.errors.MedfmError`) end as one line on stderr with the error's exit
status (1, or 3 for a failed gate); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import MedfmError

__all__ = ["main", "cli"]


# Subcommands live in medfm_compress/commands/<module>.py, each exposing a click command named `command`.
# They are imported only when used, so `medfm-compress --help` and `import medfm_compress.cli` stay light.
COMMANDS: dict[str, str] = {
    "bench": "bench",
    "distill": "distill",
    "run": "run",
    "demo": "demo",
    "export": "export",
    "quantize": "quantize",
    "report": "report",
    "verify": "verify",
}


class _Group(click.Group):
    """Loads subcommands lazily and catches user errors once, at the root."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx, name):
        if name in COMMANDS:
            import importlib

            return importlib.import_module(f"medfm_compress.commands.{COMMANDS[name]}").command
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MedfmError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="medfm-compress")
def cli():
    """Distill, quantize, export and benchmark medical-imaging models for deployment."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    import signal

    # Past a file-size limit (ulimit -f) the kernel sends SIGXFSZ, which kills the process mid-write; ignored,
    # the write fails with EFBIG instead and ends as a one-line error with the previous artifact intact.
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    cli.main(args=argv, prog_name="medfm-compress", standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
