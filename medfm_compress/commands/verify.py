"""``medfm-compress verify RUN_DIR``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="verify")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--strict", is_flag=True,
              help="Also fail on artifacts a stage wrote outside RUN_DIR (by default their absence is reported only).")
@click.option("--data", "check_data", is_flag=True,
              help="Also read each stage's data again from its recorded spec and compare it with the digest recorded "
                   "then: names the splits, and for folders the files, that were added, removed or changed.")
def command(run_dir: Path, strict: bool, check_data: bool):
    """Re-hash every artifact recorded in RUN_DIR/manifest.json; exit 1 if one inside RUN_DIR changed or is missing.

    Artifacts written outside RUN_DIR are recorded as external: a missing or changed one is reported on a line of
    its own and does not fail the run directory, unless --strict. With --data the data each stage read is read
    again and must hash as it did then.
    """
    from ..errors import IntegrityError, MedfmError
    from ..manifest import MANIFEST_NAME, Manifest

    if not (run_dir / MANIFEST_NAME).is_file():
        raise MedfmError(f"{run_dir} has no {MANIFEST_NAME}; point at a run directory written by medfm-compress")
    manifest = Manifest(run_dir)
    problems, notes = manifest.verify(strict=strict)
    for note in notes:
        click.echo(note, err=True)
    n = sum(len(s.get("outputs", {})) for s in manifest.data["stages"])
    data_checked: list[str] = []
    data_problems: list[str] = []
    if check_data:
        from ..data.digest import verify_run_data

        data_checked, data_problems = verify_run_data(run_dir)
    for p in problems[:-1] if not data_problems else problems:
        click.echo(p, err=True)
    if data_problems:
        for p in data_problems:
            click.echo(p, err=True)
        artifacts = f"; {len(problems)} of {n} artifacts failed verification too" if problems else ""
        raise IntegrityError(
            f"the data this run read has changed ({len(data_problems)} finding(s) above); restore it or re-run the "
            f"stage on the new data{artifacts}"
        )
    if problems:
        raise IntegrityError(f"{len(problems)} of {n} artifacts failed verification; last: {problems[-1]}")
    external = f" ({len(notes)} external not found as written; see above)" if notes else ""
    click.echo(f"{n - len(notes)} artifacts verified in {run_dir}{external}")
    for line in data_checked:
        click.echo(f"data verified: {line}")
