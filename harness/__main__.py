"""`python -m harness <command> [options]`: the harness's one command line (`python -m harness --help`
lists the commands; `python -m harness <command> --help` explains one, with an example).

The older forms `python -m harness.report`, `harness.sequence`, `harness.sequence_plot` and
`harness.gpu_check` are aliases that call `main` here with the command and their own program name,
so their usage lines and error messages read as they always did.
"""

from __future__ import annotations

import argparse
import sys

from harness.commands import COMMANDS, load

PROG = "python -m harness"


def build_parser(selected: str | None, prog: str = PROG, command_prog: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser. Only the selected command's options are added (the others' modules give
    their one-line help), so a command never pays for another's imports."""
    parser = argparse.ArgumentParser(
        prog=prog, description="LSTM benchmark harness: one command line for its commands.",
        epilog=f"`{prog} COMMAND --help` explains a command, with an example.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     title="commands")
    for name in COMMANDS:
        module = load(name)
        sub = commands.add_parser(
            name, help=module.HELP, description=module.__doc__.strip(),
            epilog=f"example: {module.EXAMPLE}", formatter_class=argparse.RawDescriptionHelpFormatter,
            **({"prog": command_prog} if command_prog and name == selected else {}))
        if name == selected:
            module.add_arguments(sub)
            sub.set_defaults(run=module.run, parser=sub, top_prog=prog)
    return parser


def main(argv: list[str] | None = None, command_prog: str | None = None) -> int:
    """Run `python -m harness ARGV`. command_prog: the program name the command's usage and errors
    show (an alias's old name, e.g. "python -m harness.report"); default "python -m harness COMMAND"."""
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None, command_prog=command_prog)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
