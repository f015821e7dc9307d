"""Every `python -m harness <command> ...` line the README shows parses as written: the command
exists and takes those options and values. (tests/test_cli.py runs the commands themselves; the
README's plugin example and its two commands have tests of their own.)"""

import re
import shlex
from pathlib import Path

import pytest

from harness.__main__ import build_parser
from harness.commands import COMMANDS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def readme_commands() -> list[str]:
    found = set()
    for match in re.finditer(r"python3? -m harness ([a-z-]+[^`|\n]*)", README):
        line = match.group(1).split("#")[0].strip()
        if line.split()[0] in COMMANDS or line.split()[0].startswith("<"):
            found.add(line)
    return sorted(c for c in found if not c.startswith("<") and "[" not in c)  # not the usage synopses


def test_the_readme_shows_every_command():
    shown = {line.split()[0] for line in readme_commands()}
    assert shown == set(COMMANDS), f"commands the README never shows: {set(COMMANDS) - shown}"


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_parses_as_written(line):
    argv = shlex.split(line.replace("...", ""))
    args = build_parser(argv[0]).parse_args(argv)
    assert args.command == argv[0]
