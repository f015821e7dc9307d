"""The seed's example through any registered implementation (its command line: `python -m harness sequence`,
harness.commands.sequence).

Trains an LSTM (+ a linear head) to generate the seed's fixed sequence from zero input, then
generates it step by step, and writes per configuration and implementation:
<out>/<config>-<impl>.log (header, then "target prediction" per step), <out>/<config>-<impl>-loss.csv
and <out>/<config>-<impl>.png (target as dots, prediction as a line, and the loss curve).
Several implementations in one call run side by side and end with a table of iterations/s.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
from tabulate import tabulate
from tqdm import tqdm

from harness.example.task import (
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
    # The one-time setup (building the implementation: weight conversion, extension build or load) and the
    # first iteration (first-touch allocations, packing) are timed apart: iterations/s counts training only.
    started = time.perf_counter()
    trainer = Trainer(cls, config, net, lr=lr, optimizer=args.optimizer, clipping=clipping,
                      norm_clip=args.norm_clip, device=args.device)
    _synchronize(args.device)
    setup_seconds = time.perf_counter() - started
    running, first_seconds = None, None
    with tqdm(range(args.iters), desc=f"{config.name} {cls.name}", unit="it", file=sys.stderr,
              mininterval=0.5) as bar:
        start = time.perf_counter()
        for _ in bar:
            loss = trainer.step()  # returns a Python float: the device has finished the iteration
            running = loss if running is None else 0.99 * running + 0.01 * loss
            if first_seconds is None:
                first_seconds = time.perf_counter() - start
                start = time.perf_counter()
            if trainer.iteration % 50 == 0:
                bar.set_postfix(loss=f"{running:.5f}")
    seconds = time.perf_counter() - start  # the iterations after the first
    counted = args.iters - 1
    target = target_sequence(config.length, net.w_out.dtype, args.device)
    prediction = generate(cls, net, config, args.device)
    return {"config": config, "impl": cls, "lr": lr, "clipping": describe_clipping(clipping, args.norm_clip),
            "losses": trainer.losses, "target": target.cpu(), "prediction": prediction.cpu(),
            "nmse": nmse(prediction, target), "seconds": seconds, "setup_seconds": setup_seconds,
            "first_iteration_seconds": first_seconds,
            "it_per_s": counted / seconds if counted > 0 and seconds > 0 else 1 / first_seconds}


def _synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def write_outputs(run: dict, args) -> list[Path]:
    config, cls = run["config"], run["impl"]
    log, losses, *figure = output_paths(config, cls, args)
    args.out.mkdir(parents=True, exist_ok=True)
    backend = cls.backend(_problem(config, args))
    training = (f"{args.iters} iterations of {args.optimizer} (lr {run['lr']:g}"
                f"{', momentum 0.95' if args.optimizer == 'sgd' else ''})")
    header = [
        f"# {config.name}: {config.about}; implementation {cls.name} ({backend})",
        f"# {training}, {args.dtype}, seed {args.seed}, {args.device}",
        f"# clipping: {run['clipping']}",
        f"# NMSE {run['nmse']:.6f}; final loss {run['losses'][-1]:.6f}; {run['seconds']:.1f} s, "
        f"{run['it_per_s']:.1f} iterations/s (after the first; setup {run['setup_seconds']:.2f} s and the first "
        f"iteration {1e3 * run['first_iteration_seconds']:.1f} ms apart)",
        "target prediction",
    ]
    rows = [f"{t:.6f} {p:.6f}" for t, p in zip(run["target"].tolist(), run["prediction"].tolist(), strict=True)]
    log.write_text("\n".join(header + rows) + "\n")
    # The header's values as data, so a figure drawn from the log need not parse the text above.
    from harness.example.plot import header_path

    sidecar = header_path(log)
    sidecar.write_text(json.dumps({
        "config": config.name, "about": config.about, "impl": cls.name, "backend": backend, "training": training,
        "iterations": args.iters, "optimizer": args.optimizer, "lr": run["lr"], "dtype": args.dtype,
        "seed": args.seed, "device": args.device, "clipping": run["clipping"], "nmse": run["nmse"],
        "final_loss": run["losses"][-1], "seconds": run["seconds"], "it_per_s": run["it_per_s"],
        "setup_seconds": run["setup_seconds"], "first_iteration_seconds": run["first_iteration_seconds"],
    }, indent=1) + "\n")
    pd.DataFrame({"iteration": range(1, len(run["losses"]) + 1), "loss": run["losses"]}).to_csv(losses, index=False)
    written = [log, sidecar, losses]
    if figure:
        from harness.example.plot import replot

        written.append(replot(log))  # writes the log's name with .png, as output_paths says
    return written


def _problem(config, args):
    import torch

    return problem_for(config, 1, getattr(torch, args.dtype), args.device)


def run_all(args) -> int:
    """Train, generate and write every (configuration, implementation) of the parsed command line
    (args.configs, args.impl_classes, ...: see harness.commands.sequence); the exit status."""
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
                  f"{run['seconds']:.1f} s | {run['it_per_s']:.1f} iterations/s | setup {run['setup_seconds']:.2f} s | "
                  f"{run['clipping']} | "
                  f"wrote {', '.join(map(str, files))}")
    if len(runs) > 1:
        print(tabulate([[r["config"].name, r["impl"].name, f"{r['it_per_s']:.1f}", f"{r['setup_seconds']:.2f}",
                         f"{r['nmse']:.5f}", f"{r['losses'][-1]:.6f}"] for r in runs],
                       headers=["config", "impl", "iterations/s", "setup (s)", "NMSE", "final loss"]))
    return 0 if runs else 1
