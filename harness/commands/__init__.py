"""`python -m harness <command>`: one module per command, registered in COMMANDS.

Each command module has HELP (one line, shown in `python -m harness --help`), EXAMPLE (one command
line, the epilog of its own --help), `add_arguments(parser)` and `run(args) -> int` (the exit
status). Its module level imports nothing heavy: `python -m harness report` never loads torch.
A new command is a new module here and one line in COMMANDS.
"""

from __future__ import annotations

import importlib

# command name -> module, in the order `--help` lists them
COMMANDS = {
    "list": "harness.commands.list",
    "report": "harness.commands.report",
    "compare": "harness.commands.compare",
    "sequence": "harness.commands.sequence",
    "replot": "harness.commands.replot",
    "gpu-check": "harness.commands.gpu_check",
    "sweep": "harness.commands.sweep",
}


def load(name: str):
    return importlib.import_module(COMMANDS[name])
