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
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.commands import options

HELP = "shard the grid over a Ray cluster (one device per shard), merged into one results file"
EXAMPLE = "python -m harness sweep --ray auto --lstm-grid caffe --split impl --out sweep.json"

SLOT = "lstm_timing_slot"  # the Ray resource a CPU shard takes: declare 1 per node (`ray start --resources`)
START_LINE = f"ray start --head --resources='{{\"{SLOT}\": 1}}'"
DEFAULT_OUT = Path(".benchmarks") / "sweeps"  # `harness report` with no file takes the newest under .benchmarks/
SPLITS = ("problem", "impl")
# dest -> (option strings, metavar, help): the suites' own options, under their own names (and shorter ones).
GRID_OPTIONS = {
    "lstm_grid": (("--lstm-grid", "--grid"), "NAME", "named grid: auto, caffe, cpu, smoke (as pytest suites/)"),
    "lstm_batch": (("--lstm-batch", "--batch"), "N[,N...]", "batch sizes, replacing the grid's"),
    "lstm_length": (("--lstm-length", "--length"), "N[,N...]", "sequence lengths, replacing the grid's"),
    "lstm_hidden": (("--lstm-hidden", "--hidden"), "N[,N...]", "hidden sizes, replacing the grid's"),
    "lstm_input": (("--lstm-input", "--input"), "N[,N...]", "input widths (default: the grid's, or = hidden)"),
    "lstm_layers": (("--lstm-layers", "--layers"), "N[,N...]", "layer counts, replacing the grid's"),
    "lstm_dtype": (("--lstm-dtype", "--dtype"), "DTYPE[,...]", "precision modes (default float32)"),
    "lstm_impls": (("--lstm-impls", "--impls"), "NAME[,...]", "implementations (default: every registered one)"),
    "lstm_device": (("--lstm-device", "--device"), "DEVICE",
                    "auto (cuda when the cluster has GPUs, else cpu), cpu or cuda"),
    "lstm_seed": (("--lstm-seed", "--seed"), "N", "seed of inputs, weights and upstream gradients (default 0)"),
    "lstm_rounds": (("--lstm-rounds", "--rounds"), "N", "timed rounds per measurement (default: fit --lstm-max-time)"),
    "lstm_min_rounds": (("--lstm-min-rounds",), "N", "at least this many timed rounds (default 5)"),
    "lstm_warmup": (("--lstm-warmup",), "N", "untimed warm-up rounds (default 1)"),
    "lstm_max_time": (("--lstm-max-time",), "SECONDS", "time budget that sizes the rounds (default 1.0)"),
    "lstm_interleave": (("--lstm-interleave",), "on|off", "implementations of a point take rounds in turn"),
    "lstm_interference_threshold": (("--lstm-interference-threshold",), "CORES",
                                    "cores used by others that make rounds disturbed (default 0.1)"),
    "lstm_redo_budget": (("--lstm-redo-budget",), "FACTOR", "disturbed rounds redone per planned round (default 1)"),
}
# What a resumed sweep must share with the sweep it resumes (its options as given, and the split).
SWEEP_OPTIONS = (*GRID_OPTIONS, "plugins", "split", "on_each")


class SweepError(Exception):
    """The sweep cannot run as asked (a bad option, a wrong address, a cluster without what it needs): exit 2."""


@dataclass(frozen=True)
class ShardPlan:
    key: str
    problem: object  # harness.contract.problem.Problem
    impls: tuple[str, ...]
    args: tuple[str, ...]  # the shard's --lstm-* options for pytest suites/test_speed.py
    placement: dict | None = None  # --on-each: where it must run (see placements)


EACH = ("gpu-model", "node")
ACCELERATOR = "accelerator_type:"  # the resource Ray declares on a node per GPU model, e.g. accelerator_type:H100


