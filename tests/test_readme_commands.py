"""The README and docs/ as a reader meets them: every `python -m harness <command> ...` line README.md or a
docs/*.md page shows parses as written (the command exists and takes those options and values), every command
is shown somewhere, the README stays a short front door, and every relative link leads to a file that exists.
(tests/test_cli.py runs the commands themselves; the README's plugin example and its two commands have tests
of their own.)"""

import re
import shlex
from pathlib import Path

import pytest

from harness.__main__ import build_parser
from harness.commands import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 250


def pages() -> list[Path]:
    """README.md, then every page of docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shown_commands() -> list[tuple[str, str]]:
    """(page, command line) for every `python -m harness <command> ...` a page shows, page relative to the root."""
    found = set()
    for page in pages():
        for match in re.finditer(r"python3? -m harness ([a-z-]+[^`|\n]*)", page.read_text()):
            line = match.group(1).split("#")[0].strip()
            if line.split()[0] in COMMANDS and "[" not in line:  # not the usage synopses
                found.add((page.relative_to(ROOT).as_posix(), line))
    return sorted(found)


def test_every_command_is_shown():
    shown = {line.split()[0] for _, line in shown_commands()}
    assert shown == set(COMMANDS), f"commands neither README.md nor docs/ shows: {set(COMMANDS) - shown}"


@pytest.mark.parametrize(("page", "line"), [pytest.param(page, line, id=f"{page}: {line}")
                                            for page, line in shown_commands()])
def test_shown_command_parses_as_written(page, line):
    argv = shlex.split(line.replace("...", ""))
    try:
        args = build_parser(argv[0]).parse_args(argv)
    except SystemExit as exit_:
        pytest.fail(f"{page} shows `python -m harness {line}`, which does not parse (exit status {exit_.code})")
    assert args.command == argv[0], page


def test_the_readme_is_a_front_door():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, more than {README_MAX_LINES}: move detail to docs/"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _without_fences(text: str) -> str:
    return re.sub(r"^( *)(```|~~~).*?^\1\2", "", text, flags=re.S | re.M)


def _outside_code(text: str) -> str:
    """The text without its fenced code blocks and inline code spans."""
    return re.sub(r"`[^`\n]*`", "", _without_fences(text))


def _anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, a repeated one numbered as GitHub does (-1, -2 ...)."""
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _without_fences(page.read_text()), re.M):
        slug = _slug(heading)
        seen[slug] = seen.get(slug, -1) + 1
        anchors.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
    return anchors


def relative_links() -> list[tuple[str, str]]:
    """(page, target) for every markdown link or image in README.md and docs/*.md that is not a URL."""
    found = []
    for page in pages():
        for target in re.findall(r"\]\(([^)\s]+)(?: \"[^\"]*\")?\)", _outside_code(page.read_text())):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
                found.append((page.relative_to(ROOT).as_posix(), target))
    return found


def test_pages_have_links_to_check():
    assert any(page == "README.md" and target.startswith("docs/") for page, target in relative_links())


@pytest.mark.parametrize(("page", "target"), [pytest.param(page, target, id=f"{page} -> {target}")
                                              for page, target in relative_links()])
def test_relative_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    file = (ROOT / page).parent / path if path else ROOT / page
    assert file.exists(), f"{page} links to {target}: no such file"
    if anchor and file.suffix == ".md":
        assert anchor in _anchors(file), f"{page} links to {target}: {path or page} has no heading with that anchor"
