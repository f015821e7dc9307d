"""Several seeds of the Caffe LSTM's example: how often a net learns its sequence, and the spread.

One seed says little about a training recipe: the same net learns from one initialisation and
saturates from another. `python -m harness sequence --seeds N` trains each (configuration,
implementation) from N seeds and this module writes what they add up to: <out>/seeds.md (a table:
how many learned, NMSE median and range, every seed's NMSE, the command that made it), seeds.json
(the same as data) and, unless --no-plots, one figure per configuration and implementation with every
seed's generated sequence and loss curve.
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
from pathlib import Path

import pandas as pd

from harness.example.task import describe_lr_mults

SEEDS_TABLE = "seeds"  # <out>/seeds.md and seeds.json: the several-seeds summary


def summary_rows(runs: list[dict], threshold: float) -> list[dict]:
    """One row per (configuration, implementation), in the runs' order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["config"].name, run["impl"].name), []).append(run)
    rows = []
    for (config, impl), group in groups.items():
        nmses = [r["nmse"] for r in group]
        learned = sum(n < threshold for n in nmses)  # a diverged run (NaN) has not learned
        finite = [n for n in nmses if math.isfinite(n)] or [math.nan]
        rows.append({
            "config": config, "impl": impl, "seeds": [r["seed"] for r in group], "learned": learned,
            "runs": len(group), "success_rate": learned / len(group), "nmse_median": statistics.median(finite),
            "nmse_min": min(finite), "nmse_max": max(finite), "nmse": nmses,
            "diverged": [r["seed"] for r in group if not math.isfinite(r["nmse"])],
            "lr_mults": describe_lr_mults(group[0]["lr_mults"]),
        })
    return rows


def reproduce_command(args) -> str:
    """The command line that makes these runs again (every setting that changes a result)."""
    # repr: the shortest text that parses back to the same float; --jobs: it sets the threads a run gets.
    words = ["python", "-m", "harness", "sequence", "--config", ",".join(c.name for c in args.configs),
             "--impl", ",".join(c.name for c in args.impl_classes), "--iters", str(args.iters),
             "--seeds", ",".join(map(str, args.seeds)), "--jobs", str(args.jobs), "--dtype", args.dtype,
             "--device", args.device, "--optimizer", args.optimizer, "--clipping", args.clipping,
             "--biases", str(args.biases), "--success-nmse", repr(args.success_nmse), "--out", str(args.out)]
    if args.lr:
        words += ["--lr", repr(args.lr)]
    if args.lr_mult:
        words += ["--lr-mult", ",".join(f"{k}={v!r}" for k, v in args.lr_mult.items())]
    if args.clipping in ("norm", "auto"):
        words += ["--norm-clip", repr(args.norm_clip)]
    for plugin in args.plugins:
        words += ["--plugin", plugin]
    return shlex.join(words)


def markdown(rows: list[dict], runs: list[dict], args) -> str:
    table = pd.DataFrame([{
        "config": r["config"], "impl": r["impl"], "learned": f"{r['learned']} of {r['runs']}",
        "NMSE median": f"{r['nmse_median']:.4f}", "NMSE min": f"{r['nmse_min']:.4f}",
        "NMSE max": f"{r['nmse_max']:.4f}", "lr multipliers": r["lr_mults"],
        "NMSE by seed": ", ".join(f"{s}: {n:.3f}" for s, n in zip(r["seeds"], r["nmse"], strict=True)),
    } for r in rows])
    machine = runs[0].get("machine", "")
    lines = [
        f"Learned: NMSE of the generated sequence below {args.success_nmse:g}. {args.iters} iterations a run, "
        f"{args.dtype}, {args.device}, {args.biases} trained bias(es) a layer; {machine}.",
        "",
        table.to_markdown(index=False),
        "",
        f"Made by: `{reproduce_command(args)}`",
    ]
    return "\n".join(lines) + "\n"


def _finite_or_null(value):
    """JSON has no NaN: a diverged run's NMSE is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value


def write_summary(runs: list[dict], args) -> list[Path]:
    """seeds.md, seeds.json and (unless --no-plots) a figure per configuration and implementation."""
    rows = summary_rows(runs, args.success_nmse)
    table, data = args.out / f"{SEEDS_TABLE}.md", args.out / f"{SEEDS_TABLE}.json"
    table.write_text(markdown(rows, runs, args))
    data.write_text(json.dumps(_finite_or_null({"command": reproduce_command(args), "success_nmse": args.success_nmse,
                                                 "iterations": args.iters, "rows": rows}), indent=1,
                               allow_nan=False) + "\n")
    written = [table, data]
    if not args.no_plots:
        from harness.example.plot import plot_seeds

        for row in rows:
            group = [r for r in runs if (r["config"].name, r["impl"].name) == (row["config"], row["impl"])]
            path = args.out / f"{SEEDS_TABLE}-{row['config']}-{row['impl']}.png"
            written.append(plot_seeds(group, args.success_nmse, row, path))
    return written
