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
    "adapt": "adapt",
    "bench": "bench",
    "distill": "distill",
    "run": "run",
    "demo": "demo",
    "export": "export",
    "quantize": "quantize",
    "report": "report",
    "verify": "verify",
    "predict": "predict",
}


# Extras a command needs beyond the edge install (numpy, click, onnxruntime, pillow, pydicom, tqdm). A command whose
# extra is missing still lists in --help and ends in one line naming the extra (Polygraphy's MissingTool).
COMMAND_EXTRAS: dict[str, tuple[str, ...]] = {
    "adapt": ("train",),
    "distill": ("train",),
    "export": ("export",),
    "quantize": ("export",),
    "run": ("train", "export"),
    "demo": ("train", "export", "modelopt", "trt"),
}
# The importable module that tells whether an extra is installed.
EXTRA_PROBES: dict[str, str] = {"train": "torch", "export": "onnx", "modelopt": "modelopt", "trt": "tensorrt_rtx",
                                "openvino": "openvino", "nifti": "nibabel", "plots": "matplotlib"}
# Top-level modules of the extras: a ModuleNotFoundError for one of them names its extra instead of a traceback.
MODULE_EXTRAS: dict[str, str] = {
    "torch": "train", "torchvision": "train", "timm": "train", "safetensors": "train", "yaml": "train",
    "onnx": "export", "onnxslim": "export", "onnxscript": "export", "matplotlib": "plots",
    "openvino": "openvino", "nncf": "openvino", "modelopt": "modelopt", "tensorrt_rtx": "trt", "tensorrt": "trt",
    "nibabel": "nifti", "monai": "train",
}


def install_hint(what: str, extras: list[str]) -> str:
    """``"<what> needs the 'x' extra: pip install 'medfm-compress[x]'"``."""
    names = ", ".join(f"'{e}'" for e in extras)
    return (f"{what} needs the {names} extra{'s' if len(extras) > 1 else ''}: "
            f"pip install 'medfm-compress[{','.join(extras)}]'")


def missing_extras(command: str) -> list[str]:
    """The extras ``command`` needs that are not installed (found without importing them)."""
    import importlib.util

    return [e for e in COMMAND_EXTRAS.get(command, ()) if importlib.util.find_spec(EXTRA_PROBES[e]) is None]


def _missing_command(name: str, extras: list[str]) -> click.Command:
    hint = install_hint(name, extras)

    def refuse(**_):
        raise MedfmError(hint)

    return click.Command(name, callback=refuse, help=f"(not installed) {hint}.", add_help_option=True,
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


class _Group(click.Group):
    """Loads subcommands lazily and catches user errors once, at the root."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx, name):
        if name in COMMANDS:
            import importlib

            missing = missing_extras(name)
            if missing:
                return _missing_command(name, missing)
            return importlib.import_module(f"medfm_compress.commands.{COMMANDS[name]}").command
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MedfmError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except ModuleNotFoundError as e:
            extra = MODULE_EXTRAS.get((e.name or "").split(".")[0])
            if extra is None:
                raise
            click.echo(f"error: {install_hint(ctx.invoked_subcommand or 'this command', [extra])} "
                       f"(import {e.name} failed)", err=True)
            ctx.exit(1)
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
