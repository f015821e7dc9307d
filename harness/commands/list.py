"""`python -m harness list`: every registered implementation, where it came from, and whether
it can run here (with the backend it would use, or the reason it cannot)."""

from __future__ import annotations

import sys

from harness.commands import options

HELP = "list registered implementations and their availability"
EXAMPLE = "python -m harness list --device cpu --plugin my_lstm"


def list_implementations(device: str, plugins: list[str]) -> str:
    from tabulate import tabulate

    from harness.contract.problem import Problem
    from harness.contract.registry import discover

    registry = discover(plugins)
    probe = Problem(batch=2, length=2, input_size=4, hidden=4, layers=1, device=device)
    rows = []
    for reg in registry:
        support = reg.cls.supports(probe)
        if not support.ok:
            here = f"no: {support.reason}"
        elif not support.timed:
            here = f"agreement only: {reg.cls.backend(probe)}; not timed: {support.reason}"
        else:
            here = f"yes: {reg.cls.backend(probe)}"
        rows.append([reg.name, reg.cls.description, reg.origin, here])
    return tabulate(rows, headers=["name", "description", "registered from", f"available on {device}"])


def add_arguments(parser) -> None:
    options.add_device(parser, aliases=("--lstm-device",))
    options.add_plugin(parser)


def run(args) -> int:
    from harness.contract.grid import GridError, resolve_device
    from harness.contract.registry import RegistryError

    try:
        print(list_implementations(resolve_device("--device", args.device), args.plugins))
    except (GridError, RegistryError) as exc:
        # The top-level program's name, as this command has always printed it.
        print(f"{args.top_prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0
