"""The hand-written pages point at each other by path and heading: every link must
land (issue 19 moved most of the README into pages next to the code), and the
README stays a front door whose two commands are the ones CI runs."""

import re
from pathlib import Path

from blueprint.topology import ROOT

GENERATED_OR_VENDORED = {"node_modules", ".venv", "site", ".run", "test-artifacts", "crds"}
FENCED = re.compile(r"^```.*?^```", re.S | re.M)
HEADING = re.compile(r"^#+\s+(.*)$", re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def pages() -> list[Path]:
    return sorted(
        path
        for path in ROOT.rglob("*.md")
        if not GENERATED_OR_VENDORED & set(path.relative_to(ROOT).parts)
    )


def prose(page: Path) -> str:
    return FENCED.sub("", page.read_text())


def anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_lands_on_a_file_and_heading():
    anchors = {page: {anchor(h) for h in HEADING.findall(prose(page))} for page in pages()}
    broken = []
    for page in pages():
        for target in LINK.findall(prose(page)):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, fragment = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists() or (fragment and fragment not in anchors.get(dest, set())):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert pages() and not broken


def test_the_readme_is_a_front_door_with_the_two_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    commands = readme[readme.index("## The two commands") :]
    assert re.search(r"^make up\b", commands, re.M)
    assert re.search(r"^make test\b", commands, re.M)
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M)