def placements(each: str | None, device: str, resources: dict, nodes: list[dict]) -> list[dict]:
    """Where every shard runs once with --on-each: per GPU model (Ray's accelerator_type resources) or per node
    (alive nodes that have what a shard asks for). Each: {"suffix": for the shard key, "resources": extra Ray
    resources, or "node_id": the node, "label": the device name its rows get (node: the host added, since
    identical devices on two nodes would otherwise be one)}. [None] without --on-each."""
    if each is None:
        return [None]
    if each == "gpu-model":
        models = sorted(k.removeprefix(ACCELERATOR) for k in resources if k.startswith(ACCELERATOR))
        if device != "cuda" or not models:
            raise SweepError("--on-each gpu-model: the cluster names no GPU model (Ray declares "
                             f"'{ACCELERATOR}MODEL' on NVIDIA GPU nodes); for CPU nodes use --on-each node")
        return [{"suffix": m, "resources": {ACCELERATOR + m: 0.001}} for m in models]
    need = "GPU" if device == "cuda" else SLOT
    found = [n for n in nodes if n.get("Alive") and (n.get("Resources") or {}).get(need, 0) >= 1]
    if not found:
        raise SweepError(f"--on-each node: no alive node of the cluster has {need!r}")
    return [{"suffix": n.get("NodeManagerAddress") or n["NodeID"], "node_id": n["NodeID"],
             "label_host": n.get("NodeManagerHostname") or n.get("NodeManagerAddress")} for n in found]


def add_arguments(parser) -> None:
    for dest, (flags, metavar, text) in GRID_OPTIONS.items():
        parser.add_argument(*flags, dest=dest, metavar=metavar, help=text)
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


# ---- the plan: options -> shards (no Ray) ------------------------------------------------------------

def resolve_options(args, stored: dict | None) -> dict:
    """The sweep's options: as given, or on --resume those of the sweep resumed. An option given on resume that
    differs from the sweep's is an error: the shards already done were made without it."""
    given = {k: getattr(args, k) for k in GRID_OPTIONS} | {"plugins": list(args.plugins), "split": args.split,
                                                           "on_each": args.on_each}
    if stored is None:
        return given | {"split": given["split"] or "problem"}
    for key in SWEEP_OPTIONS:
        value, before = given[key], stored.get(key)
        if value in (None, []) or value == before:
            continue
        flag = GRID_OPTIONS[key][0][0] if key in GRID_OPTIONS else \
            {"plugins": "--lstm-plugin"}.get(key, "--" + key.replace("_", "-"))
        raise SweepError(f"--resume: {flag} {value!r} differs from the sweep's ({before!r}); leave it out to "
                         "resume the same sweep, or start a new one")
    return {k: stored.get(k) for k in SWEEP_OPTIONS}


def plan(opts: dict, device: str, registry, check_dtypes: bool = True,
         where: list[dict | None] = (None,)) -> tuple[list[ShardPlan], object]:
    """The shards of the grid the options name on `device`, every option checked as `pytest suites/` checks it
    (the same parsers), before anything runs. Returns the shards and the grid. On CUDA the workers' GPUs
    decide which precision modes run (the driver may have none)."""
    from harness.contract.grid import parse_run_options

    run = parse_run_options(opts.get, device, registry.names(), check_dtypes=device == "cpu" and check_dtypes)
    grid, names = run.grid, run.impls or tuple(registry.names())
    passed = []
    for dest in ("lstm_rounds", "lstm_min_rounds", "lstm_warmup", "lstm_max_time", "lstm_seed", "lstm_interleave",
                 "lstm_interference_threshold", "lstm_redo_budget"):
        if opts.get(dest) is not None:  # a resumed sweep's stored options may predate an option
            passed += [GRID_OPTIONS[dest][0][0], str(opts[dest])]
    for module in opts["plugins"] or []:
        passed += ["--lstm-plugin", module]
    shards = []
    for problem in run.problems:
        point = ["--lstm-grid", grid.name, "--lstm-device", device, "--lstm-batch", str(problem.batch),
                 "--lstm-length", str(problem.length), "--lstm-hidden", str(problem.hidden),
                 "--lstm-input", str(problem.input_size), "--lstm-layers", str(problem.layers),
                 "--lstm-dtype", problem.dtype]
        groups = [(problem.id, names)] if opts["split"] == "problem" else \
            [(f"{problem.id}/{name}", (name,)) for name in names]
        for key, impls in groups:
            for place in where:
                shards.append(ShardPlan(key if place is None else f"{key}@{place['suffix']}", problem,
                                        tuple(impls), (*point, "--lstm-impls", ",".join(impls), *passed), place))
    return shards, grid


