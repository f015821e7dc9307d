"""The Caffe LSTM's example through any registered implementation (its command line: `python -m harness sequence`,
harness.commands.sequence).

Trains an LSTM (+ a linear head) to generate the Caffe LSTM's fixed sequence from zero input, then
generates it step by step, and writes per configuration and implementation:
<out>/<config>-<impl>.log (header, then "target prediction" per step), <out>/<config>-<impl>-loss.csv
and <out>/<config>-<impl>.png (target as dots, prediction as a line, and the loss curve).
Several implementations in one call run side by side and end with a table of iterations/s; several seeds
(--seeds) add <out>/seeds.md (harness.example.seeds). Runs repeat exactly: each fixes its thread count and
asks for deterministic algorithms (repeatable); --jobs trains several at a time in worker processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
from tabulate import tabulate
from tqdm import tqdm

from harness.example.seeds import SEEDS_TABLE
from harness.example.task import (
    CHUNK,
    Trainer,
    clipping_for,
    describe_clipping,
    describe_lr_mults,
    generate,
    init_network,
    nmse,
    problem_for,
    target_sequence,
)
from harness.measuring import environment

DTYPES = ("float32", "float64")


SEED_MAX = 2**63 - 1  # as --lstm-seed: a signed 64-bit seed


def output_paths(config, cls, args, seed: int | None = None) -> list[Path]:
    """The files one (configuration, implementation, seed) run writes, in the order written; the random seed
    is in the name only when the command trains several."""
    stem = f"{config.name}-{cls.name}"  # not Path.with_suffix: a name may hold a dot
    if len(args.seeds) > 1:
        stem += f"-seed{seed}"
    paths = [args.out / f"{stem}.log", args.out / f"{stem}-loss.csv"]
    return paths if args.no_plots else [*paths, args.out / f"{stem}.png"]


def supported_pairs(args) -> list[tuple]:
    """The (configuration, implementation) pairs that can run here, in the command line's order."""
    return [(config, cls) for config in args.configs for cls in args.impl_classes
            if cls.supports(_problem(config, args)).ok]


def summary_paths(args) -> list[Path]:
    """The several-seeds summary (a table, its data, a figure per configuration and implementation)."""
    if len(args.seeds) < 2:
        return []
    figures = [] if args.no_plots else [args.out / f"{SEEDS_TABLE}-{config.name}-{cls.name}.png"
                                        for config, cls in supported_pairs(args)]
    return [args.out / f"{SEEDS_TABLE}.md", args.out / f"{SEEDS_TABLE}.json", *figures]


def check_outputs(args) -> str | None:
    """Why the runs' files cannot be written, found before any training (None when they can)."""
    from harness.example.plot import header_path

    paths = []
    for config, cls in supported_pairs(args):
        for seed in args.seeds:
            log, *rest = output_paths(config, cls, args, seed)
            paths += [log, header_path(log), *rest]
    return check_out_folder(args.out) or check_existing(paths + summary_paths(args), args.overwrite)


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


def training_settings(args) -> dict:
    """What every run of one command shares, as plain values: a worker process gets these."""
    return {"iters": args.iters, "lr": args.lr, "optimizer": args.optimizer, "clipping": args.clipping,
            "norm_clip": args.norm_clip, "dtype": args.dtype, "device": args.device, "biases": args.biases,
            "lr_mult": dict(args.lr_mult), "threads": args.threads, "jobs": args.jobs,
            "progress": args.jobs == 1}


def train_one(cls, config, seed: int, settings: dict) -> dict:
    with repeatable(settings["threads"]):
        return _train(cls, config, seed, settings)


@contextlib.contextmanager
def repeatable(threads: int):
    """Runs that repeat exactly: a fixed thread count and no algorithm chosen at random (CUDA's atomics-based
    ones warn when used); the process's own settings are put back afterwards."""
    import torch

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])


