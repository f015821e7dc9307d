"""`python -m harness.sequence`: the seed's example through any registered implementation.

Trains an LSTM (+ a linear head) to generate the seed's fixed sequence from zero input, then
generates it step by step, and writes per configuration and implementation:
<out>/<config>-<impl>.log (header, then "target prediction" per step), <out>/<config>-<impl>-loss.csv
and <out>/<config>-<impl>.png (target as dots, prediction as a line, and the loss curve).
Several implementations in one call run side by side and end with a table of iterations/s.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pandas as pd
from tabulate import tabulate
from tqdm import tqdm

from harness.contract.grid import DEVICE_CHOICES, GridError, resolve_device
from harness.contract.registry import RegistryError, discover
from harness.example.task import (
    CLIPPING_MODES,
    CONFIGS,
    Trainer,
    clipping_for,
    describe_clipping,
    generate,
    init_network,
    nmse,
    problem_for,
    target_sequence,
)

DTYPES = ("float32", "float64")


SEED_MAX = 2**63 - 1  # as --lstm-seed: a signed 64-bit seed


def number(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        # float() takes nan and inf: nan passes `<= 0`, and either would train to nonsense silently.
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        return value
    return parse


def positive(kind):
    def parse(text):
        value = number(kind)(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return value
    return parse


def parse_seed(text):
    value = number(int)(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is outside 0 to {SEED_MAX}")
    return value


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m harness.sequence", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="lstm_short", help=f"one of {', '.join(CONFIGS)}, or 'all'")
    p.add_argument("--impl", default="fused", help="implementation(s), comma-separated, or 'all' (registered ones)")
    p.add_argument("--iters", type=positive(int), default=100_000, help="training iterations (the seed: 100000)")
    p.add_argument("--lr", type=positive(float), help="learning rate (default: the seed's for the configuration)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="sgd: momentum 0.95, as the seed")
    p.add_argument("--clipping", choices=CLIPPING_MODES, default="auto",
                   help="auto: gate clipping inside backward where the implementation can, else global norm")
    p.add_argument("--norm-clip", type=positive(float), default=1.0, help="threshold of the global-norm clip")
    p.add_argument("--seed", type=parse_seed, default=0, help="seed of the initial weights")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--device", default="auto", help=f"{', '.join(DEVICE_CHOICES)}")
    p.add_argument("--lstm-plugin", dest="plugins", action="append", default=[], metavar="MODULE")
    p.add_argument("--out", type=Path, default=Path("reports") / "sequence", help="output folder")
    p.add_argument("--no-plot", action="store_true", help="skip the figure")
    p.add_argument("--overwrite", action="store_true", help="replace the output files of an earlier run")
    args = p.parse_args(argv)
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
    error = check_outputs(args)
    if error:
        p.error(error)
    return args


def output_paths(config, cls, args) -> list[Path]:
    """The files one (configuration, implementation) run writes, in the order written."""
    stem = f"{config.name}-{cls.name}"  # not Path.with_suffix: a name may hold a dot
    paths = [args.out / f"{stem}.log", args.out / f"{stem}-loss.csv"]
    return paths if args.no_plot else [*paths, args.out / f"{stem}.png"]


def check_outputs(args) -> str | None:
    """Why the runs' files cannot be written, found before any training (None when they can)."""
    paths = [path for config in args.configs for cls in args.impl_classes
             if cls.supports(_problem(config, args)).ok for path in output_paths(config, cls, args)]
    return check_out_folder(args.out) or check_existing(paths, args.overwrite)


def check_out_folder(out: Path) -> str | None:
    # mkdir after training would fail on a file anywhere along --out.
    for folder in (out, *out.parents):
        if folder.is_dir():
            return None
        if folder.exists() or folder.is_symlink():
            return f"--out: {folder} is an existing file, not a directory" + (
                "" if folder == out else f" (in --out {out})")
    return None


