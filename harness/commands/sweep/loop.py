"""The sweep's run: every shard a Ray task, results written as each one ends (atomically), a progress bar and
a line per shard, SIGTERM and Ctrl-C stopping it with nothing finished lost."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import time

from harness.commands.sweep.cluster import first_line
from harness.commands.sweep.plan import DEFAULT_OUT, ShardPlan, entry_point_packages


def shard_task(spec: dict) -> dict:
    """The Ray task: one shard. A pytest process killed by a signal takes this worker with it, so that Ray
    sees a worker death and retries the shard (max_retries), as for a worker killed itself."""
    from harness.commands.sweep.shard import run_shard

    def die(signum: int) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    return run_shard(spec, on_killed=die)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def run_shards(ray, args, opts, shards, grid, device, task_options, slots, address, resumed, registry) -> int:
    from tqdm import tqdm

    from harness.commands.sweep.results import SweepResults

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
    task = ray.remote(shard_task)
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
    from harness.commands.sweep.results import shard_output_error

    info = {"submitted": submitted}
    if shard.placement and shard.placement.get("label_host"):
        info["device_label_host"] = shard.placement["label_host"]  # --on-each node: rows named per node
    try:
        outcome = ray.get(ref)
    except ray.exceptions.RayError as exc:
        what = type(exc).__name__
        if what in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "ActorDiedError"):
            reason = (f"its worker died on each of its {retries + 1} attempt(s) (killed, out of memory, or its node "
                      f"lost; Ray retried it {retries} time(s)): {what}: {first_line(exc)}")
        else:
            reason = f"its Ray task failed: {what}: {first_line(exc)}"
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