def _train(cls, config, seed: int, settings: dict) -> dict:
    import torch

    from harness.example.task import lr_multipliers

    net = init_network(config, seed, getattr(torch, settings["dtype"]), settings["device"], settings["biases"])
    clipping = clipping_for(cls, settings["clipping"])
    lr = settings["lr"] or config.lr
    mults = lr_multipliers(config, settings["biases"], settings["lr_mult"])
    # The one-time setup (building the implementation: weight conversion, extension build or load) and the
    # first iteration (first-touch allocations, packing) are timed apart: iterations/s counts training only.
    started = time.perf_counter()
    trainer = Trainer(cls, config, net, lr=lr, optimizer=settings["optimizer"], clipping=clipping,
                      norm_clip=settings["norm_clip"], device=settings["device"], lr_mults=mults)
    _synchronize(settings["device"])
    setup_seconds = time.perf_counter() - started
    running, first_seconds = None, None
    iters = settings["iters"]
    with tqdm(range(iters), desc=f"{config.name} {cls.name} seed {seed}", unit="it", file=sys.stderr,
              mininterval=0.5, disable=not settings["progress"]) as bar:
        start = time.perf_counter()
        for _ in bar:
            loss = trainer.step()  # returns a Python float: the device has finished the iteration
            running = loss if running is None else 0.99 * running + 0.01 * loss
            if first_seconds is None:
                first_seconds = time.perf_counter() - start
                start = time.perf_counter()
            if trainer.iteration % 50 == 0:
                bar.set_postfix(loss=f"{running:.5f}")
                _stop_if_orphaned(settings)
    seconds = time.perf_counter() - start  # the iterations after the first
    counted = iters - 1
    target = target_sequence(config.length, net.w_out.dtype, settings["device"])
    prediction = generate(cls, net, config, settings["device"])
    # The label under the run's threads: an implementation that chose its path by measuring names what it chose.
    backend = cls.backend(problem_for(config, CHUNK, getattr(torch, settings["dtype"]), settings["device"]))
    return {"config": config, "impl": cls, "seed": seed, "lr": lr, "lr_mults": mults, "backend": backend,
            "clipping": describe_clipping(clipping, settings["norm_clip"]),
            "losses": trainer.losses, "target": target.cpu(), "prediction": prediction.cpu(),
            "nmse": nmse(prediction, target), "seconds": seconds, "setup_seconds": setup_seconds,
            "first_iteration_seconds": first_seconds, "threads": torch.get_num_threads(),
            "machine": environment.device_name(environment.describe(settings["device"])),
            "it_per_s": counted / seconds if counted > 0 and seconds > 0 else 1 / first_seconds}


def _stop_if_orphaned(settings: dict) -> None:
    """A worker whose command has ended (killed, say) stops instead of training on for nobody."""
    parent = settings.get("parent_pid")
    if parent is not None and os.getppid() != parent:
        raise SystemExit(f"the command (process {parent}) that started this run has ended")


def _train_in_worker(config_name: str, impl_name: str, plugins: list[str], seed: int, settings: dict) -> dict:
    """train_one in a worker process (--jobs): classes travel by name, the run back without them."""
    from harness.contract.registry import discover
    from harness.example.task import CONFIGS

    run = train_one(discover(plugins).get(impl_name), CONFIGS[config_name], seed, settings)
    return {k: v for k, v in run.items() if k not in ("config", "impl")}


