"""Options shared by the commands, each defined once: --device, --impl, --plugin (alias --lstm-plugin), and the
argparse types of numbers. Every number goes through harness.contract.grid's parsers, so nan, inf, a negative
or a non-number is refused the same way here as by the pytest options; the wording is argparse's
(`argument --iters: '0' must be positive`), naming the option and the value as given."""

from __future__ import annotations

import argparse
import math

# harness.contract.grid imports torch: it is imported when an option is parsed or added, not before, so that
# `report` and `compare`, which read results files only, never load torch.
SMALLEST_POSITIVE = math.nextafter(0.0, 1.0)  # parse_number's minimum is inclusive: this makes it "> 0"


def number(kind=int, minimum=None, maximum=None):
    """An argparse type: one number of `kind` in [minimum, maximum] (either bound may be None)."""
    low = -math.inf if minimum is None else minimum

    def parse(text):
        from harness.contract.grid import GridError, parse_number

        try:
            return parse_number("", text, kind, minimum=low, maximum=maximum)
        except GridError as exc:
            raise argparse.ArgumentTypeError(_wording(str(exc), text, kind, minimum, maximum)) from None
    parse.__name__ = "integer" if kind is int else "number"  # argparse names the type in some messages
    return parse


def _wording(message: str, text: str, kind, minimum, maximum) -> str:
    if "finite" in message:
        return f"{text!r} is not a finite number"
    if "is not" in message:
        return f"{text!r} is not {'an integer' if kind is int else 'a number'}"
    if maximum is None and minimum in (1, SMALLEST_POSITIVE):
        return f"{text!r} must be positive"
    if maximum is None:
        return f"{text!r} is below the minimum {minimum}"
    if minimum is None:
        return f"{text!r} is above the maximum {maximum}"
    return f"{text!r} is outside {minimum} to {maximum}"


def positive(kind=int):
    """An argparse type: an integer >= 1, or a finite float > 0."""
    return number(kind, 1 if kind is int else SMALLEST_POSITIVE)


def add_device(parser, *, choices: bool = True, aliases=(), help: str | None = None) -> None:
    """--device (and any older spellings): auto, cpu or cuda; resolved by the command (resolve_device)."""
    from harness.contract.grid import DEVICE_CHOICES

    parser.add_argument(*aliases, "--device", dest="device", default="auto",
                        choices=DEVICE_CHOICES if choices else None, metavar=None if choices else "DEVICE",
                        help=help or f"{', '.join(DEVICE_CHOICES)} (auto: CUDA when a GPU is visible)")


def add_impl(parser, *, default: str, help: str) -> None:
    """--impls (the spelling of the pytest option and the sweep), also taken as --impl."""
    parser.add_argument("--impls", "--impl", dest="impl", default=default, metavar="NAME[,NAME..]", help=help)


def add_no_plots(parser, *, help: str) -> None:
    """--no-plots, also taken as --no-plot: one spelling for every command that draws figures."""
    parser.add_argument("--no-plots", "--no-plot", dest="no_plots", action="store_true", help=help)


def add_plugin(parser) -> None:
    """--plugin MODULE (also spelled --lstm-plugin, as the pytest option): import MODULE so what it registers joins."""
    parser.add_argument("--plugin", "--lstm-plugin", dest="plugins", action="append", default=[], metavar="MODULE",
                        help="also import MODULE so its @register implementations join (repeatable)")


def error_prefix(args) -> str:
    """The prefix of a command's own error lines: its program name without `python -m ` (so
    `harness.report: error: ...` through the old form, `harness report: error: ...` through the new)."""
    return args.parser.prog.removeprefix("python -m ")
