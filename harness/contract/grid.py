"""Named grids and the validation of grid options, ending in a list of Problems."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from harness.contract.problem import DTYPES, Problem


class GridError(ValueError):
    """A grid option has an invalid value; the message starts with the option's name."""


@dataclass(frozen=True)
class Grid:
    name: str
    batch: tuple[int, ...]
    length: tuple[int, ...]
    hidden: tuple[int, ...]
    layers: tuple[int, ...]
    input_size: tuple[int, ...] | None  # None: input width equals hidden, as in the Caffe project's tables
    about: str


GRIDS: dict[str, Grid] = {
    "caffe": Grid("caffe", (20, 4), (100, 20), (2048,), (3,), None,
                  "the Caffe project's table: batch {20,4} x length {100,20}, 3 layers, hidden = input = 2048"),
    "cpu": Grid("cpu", (20, 4), (100, 20), (512,), (3,), None,
                "the Caffe LSTM's batch {20,4} x length {100,20} at hidden = input = 512, 3 layers; "
                "about 5 minutes on 2 CPU cores with every implementation"),
    # Batch 1 (where the Caffe LSTM's example trains) beside 5 (row-mixing bugs need two rows or more).
    "smoke": Grid("smoke", (5, 1), (7, 3), (16,), (2,), (12,),
                  "tiny: batch {5,1} x length {7,3}, 2 layers, input 12, hidden 16; seconds, for CI"),
}
GRID_CHOICES = ("auto", *GRIDS)
# Older names still accepted for --lstm-grid: "seed" was the caffe grid's name.
GRID_ALIASES = {"seed": "caffe"}
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def default_grid(device: str) -> Grid:
    """The Caffe project's own shapes on a GPU; the CPU-sized variant on the CPU."""
    return GRIDS["caffe" if device == "cuda" else "cpu"]


def parse_positive_ints(option: str, text: str | None) -> tuple[int, ...] | None:
    """'20,4' -> (20, 4). None passes through (option not given)."""
    if text is None:
        return None
    values = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise GridError(f"{option}: {part!r} is not an integer (expected e.g. {option} 20,4)") from None
        if value < 1:
            raise GridError(f"{option}: {value} is not a positive integer")
        values.append(value)
    return tuple(dict.fromkeys(values))  # keep order, drop repeats


