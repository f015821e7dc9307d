"""`python -m harness sweep`: the grid of `pytest suites/` sharded over a Ray cluster, one device per shard,
merged into one results file.

Each shard is one problem of the grid (with --split impl: one problem and one implementation), run as a Ray
task that runs `pytest suites/test_speed.py --benchmark-only` narrowed to it: the same checks and timing as
`pytest suites/`. On GPU nodes a task asks for one GPU (Ray makes it the only one the task sees); on the CPU a
task takes the resource `lstm_timing_slot`, declared once per node, so two timed shards never share a machine.
`--ray ADDRESS` (or RAY_ADDRESS) joins a running cluster; without one a local Ray instance is started (with
the slot declared). `--on-each gpu-model` (or `node`) runs every shard once per GPU model (or node) of the
cluster, so the report compares the devices on the same problems. Every finished shard is written to the
results file at once (atomically); `--resume RESULTS` runs only what is missing there. A worker that dies is
retried by Ray (--retries); a shard that still fails is listed under "Not timed" with the reason. Exit status:
0 when every shard finished, 1 when one failed, 2 for a usage error (a bad option, a wrong --ray address), 130
when interrupted.

The package: plan.py (options -> shards), cluster.py (Ray), loop.py (the run), shard.py (one shard, on a
worker), results.py (the merged results file). This module is the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from harness.commands import options
from harness.commands.sweep.cluster import cluster_device, connect
from harness.commands.sweep.loop import run_shards
from harness.commands.sweep.plan import (
    DEFAULT_OUT,
    EACH,
    SPLITS,
    SweepError,
    placements,
    plan_shards,
    plugin_paths,
    resolve_options,
)
from harness.contract.run_options import add_run_options

HELP = "shard the grid over a Ray cluster (one device per shard), merged into one results file"


EXAMPLE = "python -m harness sweep --ray auto --lstm-grid caffe --split impl --out sweep.json"


def add_arguments(parser) -> None:
    add_run_options(parser.add_argument, aliases=True, defaults=False, leave_out=("lstm_plugin",))
    options.add_plugin(parser)
    parser.add_argument("--split", choices=SPLITS, default=None,
                        help="problem (default): one shard per problem; impl: one per problem and implementation")
    parser.add_argument("--on-each", choices=EACH, default=None,
                        help="run every shard once per GPU model of the cluster, or once per node (to compare "
                             "devices on the same problems); default: once, on whichever device is free")
    parser.add_argument("--ray", metavar="ADDRESS", default=None,
                        help="join the Ray cluster at ADDRESS (host:port of its head, ray://host:port, or auto); "
                             "default: $RAY_ADDRESS, else a local Ray instance")
    parser.add_argument("--out", type=Path, metavar="RESULTS",
                        help=f"the results file (default: {DEFAULT_OUT}/sweep-<time>.json; with --resume, that file)")
    parser.add_argument("--resume", type=Path, metavar="RESULTS",
                        help="run only the shards RESULTS lacks (not finished, or failed), with its options")
    parser.add_argument("--retries", type=options.number(int, 0), default=2,
                        help="times Ray runs a shard again whose worker died (default 2)")
    parser.add_argument("--shard-timeout", type=options.positive(float), metavar="SECONDS",
                        help="fail a shard still running after SECONDS (default: no limit)")
    parser.add_argument("--runtime-env", metavar="JSON", type=_runtime_env,
                        help="Ray runtime environment for the tasks, e.g. '{\"working_dir\": \".\"}' or "
                             "'{\"pip\": [\"my-lstm\"]}'; the sweep adds the plugin modules it ships")
    parser.add_argument("--no-ship", action="store_true",
                        help="do not ship --lstm-plugin modules to the workers (they are installed there)")
    parser.add_argument("--num-cpus", type=options.positive(int), metavar="N",
                        help="CPUs of the local Ray instance (default: all); not with --ray")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (a line per shard still)")


def _runtime_env(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def run(args) -> int:
    prefix = options.error_prefix(args)
    try:
        return _sweep(args)
    except SweepError as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 2


def _sweep(args) -> int:
    from harness.commands.sweep.results import SweepFileError, SweepResults
    from harness.contract.grid import GridError
    from harness.contract.registry import RegistryError, discover

    if args.out is not None and args.out.exists() and (args.resume is None or args.out.resolve() !=
                                                       args.resume.resolve()):
        raise SweepError(f"--out {args.out}: the file exists (an earlier sweep's results?): resume it with "
                         f"--resume {args.out}, or name another file")
    resumed = None
    if args.resume is not None:
        try:
            resumed = SweepResults.read(args.resume)
        except SweepFileError as exc:
            raise SweepError(f"--resume {exc}") from None
    opts = resolve_options(args, resumed.sweep.get("options") if resumed else None)
    if args.ray and args.num_cpus:
        raise SweepError("--num-cpus: only for the local Ray instance, not with --ray")
    try:
        registry = discover(opts["plugins"] or [])
        # Every option checked before a cluster is touched (the device is the cluster's to say: cpu for now).
        plan_shards(opts, "cpu", registry, check_dtypes=opts["lstm_device"] == "cpu")
    except (GridError, RegistryError, ValueError) as exc:
        raise SweepError(str(exc)) from None
    runtime_env = dict(args.runtime_env or {})
    if not args.no_ship:
        shipped = plugin_paths(opts["plugins"] or [])
        if shipped:
            runtime_env["py_modules"] = [*runtime_env.get("py_modules", []), *shipped]

    try:
        import ray
    except ImportError:
        raise SweepError("Ray is not installed: pip install 'lstm-harness[ray]' (or pip install 'ray>=2.9')") \
            from None
    address, source = args.ray, "--ray"
    if not address and os.environ.get("RAY_ADDRESS"):
        address, source = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    address_shown = connect(ray, address, source, runtime_env, args.num_cpus)
    try:
        device, task_options, slots = cluster_device(ray, opts["lstm_device"] or "auto", address_shown)
        if resumed is not None and resumed.settings.get("device") not in (None, device):
            raise SweepError(f"--resume: the sweep ran on {resumed.settings['device']}, this cluster gives "
                             f"{device}; pass --lstm-device {resumed.settings['device']}")
        where = placements(opts.get("on_each"), device, ray.cluster_resources(),
                           ray.nodes() if opts.get("on_each") == "node" else [])
        try:
            shards, grid = plan_shards(opts, device, registry, where=where)
        except (GridError, RegistryError, ValueError) as exc:
            raise SweepError(str(exc)) from None
        return run_shards(ray, args, opts, shards, grid, device, task_options, slots, address_shown, resumed,
                           registry)
    finally:
        ray.shutdown()