def plugin_paths(plugins: list[str]) -> list[str]:
    """The local files of the --lstm-plugin modules, for Ray's py_modules: each module's top-level package (a
    folder) or its file. Modules installed in site-packages, and the harness's own, are left to the nodes."""
    paths = []
    for module in plugins:
        top = module.split(".")[0]
        if top in ("harness", "impls"):
            continue
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise SweepError(f"--lstm-plugin {module}: cannot find {top!r} here, on the driver, to ship it")
        where = list(spec.submodule_search_locations or []) or ([spec.origin] if spec.origin else [])
        if len(where) != 1 or not Path(where[0]).exists():
            continue  # a namespace package or a built-in: nothing to ship
        if {"site-packages", "dist-packages"} & set(Path(where[0]).parts):
            continue
        paths.append(str(Path(where[0]).resolve()))
    return list(dict.fromkeys(paths))


def entry_point_packages(registry, names) -> dict[str, str]:
    """Implementation name -> the package whose entry point registered it (the nodes need that package)."""
    from harness.contract.registry import ENTRY_POINT_GROUP

    dists = {ep.name: getattr(ep.dist, "name", None) or ep.value
             for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    out = {}
    for reg in registry.select(names):
        if reg.origin.startswith("entry point "):
            ep_name = reg.origin.removeprefix("entry point ").split(" ")[0]
            out[reg.name] = dists.get(ep_name, ep_name)
    return out


# ---- Ray ---------------------------------------------------------------------------------------------

def _shard_task(spec: dict) -> dict:
    """The Ray task: one shard. A pytest process killed by a signal takes this worker with it, so that Ray
    sees a worker death and retries the shard (max_retries), as for a worker killed itself."""
    from harness.measuring.shard import run_shard

    def die(signum: int) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    return run_shard(spec, on_killed=die)


def _named(address: str, source: str) -> str:
    return f"RAY_ADDRESS={address}" if source == "RAY_ADDRESS" else f"--ray {address}"


def check_address(address: str, source: str) -> None:
    """A host:port (or ray://host:port) that nothing answers at is an error naming it, before Ray would retry
    for a minute. `auto` is left to Ray."""
    named = _named(address, source)
    instead = "unset RAY_ADDRESS" if source == "RAY_ADDRESS" else "leave out --ray"
    if address in ("auto", "local"):
        if address == "local":
            raise SweepError(f"{named}: {instead} for a local Ray instance")
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"{named}: not an address of a Ray cluster; expected HOST:PORT of its head "
                         "(e.g. 10.0.0.1:6379, printed by `ray start --head`), ray://HOST:PORT, or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise SweepError(f"{named}: no Ray cluster answers at {host}:{port} ({exc.strerror or exc}); start one "
                         f"with `{START_LINE}` on its head node (CPU nodes declare the slot; GPU nodes need "
                         f"nothing more), or {instead} for a local instance") from None


def connect(ray, address: str | None, source: str, runtime_env: dict, num_cpus: int | None) -> str:
    """Join the cluster at `address`, or start a local instance that declares the timing slot. Returns what
    the results record as the address."""
    import logging

    common = {"runtime_env": runtime_env or None, "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        check_address(address, source)
        try:
            ray.init(address=address, **common)
        except Exception as exc:  # noqa: BLE001 - whatever Ray raises, it names the address and why
            raise SweepError(f"{_named(address, source)}: cannot join a Ray cluster there: {type(exc).__name__}: "
                             f"{_first_line(exc)} (a cluster with token authentication, Ray's default where "
                             "~/.ray/auth_token exists, needs RAY_AUTH_MODE=token and the token here too)") from None
        return address
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), resources={SLOT: 1}, include_dashboard=False,
             **common)
    return "local"