def _synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def write_outputs(run: dict, args) -> list[Path]:
    config, cls, seed = run["config"], run["impl"], run["seed"]
    log, losses, *figure = output_paths(config, cls, args, seed)
    args.out.mkdir(parents=True, exist_ok=True)
    backend = run["backend"]  # what trained (generation runs single steps)
    training = (f"{args.iters} iterations of {args.optimizer} (lr {run['lr']:g}"
                f"{', momentum 0.95' if args.optimizer == 'sgd' else ''})")
    biases = ("one trained bias a layer (the Caffe LSTM's)" if args.biases == 1
              else "two trained biases a layer (b_ih, b_hh)")
    network = f"{biases}; learning-rate multipliers: {describe_lr_mults(run['lr_mults'])}"
    machine = run["machine"]
    header = [
        f"# {config.name}: {config.about}; implementation {cls.name} ({backend})",
        f"# {training}, {args.dtype}, seed {seed}, {args.device}",
        f"# clipping: {run['clipping']}",
        f"# NMSE {run['nmse']:.6f}; final loss {run['losses'][-1]:.6f}; {run['seconds']:.1f} s, "
        f"{run['it_per_s']:.1f} iterations/s (after the first; setup {run['setup_seconds']:.2f} s and the first "
        f"iteration {1e3 * run['first_iteration_seconds']:.1f} ms apart)",
        f"# network: {network}",
        f"# ran on {machine}; {args.jobs} run(s) at a time",
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
        "seed": seed, "device": args.device, "clipping": run["clipping"], "biases": args.biases,
        "lr_mults": run["lr_mults"], "nmse": run["nmse"],
        "final_loss": run["losses"][-1], "seconds": run["seconds"], "it_per_s": run["it_per_s"],
        "setup_seconds": run["setup_seconds"], "first_iteration_seconds": run["first_iteration_seconds"],
        "machine": machine, "threads": run["threads"], "jobs": args.jobs,
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
    """Train, generate and write every (configuration, implementation, seed) of the parsed command line
    (args.configs, args.impl_classes, args.seeds, ...: see harness.commands.sequence); the exit status."""
    for config in args.configs:
        for cls in args.impl_classes:
            support = cls.supports(_problem(config, args))
            if not support.ok:
                print(f"{config.name} {cls.name}: skipped: {support.reason}", file=sys.stderr)
    todo = [(config, cls, seed) for config, cls in supported_pairs(args) for seed in args.seeds]
    prepare(args)
    for path in summary_paths(args):  # an earlier summary must not stand beside runs that replace its own
        path.unlink(missing_ok=True)
    runs = []
    for run in _trained(todo, args):
        files = write_outputs(run, args)
        runs.append(run)
        print(f"{run['config'].name} | {run['impl'].name} | seed {run['seed']} | {args.iters} iterations | "
              f"NMSE {run['nmse']:.5f} | {run['seconds']:.1f} s | {run['it_per_s']:.1f} iterations/s | "
              f"setup {run['setup_seconds']:.2f} s | {run['clipping']} | wrote {', '.join(map(str, files))}",
              flush=True)
    if len(runs) > 1:
        print(tabulate([[r["config"].name, r["impl"].name, r["seed"], f"{r['it_per_s']:.1f}",
                         f"{r['setup_seconds']:.2f}", f"{r['nmse']:.5f}", f"{r['losses'][-1]:.6f}"] for r in runs],
                       headers=["config", "impl", "seed", "iterations/s", "setup (s)", "NMSE", "final loss"]))
    if len(args.seeds) > 1 and runs:
        from harness.example import seeds

        written = seeds.write_summary(runs, args)
        print(f"\nseveral seeds (NMSE below {args.success_nmse:g} counts as learned):\n"
              f"{written[0].read_text()}wrote {', '.join(map(str, written))}")
    return 0 if runs else 1


def prepare(args) -> None:
    """Build every (configuration, implementation) once, here, before any run, with the runs' threads: what
    an implementation chooses at construction by measuring (fused's plan) is then chosen once and cached,
    and every run, in this process or a worker, runs the same code path (runs that repeat exactly)."""
    import torch

    with repeatable(args.threads):
        for config, cls in supported_pairs(args):
            net = init_network(config, 0, getattr(torch, args.dtype), args.device, args.biases)
            for length in (CHUNK, 1):  # training chunks, and the generation's single steps
                cls(problem_for(config, length, getattr(torch, args.dtype), args.device), net.lstm)


def _trained(todo: list, args):
    """The runs of `todo`, in its order: here one after another, or in args.jobs worker processes."""
    settings = training_settings(args)
    if args.jobs == 1 or len(todo) < 2:
        for config, cls, seed in todo:
            yield train_one(cls, config, seed, settings)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a forked child inherits the parent's thread pools mid-state.
    pool = ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn"))
    try:
        settings = dict(settings, parent_pid=os.getpid())
        futures = [pool.submit(_train_in_worker, config.name, cls.name, list(args.plugins), seed, settings)
                   for config, cls, seed in todo]
        for (config, cls, _), future in zip(todo, futures, strict=True):
            yield {"config": config, "impl": cls, **future.result()}
    except BaseException:
        # A failed run (or an interrupt) stops the command now: the queued runs are cancelled, not trained
        # for hours and then thrown away.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
