"""Seaborn figures of a results table: stacked forward/backward bars per problem, a heatmap of
speedups over batch x length, and time against length and against batch with the IQR as a band.

Each implementation keeps one colour across every figure; titles name the device and shape.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from harness.record.schema import PROBLEM_FIELDS  # noqa: E402

AXES = ("batch", "length")  # the Problem fields a figure varies; every other one (and the device) is its shape
SHAPE = ["device_name", *(f for f in PROBLEM_FIELDS if f not in AXES)]


def palette(impls) -> dict[str, tuple]:
    """One colour per implementation name, the same in every figure of a report."""
    names = sorted(set(impls))
    return dict(zip(names, sns.color_palette("tab10", n_colors=max(len(names), 1)), strict=True))


def _shape_title(rows: pd.DataFrame) -> str:
    r = rows.iloc[0].to_dict()  # (a Series' .dtype would be the Series' own)
    return f"{r['device_name']}; {r['layers']} layer(s), input {r['input_size']}, hidden {r['hidden']}, {r['dtype']}"


def stacked_bars(t: pd.DataFrame, colours: dict, path: Path) -> Path:
    problems = t.drop_duplicates(["problem_id", "device_name"])
    cols = min(len(problems), 2)
    rows_n = int(np.ceil(len(problems) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(6.5 * cols, 3.6 * rows_n), squeeze=False)
    for ax, (_, p) in zip(axes.flat, problems.iterrows(), strict=False):
        rows = t[(t.problem_id == p.problem_id) & (t.device_name == p.device_name)]
        med = rows.pivot_table(index="impl", columns="phase", values="median_ms", aggfunc="last")
        med = med.sort_values("total") if "total" in med else med
        fwd, bwd = med.get("forward", 0 * med.iloc[:, 0]), med.get("backward", 0 * med.iloc[:, 0])
        colour = [colours[i] for i in med.index]
        ax.barh(med.index, fwd, color=colour, alpha=0.95)
        ax.barh(med.index, bwd, left=fwd, color=colour, alpha=0.45, hatch="//")
        ax.invert_yaxis()
        ax.set(title=f"batch {p.batch}, length {p.length}", xlabel="median time (ms): forward + backward",
               ylabel="")
        ax.legend(handles=[Patch(color="grey", alpha=0.95, label="forward"),
                           Patch(color="grey", alpha=0.45, hatch="//", label="backward")],
                  loc="lower right", fontsize=8)
    for ax in list(axes.flat)[len(problems):]:
        ax.axis("off")
    fig.suptitle(f"Forward and backward time per implementation\n{_shape_title(t)}", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def speedup_heatmaps(t: pd.DataFrame, baseline: str, path: Path) -> Path | None:
    total = t[t.phase == "total"]
    grid = total.pivot_table(index=["impl", "batch"], columns="length", values="median_ms", aggfunc="last")
    if baseline not in grid.index.get_level_values(0):
        return None
    base = grid.xs(baseline, level="impl")
    impls = [i for i in sorted(set(total.impl)) if i != baseline]
    if not impls:
        return None
    fig, axes = plt.subplots(1, len(impls), figsize=(3.6 * len(impls) + 1, 3.4), squeeze=False)
    for ax, impl in zip(axes.flat, impls, strict=True):
        speedup = (base / grid.xs(impl, level="impl")).sort_index(ascending=False)
        sns.heatmap(speedup, ax=ax, annot=True, fmt=".2f", cmap="RdYlGn", center=1.0, cbar=False,
                    linewidths=0.5)
        ax.set(title=f"{impl}", xlabel="length (steps)", ylabel="batch")
    fig.suptitle(f"Total-time speedup against {baseline} (above 1: faster)\n{_shape_title(t)}", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def scaling_lines(t: pd.DataFrame, colours: dict, x: str, facet: str, path: Path) -> Path:
    total = t[t.phase == "total"].sort_values(x)
    values = sorted(total[facet].unique())
    fig, axes = plt.subplots(1, len(values), figsize=(5.2 * len(values), 3.8), squeeze=False, sharey=False)
    for ax, value in zip(axes.flat, values, strict=True):
        rows = total[total[facet] == value]
        for impl, line in rows.groupby("impl"):
            ax.plot(line[x], line.median_ms, marker="o", color=colours[impl], label=impl)
            ax.fill_between(line[x], line.q1_ms, line.q3_ms, color=colours[impl], alpha=0.25, linewidth=0)
        ax.set(title=f"{facet} {value}", xlabel=f"{x} ({'steps' if x == 'length' else 'sequences'})",
               ylabel="total time (ms), median; band: IQR", yscale="log")
        ax.legend(fontsize=8)
    fig.suptitle(f"Total time against {x}\n{_shape_title(t)}", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """Write `fig` to `path` and close it (pyplot keeps every open figure alive): the one way figures are saved."""
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def render_figures(t: pd.DataFrame, baseline: str, folder: Path) -> list[Path]:
    """All figures of a results table into `folder`; one set per shape (device, widths, dtype)."""
    sns.set_theme(style="whitegrid", context="notebook")
    folder.mkdir(parents=True, exist_ok=True)
    colours = palette(t.impl)
    written = []
    shapes = t.drop_duplicates(SHAPE)[SHAPE]
    for n, (_, shape) in enumerate(shapes.iterrows()):
        rows = t[(t[SHAPE] == shape).all(axis=1)]
        tag = "" if len(shapes) == 1 else f"-{n + 1}"
        written.append(stacked_bars(rows, colours, folder / f"bars{tag}.png"))
        heat = speedup_heatmaps(rows, baseline, folder / f"speedup{tag}.png")
        written += [heat] if heat else []
        if rows.length.nunique() > 1:
            written.append(scaling_lines(rows, colours, "length", "batch", folder / f"vs-length{tag}.png"))
        if rows.batch.nunique() > 1:
            written.append(scaling_lines(rows, colours, "batch", "length", folder / f"vs-batch{tag}.png"))
    return written
