"""`python -m harness list`: every registered implementation, where it came from, and whether
it can run here (with the backend it would use, or the reason it cannot)."""

from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from harness.contract.grid import DEVICE_CHOICES, GridError, resolve_device
from harness.contract.problem import Problem
from harness.contract.registry import RegistryError, discover


def list_implementations(device: str, plugins: list[str]) -> str:
    registry = discover(plugins)
    probe = Problem(batch=2, length=2, input_size=4, hidden=4, layers=1, device=device)
    rows = []
    for reg in registry:
        support = reg.cls.supports(probe)
        here = f"yes: {reg.cls.backend(probe)}" if support.ok else f"no: {support.reason}"
        rows.append([reg.name, reg.cls.description, reg.origin, here])
    return tabulate(rows, headers=["name", "description", "registered from", f"available on {device}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness")
    commands = parser.add_subparsers(dest="command", required=True)
    lister = commands.add_parser("list", help="list registered implementations and their availability")
    lister.add_argument("--lstm-device", "--device", dest="device", default="auto", choices=DEVICE_CHOICES)
    lister.add_argument("--lstm-plugin", dest="plugins", action="append", default=[], metavar="MODULE",
                        help="also import MODULE and list what it registers (repeatable)")
    args = parser.parse_args(argv)
    try:
        print(list_implementations(resolve_device("--device", args.device), args.plugins))
    except (GridError, RegistryError) as exc:
        print(f"python -m harness: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