def parse_number(option: str, text, kind=int, minimum=1, maximum=None):
    """One number of `kind` within [minimum, maximum]; None passes through (option not given)."""
    if text is None:
        return None
    text = str(text).strip()
    try:
        value = kind(text)
    except ValueError:
        raise GridError(f"{option}: {text!r} is not {'an integer' if kind is int else 'a number'}") from None
    # float() takes nan and inf (and 1e999): nan passes every comparison, inf sizes nothing.
    if isinstance(value, float) and not math.isfinite(value):
        raise GridError(f"{option}: {text} is not a finite number")
    if value < minimum:
        raise GridError(f"{option}: {value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise GridError(f"{option}: {value} is above the maximum {maximum}")
    return value


def parse_choices(option: str, text: str | None, choices: Sequence[str]) -> tuple[str, ...] | None:
    if text is None:
        return None
    values = tuple(dict.fromkeys(p.strip() for p in str(text).split(",") if p.strip()))
    if not values:
        raise GridError(f"{option}: no value given; choose from {', '.join(choices)}")
    for value in values:
        if value not in choices:
            raise GridError(f"{option}: unknown value {value!r}; choose from {', '.join(choices)}")
    return values


def resolve_device(option: str, text: str) -> str:
    if text not in DEVICE_CHOICES:
        raise GridError(f"{option}: unknown device {text!r}; choose from {', '.join(DEVICE_CHOICES)}")
    has_gpu = torch.cuda.is_available()
    if text == "auto":
        return "cuda" if has_gpu else "cpu"
    if text == "cuda" and not has_gpu:
        raise GridError(f"{option}: cuda was asked for but no CUDA GPU is visible to torch "
                        f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")
    return text


def resolve_grid(option: str, name: str, device: str) -> Grid:
    if name == "auto":
        return default_grid(device)
    name = GRID_ALIASES.get(name, name)
    if name not in GRIDS:
        raise GridError(f"{option}: unknown grid {name!r}; choose from {', '.join(GRID_CHOICES)}")
    return GRIDS[name]


def build_problems(grid: Grid, device: str, dtypes: Sequence[str] = ("float32",), *,
                   batch=None, length=None, hidden=None, input_size=None, layers=None) -> list[Problem]:
    """The grid's problems, with any explicit axis values replacing the grid's own."""
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise GridError(f"--lstm-dtype: unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    problems = []
    # Length outer, batch inner: the order of the Caffe LSTM's tables.
    for t, b, h, l, dtype in itertools.product(length or grid.length, batch or grid.batch,
                                               hidden or grid.hidden, layers or grid.layers, dtypes):
        if input_size:
            widths = input_size
        elif grid.input_size and not hidden:
            widths = grid.input_size
        else:
            widths = (h,)  # the Caffe LSTM's shape: input width = hidden
        for i in widths:
            problems.append(Problem(batch=b, length=t, input_size=i, hidden=h, layers=l,
                                    dtype=dtype, device=device))
    return problems


SWITCH = {"on": True, "yes": True, "1": True, "off": False, "no": False, "0": False}


def parse_switch(option: str, text: str | None) -> bool | None:
    if text is None:
        return None
    value = SWITCH.get(str(text).strip().lower())
    if value is None:
        raise GridError(f"{option}: {text!r} is not on or off")
    return value


@dataclass(frozen=True)
class RunOptions:
    """The grid and timing options of a run, each checked (what `pytest suites/` and `harness sweep` take)."""

    grid: Grid
    problems: list[Problem]
    impls: tuple[str, ...] | None  # None: every registered one
    explicit: dict[str, tuple[int, ...]]  # axis values given, replacing the grid's
    timing: dict[str, int | float | bool]  # rounds, min_rounds, warmup, max_time, interference ...: those given
    seed: int | None


def parse_run_options(get, device: str, known_impls: Sequence[str], check_dtypes: bool = True) -> RunOptions:
    """Every grid and timing option (get("lstm_batch") returns its raw text or None) checked for `device`;
    GridError names the first bad one. check_dtypes=False leaves the precision modes to the device that runs
    them (a sweep's driver may have no GPU)."""
    from harness.contract.problem import dtype_support  # imports torch's device queries: only when asked

    grid = resolve_grid("--lstm-grid", get("lstm_grid") or "auto", device)
    impls = parse_choices("--lstm-impls", get("lstm_impls"), known_impls)
    skipped = parse_choices("--lstm-skip-impls", get("lstm_skip_impls"), known_impls)
    if skipped:
        impls = tuple(name for name in impls or known_impls if name not in skipped)
        if not impls:
            raise GridError(f"--lstm-skip-impls: {', '.join(skipped)} leaves no implementation to run")
    explicit = {axis: parse_positive_ints(f"--lstm-{opt}", get(f"lstm_{opt}"))
                for axis, opt in (("batch", "batch"), ("length", "length"), ("hidden", "hidden"),
                                  ("input_size", "input"), ("layers", "layers"))}
    dtypes = parse_choices("--lstm-dtype", get("lstm_dtype"), list(DTYPES)) or ("float32",)
    for dtype in dtypes if check_dtypes else ():
        support = dtype_support(device, dtype)
        if not support.ok:
            raise GridError(f"--lstm-dtype: {dtype} cannot run on {device}: {support.reason}")
    explicit = {k: v for k, v in explicit.items() if v}
    timing = {
        "rounds": parse_number("--lstm-rounds", get("lstm_rounds"), int, minimum=1),
        "min_rounds": parse_number("--lstm-min-rounds", get("lstm_min_rounds"), int, minimum=1),
        "warmup": parse_number("--lstm-warmup", get("lstm_warmup"), int, minimum=0),
        "max_time": parse_number("--lstm-max-time", get("lstm_max_time"), float, minimum=1e-6),
        "threshold": parse_number("--lstm-interference-threshold", get("lstm_interference_threshold"), float,
                                  minimum=0.0),
        "redo_budget": parse_number("--lstm-redo-budget", get("lstm_redo_budget"), float, minimum=0.0),
        "interleave": parse_switch("--lstm-interleave", get("lstm_interleave")),
    }
    seed = parse_number("--lstm-seed", get("lstm_seed"), int, minimum=0, maximum=2**63 - 1)  # a signed 64-bit seed
    return RunOptions(grid, build_problems(grid, device, dtypes, **explicit), impls, explicit,
                      {k: v for k, v in timing.items() if v is not None}, seed)
