"""The documentation (README.md and docs/, built by MkDocs): its examples run, its CLI reference is complete.

Every ```bash block of README.md and then of every docs page, in the order of mkdocs.yml's nav, is executed in one
scratch directory shared by all pages (later blocks use earlier outputs: the tour's run directory, the head-CT
slices). Blocks that must not run are fenced ```text or ```console. `make docs` (run by `make test`) builds the site
with `mkdocs build --strict`, which fails on a broken internal link or a docstring the reference cannot render.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
MKDOCS_YML = REPO / "mkdocs.yml"
BLOCK_TIMEOUT_S = 900


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def nav_pages() -> list[Path]:
    """The docs pages in the order of mkdocs.yml's nav (the order their blocks run in)."""
    yaml = pytest.importorskip("yaml")

    def walk(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from walk(value)

    nav = yaml.safe_load(MKDOCS_YML.read_text())["nav"]
    return [DOCS / page for page in walk(nav)]


def executed_pages() -> list[Path]:
    return [README, *nav_pages()]


def test_every_docs_page_is_in_the_nav():
    """A page outside the nav would neither be reachable nor have its blocks run."""
    pages = {p.relative_to(DOCS) for p in DOCS.rglob("*.md")}
    listed = {p.relative_to(DOCS) for p in nav_pages()}
    assert pages == listed, (
        f"not in mkdocs.yml's nav: {sorted(map(str, pages - listed))}; "
        f"missing files: {sorted(map(str, listed - pages))}"
    )


def test_tour_page_includes_the_readme_tour():
    """The README's tour runs once (as README blocks) and is shown in the docs through a snippet, not a copy."""
    readme = README.read_text()
    assert "--8<-- [start:tour]" in readme and "--8<-- [end:tour]" in readme
    tour = (DOCS / "getting-started" / "tour.md").read_text()
    assert '--8<-- "README.md:tour"' in tour
    start, end = readme.index("[start:tour]"), readme.index("[end:tour]")
    assert len(bash_blocks(readme[start:end])) == 5, "the README's tour is five commands"


def _cli_commands() -> list[tuple[str, click.Command]]:
    from medfm_compress.cli import cli

    out = []

    def walk(cmd: click.Command, path: str, ctx: click.Context) -> None:
        out.append((path, cmd))
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                walk(sub, f"{path} {name}", click.Context(sub, parent=ctx, info_name=name))

    walk(cli, "medfm-compress", click.Context(cli, info_name="medfm-compress"))
    return out


def _sections(html: str) -> dict[str, str]:
    """The rendered reference cut at its headings: heading id -> the HTML up to the next heading."""
    parts = re.split(r'<h[1-6] id="([^"]+)"[^>]*>', html)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_cli_reference_covers_every_option():
    """docs/reference/cli.md, rendered by mkdocs-click as MkDocs does, has a section for every command that lists
    every one of its options."""
    markdown = pytest.importorskip("markdown")
    pytest.importorskip("mkdocs_click")
    html = markdown.markdown(
        (DOCS / "reference" / "cli.md").read_text(), extensions=["attr_list", "toc", "tables", "mkdocs-click"]
    )
    sections = _sections(html)
    missing, options = [], 0
    for path, cmd in _cli_commands():
        if cmd.help and cmd.help.startswith("(not installed)"):
            pytest.skip(f"{path} is not installed here: its options cannot be listed")
        section = sections.get(path.replace(" ", "-"))
        if section is None:
            missing.append(f"{path} (no section)")
            continue
        for param in cmd.params:
            if isinstance(param, click.Option):
                options += 1
                opts = [*param.opts, *param.secondary_opts]
                missing += [f"{path} {opt}" for opt in opts if f"<code>{opt}</code>" not in section]
    assert options > 100, f"only {options} options found: is the CLI complete?"
    assert not missing, f"not in the CLI reference: {missing}"


def test_benchmarks_page_is_generated_from_every_result():
    """docs/benchmarks.md's tables come from benchmarks/results/*.json at build time, each with its machine."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_tables", DOCS / "hooks" / "benchmark_tables.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    assert hook.MARKER in (DOCS / "benchmarks.md").read_text()
    text = hook.render_all()
    sections = text.split("\n## ")
    results = sorted((REPO / "benchmarks" / "results").glob("*.json"))
    assert results and len(sections) >= len(results)
    for path in results:
        assert f"## {path.name}\n" in text, f"no section for {path.name}"
    assert all("Machine: " in section for section in sections)


@pytest.mark.slow  # the tour and every guide's chain: minutes
@pytest.mark.timeout(1800)  # every block of README.md and the docs, the real-CT chain included
def test_docs_bash_blocks_run(tmp_path, cpp_build):
    blocks = [
        (page, i, block) for page in executed_pages() for i, block in enumerate(bash_blocks(page.read_text()))
    ]
    assert blocks, "README.md and docs/ have no executable bash blocks"
    env = dict(os.environ)
    env["MEDFM_RUN"] = str(cpp_build / "medfm-run")  # the C++ CLI the blocks call
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for page, i, block in blocks:
        where = f"{page.relative_to(REPO)} bash block {i}"
        # Each block in its own process group: a block past its time is killed with everything it started.
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=tmp_path,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            pytest.fail(f"{where} ran past {BLOCK_TIMEOUT_S} s:\n{block}\n{err[-3000:]}")
        assert proc.returncode == 0, f"{where} failed ({proc.returncode}):\n{block}\n{err[-3000:]}"
