"""Figure of one sequence run: the target as dots, the prediction as a line, the loss curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def plot_run(run: dict, subtitle: str, path: Path) -> Path:
    sns.set_theme(style="whitegrid", context="notebook")
    config, cls = run["config"], run["impl"]
    steps = pd.DataFrame({"step": range(len(run["target"])), "target": run["target"].numpy(),
                          "prediction": run["prediction"].numpy()})
    losses = pd.DataFrame({"iteration": range(1, len(run["losses"]) + 1), "loss": run["losses"]})
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), height_ratios=(3, 2))
    sns.scatterplot(data=steps, x="step", y="target", ax=top, s=10, color="black", label="target", linewidth=0)
    sns.lineplot(data=steps, x="step", y="prediction", ax=top, color="tab:red", label="prediction")
    top.set(title=f"{config.name} ({config.about}) through `{cls.name}`: NMSE {run['nmse']:.4f}",
            xlabel="generated step", ylabel="value")
    sns.lineplot(data=losses, x="iteration", y="loss", ax=bottom, color="tab:blue", linewidth=0.8)
    bottom.set(yscale="log", xlabel="training iteration", ylabel="loss (sum sq. err / 640)",
               title=subtitle)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
