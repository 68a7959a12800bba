"""``medfm-compress verify RUN_DIR``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="verify")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
def command(run_dir: Path):
    """Re-hash every artifact recorded in RUN_DIR/manifest.json; exit 1 if any changed or is missing."""
    from ..errors import IntegrityError, MedfmError
    from ..manifest import MANIFEST_NAME, Manifest

    if not (run_dir / MANIFEST_NAME).is_file():
        raise MedfmError(f"{run_dir} has no {MANIFEST_NAME}; point at a run directory written by medfm-compress")
    manifest = Manifest(run_dir)
    problems = manifest.verify()
    n = sum(len(s.get("outputs", {})) for s in manifest.data["stages"])
    if problems:
        for p in problems[:-1]:
            click.echo(p, err=True)
        raise IntegrityError(f"{len(problems)} of {n} artifacts failed verification; last: {problems[-1]}")
    click.echo(f"{n} artifacts verified in {run_dir}")
