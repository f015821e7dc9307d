"""The options of a run (grid, implementations, timing), defined once: the pytest plugin adds them to
`pytest suites/` and `harness sweep` to its own command line, from this one table.

No torch here (loading the pytest plugin imports this module); harness.contract.grid parses the values.
The names are spelled out; tests check them against harness.contract.grid and harness.contract.problem.
"""

from __future__ import annotations

from dataclasses import dataclass

GRID_NAMES = ("auto", "caffe", "cpu", "smoke")
DEVICE_NAMES = ("auto", "cpu", "cuda")
DTYPE_NAMES = ("float32", "float64", "tf32", "bfloat16", "float16")


@dataclass(frozen=True)
class RunOption:
    flag: str  # as pytest takes it: --lstm-...
    metavar: str
    help: str
    default: object = None
    aliases: tuple[str, ...] = ()  # shorter spellings `harness sweep` also accepts
    repeatable: bool = False  # given several times, the values add up (a list)

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def initial(self):
        """The value when the option is not given."""
        return [] if self.repeatable else self.default


RUN_OPTIONS = (
    RunOption("--lstm-grid", "NAME", f"named grid: {', '.join(GRID_NAMES)} (auto: caffe on CUDA, cpu on the CPU)",
              "auto", ("--grid",)),
    RunOption("--lstm-batch", "N[,N...]", "batch sizes, replacing the grid's", aliases=("--batch",)),
    RunOption("--lstm-length", "N[,N...]", "sequence lengths, replacing the grid's", aliases=("--length",)),
    RunOption("--lstm-hidden", "N[,N...]", "hidden sizes, replacing the grid's", aliases=("--hidden",)),
    RunOption("--lstm-input", "N[,N...]", "input widths (default: the grid's, or = hidden)", aliases=("--input",)),
    RunOption("--lstm-layers", "N[,N...]", "layer counts, replacing the grid's", aliases=("--layers",)),
    RunOption("--lstm-dtype", "DTYPE[,...]", f"precision modes: {', '.join(DTYPE_NAMES)} (default float32)",
              aliases=("--dtype",)),
    RunOption("--lstm-impls", "NAME[,...]", "implementations to run (default: every registered one)",
              aliases=("--impls",)),
    RunOption("--lstm-skip-impls", "NAME[,...]", "implementations left out (of --lstm-impls, or of every registered "
              "one)", aliases=("--skip-impls",)),
    RunOption("--lstm-device", "DEVICE", f"{', '.join(DEVICE_NAMES)} (auto: CUDA when a GPU is visible, else the "
              "CPU; a sweep: when its cluster has GPUs)", "auto", ("--device",)),
    RunOption("--lstm-plugin", "MODULE", "import MODULE so its @register implementations join the run (repeatable)",
              aliases=("--plugin",), repeatable=True),
    RunOption("--lstm-seed", "N", "seed of the generated inputs, weights and upstream gradients (default 0)",
              aliases=("--seed",)),
    RunOption("--lstm-rounds", "N", "timed rounds per measurement (default: fit --lstm-max-time)",
              aliases=("--rounds",)),
    RunOption("--lstm-min-rounds", "N", "at least this many timed rounds (default 5)"),
    RunOption("--lstm-warmup", "N", "untimed warm-up rounds before timing (default 1)"),
    RunOption("--lstm-max-time", "SECONDS", "time budget that sizes the rounds (default 1.0)"),
    RunOption("--lstm-interleave", "on|off", "the implementations of a point take their timed rounds in turn "
              "(default on; off: one after another)"),
    RunOption("--lstm-interference-threshold", "CORES",
              "cores used by other processes that make a block of rounds disturbed (default 0.1)"),
    RunOption("--lstm-redo-budget", "FACTOR",
              "disturbed rounds redone, at most, per planned round (default 1.0; 0: none redone, only flagged)"),
)
BY_DEST = {option.dest: option for option in RUN_OPTIONS}


def add_run_options(add, *, aliases: bool = False, defaults: bool = True, leave_out: tuple[str, ...] = ()) -> None:
    """Every run option through `add` (pytest's addoption or argparse's add_argument, the same signature);
    `aliases`: the shorter spellings too; `defaults` False: every default None, so that a caller can tell an
    option given from one left out (the sweep's --resume does); `leave_out`: dests the caller adds itself."""
    for option in RUN_OPTIONS:
        if option.dest in leave_out:
            continue
        flags = (option.flag, *option.aliases) if aliases else (option.flag,)
        extra = {"default": option.initial if defaults else None}
        if option.repeatable:
            extra["action"] = "append"
        add(*flags, dest=option.dest, metavar=option.metavar, help=option.help, **extra)
