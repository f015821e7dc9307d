"""The sweep's plan: its options -> shards, each with the pytest options that narrow the suites to it, and
what must ship to the nodes (plugin modules, entry-point packages). No Ray here."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from harness.contract.run_options import RUN_OPTIONS

SLOT = "lstm_timing_slot"  # the Ray resource a CPU shard takes: declare 1 per node (`ray start --resources`)


START_LINE = f"ray start --head --resources='{{\"{SLOT}\": 1}}'"


DEFAULT_OUT = Path(".benchmarks") / "sweeps"  # `harness report` with no file takes the newest under .benchmarks/


SPLITS = ("problem", "impl")


# The suites' own options (harness.contract.run_options), under their own names and shorter ones; --lstm-plugin
# is the commands' --plugin (dest "plugins").
GRID_OPTIONS = {o.dest: o for o in RUN_OPTIONS if o.dest != "lstm_plugin"}


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
        flag = GRID_OPTIONS[key].flag if key in GRID_OPTIONS else \
            {"plugins": "--lstm-plugin"}.get(key, "--" + key.replace("_", "-"))
        raise SweepError(f"--resume: {flag} {value!r} differs from the sweep's ({before!r}); leave it out to "
                         "resume the same sweep, or start a new one")
    return {k: stored.get(k) for k in SWEEP_OPTIONS}


def plan_shards(opts: dict, device: str, registry, check_dtypes: bool = True,
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
            passed += [GRID_OPTIONS[dest].flag, str(opts[dest])]
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