def cluster_device(ray, asked: str, address: str) -> tuple[str, dict, int]:
    """The sweep's device (auto: cuda when the cluster has GPUs), the Ray options of each task, and how many
    shards can run at once."""
    resources = ray.cluster_resources()
    gpus, slots = int(resources.get("GPU", 0)), int(resources.get(SLOT, 0))
    if asked not in ("auto", "cpu", "cuda"):
        raise SweepError(f"--lstm-device: unknown device {asked!r}; choose from auto, cpu, cuda")
    device = ("cuda" if gpus else "cpu") if asked == "auto" else asked
    if device == "cuda":
        if not gpus:
            raise SweepError(f"--lstm-device cuda: the Ray cluster ({address}) has no GPU")
        return device, {"num_gpus": 1, "num_cpus": 1}, gpus
    if not slots:
        raise SweepError(f"the Ray cluster ({address}) declares no {SLOT!r} resource, which keeps two timed CPU "
                         f"shards off one machine: start each CPU node with `{START_LINE}` (a worker: "
                         f"`ray start --address HEAD:6379 --resources='{{\"{SLOT}\": 1}}'`)")
    return device, {"num_cpus": 1, "resources": {SLOT: 1}}, slots


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:2])[:400] if lines else type(exc).__name__


# ---- the command -------------------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def run(args) -> int:
    prefix = options.error_prefix(args)
    try:
        return _sweep(args)
    except SweepError as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 2


def _sweep(args) -> int:
    from harness.contract.grid import GridError
    from harness.contract.registry import RegistryError, discover
    from harness.reporting.sweep import SweepFileError, SweepResults

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
        plan(opts, "cpu", registry, check_dtypes=opts["lstm_device"] == "cpu")
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
            shards, grid = plan(opts, device, registry, where=where)
        except (GridError, RegistryError, ValueError) as exc:
            raise SweepError(str(exc)) from None
        return _run_shards(ray, args, opts, shards, grid, device, task_options, slots, address_shown, resumed,
                           registry)
    finally:
        ray.shutdown()


