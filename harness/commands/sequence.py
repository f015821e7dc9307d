"""`python -m harness sequence`: the seed's example through any registered implementation.

Trains an LSTM (+ a linear head) to generate the seed's fixed sequence from zero input, then
generates it step by step, and writes per configuration and implementation:
<out>/<config>-<impl>.log (header, then "target prediction" per step), <out>/<config>-<impl>-loss.csv
and <out>/<config>-<impl>.png (target as dots, prediction as a line, and the loss curve).
Several implementations in one call run side by side and end with a table of iterations/s.
Every refusal (an unknown name, a file of an earlier run in the way) comes before any training.
"""

from __future__ import annotations

from pathlib import Path

from harness.commands import options

HELP = "train the seed's example LSTM to generate its sequence, through any implementation"
EXAMPLE = "python -m harness sequence --config lstm_short --impl fused,cupy --iters 20000"

def add_arguments(p) -> None:
    from harness.example.command import DTYPES, SEED_MAX
    from harness.example.task import CLIPPING_MODES, CONFIGS

    p.add_argument("--config", default="lstm_short", help=f"one of {', '.join(CONFIGS)}, or 'all'")
    options.add_impl(p, default="fused", help="implementation(s), comma-separated, or 'all' (registered ones)")
    p.add_argument("--iters", type=options.positive(int), default=100_000,
                   help="training iterations (the seed: 100000)")
    p.add_argument("--lr", type=options.positive(float),
                   help="learning rate (default: the seed's for the configuration)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="sgd: momentum 0.95, as the seed")
    p.add_argument("--clipping", choices=CLIPPING_MODES, default="auto",
                   help="auto: gate clipping inside backward where the implementation can, else global norm")
    p.add_argument("--norm-clip", type=options.positive(float), default=1.0, help="threshold of the global-norm clip")
    p.add_argument("--seed", type=options.number(int, 0, SEED_MAX), default=0, help="seed of the initial weights")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    options.add_device(p, choices=False)
    options.add_plugin(p)
    p.add_argument("--out", type=Path, default=Path("reports") / "sequence", help="output folder")
    p.add_argument("--no-plot", action="store_true", help="skip the figure")
    p.add_argument("--overwrite", action="store_true", help="replace the output files of an earlier run")


def resolve(args) -> None:
    """Names to configurations and classes (args.configs, args.impl_classes); a usage error, before any
    training, for anything that cannot run as asked."""
    from harness.contract.grid import GridError, resolve_device
    from harness.contract.registry import RegistryError, discover
    from harness.example import command
    from harness.example.task import CONFIGS, clipping_for

    p = args.parser
    try:
        args.device = resolve_device("--device", args.device)
        registry = discover(args.plugins)
    except (GridError, RegistryError) as exc:
        p.error(str(exc))
    # Repeats dropped: a second run of the same pair would overwrite the first's files.
    configs = list(CONFIGS) if args.config == "all" else list(dict.fromkeys(args.config.split(",")))
    impls = registry.names() if args.impl == "all" else list(dict.fromkeys(args.impl.split(",")))
    for name in configs:
        if name not in CONFIGS:
            p.error(f"--config: unknown configuration {name!r}; choose from {', '.join(CONFIGS)} or all")
    for name in impls:
        if name not in registry.names():
            p.error(f"--impl: unknown implementation {name!r}; known names: {', '.join(registry.names())}")
    args.configs = [CONFIGS[c] for c in configs]
    args.impl_classes = [registry.get(n) for n in impls]
    for cls in args.impl_classes:
        try:
            clipping_for(cls, args.clipping)
        except ValueError as exc:
            p.error(f"--clipping: {exc}")
    error = command.check_outputs(args)
    if error:
        p.error(error)


def run(args) -> int:
    from harness.example import command

    resolve(args)
    return command.run_all(args)
