"""README.md is the front page: short, the two set-up commands, links into docs/.

Its ```bash blocks (the five-command tour) are executed, with the docs pages', by tests/test_docs.py. ```sh blocks
are the two set-up commands (`make demo`, `make test`): CI itself runs `make test`, and `make demo` is the demo
test's job.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
MAX_LINES = 200


def test_readme_has_the_two_setup_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci


def test_readme_is_short_and_names_no_milestone():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_LINES, (
        f"README.md has {len(text.splitlines())} lines (at most {MAX_LINES})"
    )
    assert not re.search(r"\bstop \d+", text, flags=re.I), "README.md names an internal milestone ('stop NN')"
    assert not re.search(r"\bsession\b", text, flags=re.I), "README.md names a working session"


def test_readme_links_resolve():
    """Relative links of the front page point at files of the repository (GitHub renders them as is)."""
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README.read_text())
    missing = [link for link in links if not (README.parent / link).exists()]
    assert links and not missing, f"README.md links to missing files: {missing}"