def _run_shards(ray, args, opts, shards, grid, device, task_options, slots, address, resumed, registry) -> int:
    from tqdm import tqdm

    from harness.reporting.sweep import SweepResults

    path = args.out or (args.resume if resumed is not None else
                        DEFAULT_OUT / f"sweep-{dt.datetime.now():%Y%m%d-%H%M%S}.json")
    started_at = _now()
    settings = {"grid": grid.name, "grid_about": grid.about, "device": device}
    for key, dest, kind in (("seed", "lstm_seed", int), ("warmup", "lstm_warmup", int),
                            ("rounds", "lstm_rounds", int), ("min_rounds", "lstm_min_rounds", int),
                            ("max_time", "lstm_max_time", float)):
        settings[key] = kind(opts[dest]) if opts[dest] is not None else None
    if settings["seed"] is None:
        settings["seed"] = 0
    results = resumed or SweepResults(settings, {"options": opts, "split": opts["split"], "started": started_at})
    results.sweep["planned"] = [s.key for s in shards]
    runs = results.sweep.setdefault("runs", [])
    this_run = {"started": started_at, "address": address, "device": device, "retries": args.retries,
                "slots": slots, "shards": 0}
    runs.append(this_run)
    done_before = results.done()
    todo = [s for s in shards if s.key not in done_before]
    results.write(path)
    if resumed is not None:
        print(f"resuming {path}: {len(shards) - len(todo)} of {len(shards)} shard(s) done there; "
              f"{len(todo)} to run", file=sys.stderr)
    if not todo:
        print(f"sweep: nothing to run: every one of the {len(shards)} shard(s) is done in {path}", file=sys.stderr)
        return 0
    driver_env = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    entry_points = entry_point_packages(registry, None if opts["lstm_impls"] is None else
                                        [n for s in shards for n in s.impls])
    task = ray.remote(_shard_task)
    common = {"max_retries": args.retries, "retry_exceptions": False, **task_options}
    wall = time.perf_counter()
    pending = {}
    for shard in todo:
        spec = {"key": shard.key, "args": list(shard.args), "plugins": list(opts["plugins"] or []),
                "entry_points": {n: d for n, d in entry_points.items() if n in shard.impls},
                "driver_env": driver_env, "timeout": args.shard_timeout}
        placed = dict(common)
        if shard.placement and "resources" in shard.placement:  # --on-each gpu-model
            placed["resources"] = {**task_options.get("resources", {}), **shard.placement["resources"]}
        elif shard.placement:  # --on-each node
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            placed["scheduling_strategy"] = NodeAffinitySchedulingStrategy(shard.placement["node_id"], soft=False)
        pending[task.options(**placed).remote(spec)] = (shard, time.time())
    counts = {"done": 0, "failed": 0}
    # The bar on a terminal; in a log, the line per shard says as much (with the time left).
    bar = tqdm(total=len(todo), desc="sweep", unit="shard", file=sys.stderr, dynamic_ncols=True,
               disable=args.no_progress or not sys.stderr.isatty(),
               bar_format="{desc} |{bar}| {n}/{total} shards [{elapsed}, {remaining} left]")

    def postfix() -> None:
        # Running: as many as the cluster has slots (GPUs, or timing slots), while shards wait.
        bar.set_description_str(f"sweep: done {counts['done']}, running {min(len(pending), slots)}, "
                                f"failed {counts['failed']}", refresh=True)

    postfix()

    def terminated(signum, frame):
        raise KeyboardInterrupt  # a batch system's SIGTERM stops the sweep as Ctrl-C does: nothing finished lost

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                shard, submitted = pending.pop(ref)
                line = _collect(ray, ref, shard, submitted, results, args.retries)
                counts["failed" if shard.key in results.failed() else "done"] += 1
                this_run["shards"] += 1
                this_run["wall_seconds"] = elapsed = time.perf_counter() - wall
                results.write(path)
                finished = counts["done"] + counts["failed"]
                left = elapsed / finished * (len(todo) - finished)
                bar.write(f"{line} [{finished}/{len(todo)}, about {_duration(left)} left]", file=sys.stderr)
                bar.update(1)
            postfix()
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        bar.close()
        this_run["interrupted"] = _now()
        results.write(path)
        print(f"sweep: interrupted: {len(results.done())} of {len(shards)} shard(s) done are in {path}; run the "
              f"rest with: python -m harness sweep --resume {path}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    bar.close()
    this_run["finished"] = _now()
    this_run["wall_seconds"] = time.perf_counter() - wall
    results.write(path)
    failed = [k for k in results.failed() if k in {s.key for s in shards}]
    names = {s.device_name for s in results.shards.values() if s.status == "done"}
    print(f"sweep: {len(shards)} shard(s): {len(results.done())} done, {len(failed)} failed "
          f"({counts['done'] + counts['failed']} run now in {this_run['wall_seconds']:.1f} s on "
          f"{len(names)} device(s)); results: {path} (python -m harness report {path})")
    return 1 if failed else 0


def _collect(ray, ref, shard: ShardPlan, submitted: float, results, retries: int) -> str:
    """One finished task into the results; returns the line that says how it went."""
    from harness.reporting.sweep import shard_output_error

    info = {"submitted": submitted}
    if shard.placement and shard.placement.get("label_host"):
        info["device_label_host"] = shard.placement["label_host"]  # --on-each node: rows named per node
    try:
        outcome = ray.get(ref)
    except ray.exceptions.RayError as exc:
        what = type(exc).__name__
        if what in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "ActorDiedError"):
            reason = (f"its worker died on each of its {retries + 1} attempt(s) (killed, out of memory, or its node "
                      f"lost; Ray retried it {retries} time(s)): {what}: {_first_line(exc)}")
        else:
            reason = f"its Ray task failed: {what}: {_first_line(exc)}"
        results.add_failed(shard.key, shard.problem, list(shard.impls), reason, info)
        return f"FAILED {shard.key}: {reason}"
    info |= {k: v for k, v in outcome.items() if k not in ("status", "key", "output", "reason")}
    if outcome["status"] == "done":
        problem = shard_output_error(outcome["output"])
        if problem is None:
            results.add_done(shard.key, shard.problem, list(shard.impls), outcome["output"], info)
            s = results.shards[shard.key]
            return (f"done   {shard.key} on {outcome.get('host')} ({outcome.get('pytest_seconds', 0):.1f} s; "
                    f"{s.info['timed']} timed, {s.info['not_timed']} not timed)")
        outcome = {"reason": problem}
    results.add_failed(shard.key, shard.problem, list(shard.impls), outcome["reason"], info)
    return f"FAILED {shard.key} on {info.get('host', '?')}: {outcome['reason']}"
