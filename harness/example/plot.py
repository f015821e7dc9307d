"""Figure of one sequence run: the target as dots, the prediction as a line, the loss curve.

`python -m harness replot RUN.log ...` (harness.commands.replot) redraws figures from a run's log and its
-loss.csv, so committed runs can be re-rendered without retraining.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from harness.reporting.figures import save_figure  # noqa: E402


def plot_run(steps: pd.DataFrame, losses: pd.DataFrame, title: str, subtitle: str, path: Path) -> Path:
    """steps: columns step, target, prediction; losses: columns iteration, loss."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), height_ratios=(3, 2))
    sns.scatterplot(data=steps, x="step", y="target", ax=top, s=10, color="black", label="target", linewidth=0)
    sns.lineplot(data=steps, x="step", y="prediction", ax=top, color="tab:red", label="prediction")
    top.set(title=title, xlabel="generated step", ylabel="value")
    sns.lineplot(data=losses, x="iteration", y="loss", ax=bottom, color="tab:blue", linewidth=0.8)
    bottom.set(yscale="log", xlabel="training iteration", ylabel="loss (sum sq. err / 640)", title=subtitle)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def header_path(log: Path) -> Path:
    """The JSON sidecar beside a run log that holds its header's values (RUN.log -> RUN.json)."""
    return log.with_suffix(".json")


def short_clipping(clipping: str) -> str:
    """A clipping description without its details: what a figure's subtitle shows."""
    return clipping.split(" (")[0].split(" inside")[0]


def titles_from_header(header: dict) -> tuple[str, str]:
    """Figure titles from a run's header values (the sidecar harness.example.command.write_outputs writes)."""
    about = header["about"].split(";", 1)[0]
    return (f"{header['config']} ({about}) through `{header['impl']}`: NMSE {header['nmse']:.6f}",
            f"{header['training']}; clipping: {short_clipping(header['clipping'])}")


def titles(header: list[str]) -> tuple[str, str]:
    """Figure titles parsed from a run log's header lines: for logs written before the sidecar."""
    name, rest = header[0].lstrip("# ").split(": ", 1)
    impl = rest.split("implementation ", 1)[1].split(" ", 1)[0]
    nmse = header[3].lstrip("# ").split(";", 1)[0]
    training = header[1].lstrip("# ").split(", float", 1)[0]
    clipping = short_clipping(header[2].lstrip("# ").replace("clipping: ", ""))
    return f"{name} ({rest.split(';', 1)[0]}) through `{impl}`: {nmse}", f"{training}; clipping: {clipping}"


def replot(log: Path) -> Path:
    lines = log.read_text().splitlines()
    start = lines.index("target prediction")
    steps = pd.DataFrame([map(float, l.split()) for l in lines[start + 1:]], columns=["target", "prediction"])
    steps.insert(0, "step", range(len(steps)))
    losses = pd.read_csv(log.parent / f"{log.stem}-loss.csv")
    sidecar = header_path(log)
    heading = titles_from_header(json.loads(sidecar.read_text())) if sidecar.is_file() else titles(lines[:start])
    return plot_run(steps, losses, *heading, log.with_suffix(".png"))


def plot_seeds(runs: list[dict], threshold: float, row: dict, path: Path) -> Path:
    """Every seed of one (configuration, implementation): its generated sequence over the target, and its
    loss curve (a moving mean over 100 iterations, so the curves stay apart)."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), height_ratios=(3, 2))
    target = runs[0]["target"]
    top.scatter(range(len(target)), target.tolist(), s=6, color="black", label="target", linewidths=0)
    colours = sns.color_palette("husl", len(runs))
    for run, colour in zip(runs, colours, strict=True):
        learned = run["nmse"] < threshold
        label = f"seed {run['seed']}: NMSE {run['nmse']:.3f}"
        top.plot(run["prediction"].tolist(), color=colour, linewidth=1.0 if learned else 0.8,
                 linestyle="-" if learned else "--", label=label)
        losses = pd.Series(run["losses"]).rolling(100, min_periods=1).mean()
        bottom.plot(range(1, len(losses) + 1), losses, color=colour, linewidth=0.8)
    top.set(title=f"{row['config']} through `{row['impl']}`: {row['learned']} of {row['runs']} seeds learned "
                  f"(NMSE < {threshold:g}; dashed: not learned)", xlabel="generated step", ylabel="value")
    top.legend(fontsize=7, ncols=2, loc="upper right")
    bottom.set(yscale="log", xlabel="training iteration", ylabel="loss (moving mean of 100)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