def check_existing(paths: list[Path], overwrite: bool) -> str | None:
    taken = [path for path in paths if path.exists() or path.is_symlink()]
    in_the_way = [path for path in taken if path.is_dir()]
    if in_the_way:
        return f"--out: cannot write {', '.join(map(str, in_the_way))}: a directory of that name is in the way"
    if taken and not overwrite:
        return (f"--out: refusing to overwrite the earlier run's {', '.join(map(str, taken))}; "
                f"pass --overwrite to replace them, or choose another --out")
    return None


def train_one(cls, config, args) -> dict:
    import torch

    net = init_network(config, args.seed, getattr(torch, args.dtype), args.device)
    clipping = clipping_for(cls, args.clipping)
    lr = args.lr or config.lr
    trainer = Trainer(cls, config, net, lr=lr, optimizer=args.optimizer, clipping=clipping,
                      norm_clip=args.norm_clip, device=args.device)
    start = time.perf_counter()
    running = None
    with tqdm(range(args.iters), desc=f"{config.name} {cls.name}", unit="it", file=sys.stderr,
              mininterval=0.5) as bar:
        for _ in bar:
            loss = trainer.step()
            running = loss if running is None else 0.99 * running + 0.01 * loss
            if trainer.iteration % 50 == 0:
                bar.set_postfix(loss=f"{running:.5f}")
    seconds = time.perf_counter() - start
    target = target_sequence(config.length, net.w_out.dtype, args.device)
    prediction = generate(cls, net, config, args.device)
    return {"config": config, "impl": cls, "lr": lr, "clipping": describe_clipping(clipping, args.norm_clip),
            "losses": trainer.losses, "target": target.cpu(), "prediction": prediction.cpu(),
            "nmse": nmse(prediction, target), "seconds": seconds, "it_per_s": args.iters / seconds}


def write_outputs(run: dict, args) -> list[Path]:
    config, cls = run["config"], run["impl"]
    log, losses, *figure = output_paths(config, cls, args)
    args.out.mkdir(parents=True, exist_ok=True)
    header = [
        f"# {config.name}: {config.about}; implementation {cls.name} ({cls.backend(_problem(config, args))})",
        f"# {args.iters} iterations of {args.optimizer} (lr {run['lr']:g}"
        f"{', momentum 0.95' if args.optimizer == 'sgd' else ''}), {args.dtype}, seed {args.seed}, {args.device}",
        f"# clipping: {run['clipping']}",
        f"# NMSE {run['nmse']:.6f}; final loss {run['losses'][-1]:.6f}; {run['seconds']:.1f} s, "
        f"{run['it_per_s']:.1f} iterations/s",
        "target prediction",
    ]
    rows = [f"{t:.6f} {p:.6f}" for t, p in zip(run["target"].tolist(), run["prediction"].tolist(), strict=True)]
    log.write_text("\n".join(header + rows) + "\n")
    pd.DataFrame({"iteration": range(1, len(run["losses"]) + 1), "loss": run["losses"]}).to_csv(losses, index=False)
    written = [log, losses]
    if figure:
        from harness.example.plot import replot

        written.append(replot(log))  # writes the log's name with .png, as output_paths says
    return written


def _problem(config, args):
    import torch

    return problem_for(config, 1, getattr(torch, args.dtype), args.device)


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = []
    for config in args.configs:
        for cls in args.impl_classes:
            support = cls.supports(_problem(config, args))
            if not support.ok:
                print(f"{config.name} {cls.name}: skipped: {support.reason}", file=sys.stderr)
                continue
            run = train_one(cls, config, args)
            files = write_outputs(run, args)
            runs.append(run)
            print(f"{config.name} | {cls.name} | {args.iters} iterations | NMSE {run['nmse']:.5f} | "
                  f"{run['seconds']:.1f} s | {run['it_per_s']:.1f} iterations/s | {run['clipping']} | "
                  f"wrote {', '.join(map(str, files))}")
    if len(runs) > 1:
        print(tabulate([[r["config"].name, r["impl"].name, f"{r['it_per_s']:.1f}", f"{r['nmse']:.5f}",
                         f"{r['losses'][-1]:.6f}"] for r in runs],
                       headers=["config", "impl", "iterations/s", "NMSE", "final loss"]))
    return 0 if runs else 1


if __name__ == "__main__":
    sys.exit(main())
