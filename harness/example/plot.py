"""Figure of one sequence run: the target as dots, the prediction as a line, the loss curve.

`python -m harness.sequence_plot RUN.log ...` redraws figures from a run's log and its
-loss.csv, so committed runs can be re-rendered without retraining.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def titles(header: list[str]) -> tuple[str, str]:
    """Figure titles from a run log's header lines (see harness.example.command.write_outputs)."""
    name, rest = header[0].lstrip("# ").split(": ", 1)
    impl = rest.split("implementation ", 1)[1].split(" ", 1)[0]
    nmse = header[3].lstrip("# ").split(";", 1)[0]
    training = header[1].lstrip("# ").split(", float", 1)[0]
    clipping = header[2].lstrip("# ").replace("clipping: ", "").split(" (")[0].split(" inside")[0]
    return f"{name} ({rest.split(';', 1)[0]}) through `{impl}`: {nmse}", f"{training}; clipping: {clipping}"


def replot(log: Path) -> Path:
    lines = log.read_text().splitlines()
    start = lines.index("target prediction")
    steps = pd.DataFrame([map(float, l.split()) for l in lines[start + 1:]], columns=["target", "prediction"])
    steps.insert(0, "step", range(len(steps)))
    losses = pd.read_csv(log.parent / f"{log.stem}-loss.csv")
    return plot_run(steps, losses, *titles(lines[:start]), log.with_suffix(".png"))


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(replot(Path(arg)))
