"""`python -m harness sequence`: the Caffe LSTM's example through any registered implementation.

Trains an LSTM (+ a linear head) to generate the Caffe LSTM's fixed sequence from zero input, then
generates it step by step, and writes per configuration and implementation:
<out>/<config>-<impl>.log (header, then "target prediction" per step), <out>/<config>-<impl>-loss.csv
and <out>/<config>-<impl>.png (target as dots, prediction as a line, and the loss curve).
Several implementations in one call run side by side and end with a table of iterations/s.
Every refusal (an unknown name, a file of an earlier run in the way) comes before any training.
"""

from __future__ import annotations

from pathlib import Path

from harness.commands import options

HELP = "train the Caffe LSTM's example LSTM to generate its sequence, through any implementation"
EXAMPLE = "python -m harness sequence --config lstm_short --impl fused,numpy --iters 20000"


def add_arguments(p) -> None:
    from harness.example.command import DTYPES, SEED_MAX
    from harness.example.task import BIAS_CHOICES, CLIPPING_MODES, CONFIGS, describe_lr_mults, lr_multipliers

    p.add_argument("--config", default="lstm_short", help=f"one of {', '.join(CONFIGS)}, or 'all'")
    options.add_impl(p, default="fused", help="implementation(s), comma-separated, or 'all' (registered ones)")
    p.add_argument("--iters", type=options.positive(int), default=100_000,
                   help="training iterations (the Caffe LSTM: 100000)")
    p.add_argument("--lr", type=options.positive(float),
                   help="learning rate (default: the Caffe LSTM's for the configuration)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="sgd: momentum 0.95, as the Caffe LSTM")
    p.add_argument("--clipping", choices=CLIPPING_MODES, default="auto",
                   help="auto: gate clipping inside backward where the implementation can, else global norm")
    p.add_argument("--norm-clip", type=options.positive(float), default=1.0, help="threshold of the global-norm clip")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=options.number(int, 0, SEED_MAX), default=0,
                       help="random seed of the initial weights (default 0)")
    seeds.add_argument("--seeds", type=seed_list, metavar="N|S,S..",
                       help="train each net from several random seeds: N (seeds 0..N-1) or a list; ends with "
                            "a table of how many learned (seeds.md) and a figure of every seed")
    p.add_argument("--success-nmse", type=options.positive(float), default=0.05,
                   help="with --seeds: a run whose generated sequence has NMSE below this learned it (default 0.05)")
    p.add_argument("--jobs", type=options.positive(int), default=1,
                   help="runs trained at a time, each in its own process with the threads divided among them "
                        "(each run's log names its thread count; iterations/s depend on it)")
    p.add_argument("--biases", type=int, choices=BIAS_CHOICES, default=1,
                   help="trained biases per LSTM layer: 1, the Caffe LSTM's (default); 2, torch.nn.LSTM's b_ih "
                        "and b_hh, each moving at the full rate")
    mults = "; ".join(f"{name}: {describe_lr_mults(lr_multipliers(c))}" for name, c in CONFIGS.items())
    p.add_argument("--lr-mult", type=lr_mult_list, action="append", default=[], metavar="NAME=X[,NAME=X..]",
                   help=f"learning-rate multipliers beyond the Caffe LSTM's ({mults}); names: lstmL.w_ih, lstmL.w_hh, "
                        "lstmL.bias (with --biases 2: lstmL.b_ih, lstmL.b_hh; lstmL.bias names both), out.weight, "
                        "out.bias; repeatable. The Caffe LSTM's published figures came from an older version of its "
                        "solvers: float64 and out.bias=2")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    options.add_device(p, choices=False)
    options.add_plugin(p)
    p.add_argument("--out", type=Path, default=Path("reports") / "sequence", help="output folder")
    options.add_no_plots(p, help="skip the figures")
    p.add_argument("--overwrite", action="store_true", help="replace the output files of an earlier run")


def seed_list(text: str) -> list[int]:
    """--seeds: N (seeds 0 to N-1) or a comma-separated list of seeds."""
    import argparse

    from harness.example.command import SEED_MAX

    parse = options.number(int, 0, SEED_MAX)
    if "," not in text:
        count = options.positive(int)(text)
        return list(range(count))
    seeds = [parse(part.strip()) for part in text.split(",")]
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} names a seed twice")
    return seeds


def lr_mult_list(text: str) -> dict[str, float]:
    """--lr-mult: NAME=X pairs, comma-separated; X a number >= 0 (0 freezes the parameter)."""
    import argparse

    parse = options.number(float, 0)
    mults = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"{part!r} is not NAME=X (for example out.bias=2)")
        if name.strip() in mults:
            raise argparse.ArgumentTypeError(f"{text!r} names {name.strip()} twice")
        mults[name.strip()] = parse(value.strip())
    return mults


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
    from harness.example.task import lr_multipliers

    merged = {}
    for given in args.lr_mult:  # one dict per --lr-mult
        twice = sorted(set(merged) & set(given))
        if twice:
            p.error(f"--lr-mult: {', '.join(twice)} given twice")
        merged.update(given)
    args.lr_mult = merged
    for config in args.configs:
        try:
            lr_multipliers(config, args.biases, args.lr_mult)
        except ValueError as exc:
            p.error(f"--lr-mult: {exc}")
    args.seeds = args.seeds or [args.seed]
    if args.device == "cuda":  # cuBLAS repeats its sums exactly only with a fixed workspace, set before it starts
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    error = command.check_outputs(args)
    if error:
        p.error(error)
    # The threads divided among the runs that go at once: never more workers than runs.
    args.jobs = max(1, min(args.jobs, len(command.supported_pairs(args)) * len(args.seeds)))
    args.threads = max(1, torch.get_num_threads() // args.jobs)


def run(args) -> int:
    from harness.example import command

    resolve(args)
    return command.run_all(args)
