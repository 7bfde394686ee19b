"""Loss and ct_val Dice curves of the training runs in docs/benchmarks/training/ (TrainingLog JSON).

python docs/benchmarks/plot_training.py docs/benchmarks/training docs/benchmarks/training.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RUNS = {
    "full_6000": "shipped: location-scale + GIN + thick slices, 6000 it.",
    "gin_6000": "GIN only, 6000 it.",
    "mr_to_ct_6000": "same config trained MR -> CT (val: CT)",
}


def main(folder: str, out: str) -> None:
    fig, (loss_ax, dice_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, label in RUNS.items():
        log = json.loads((Path(folder) / f"{name}.json").read_text())
        loss_ax.plot([r[1] for r in log["loss"]], [r[2] for r in log["loss"]], label=label, lw=0.8)
        dice_ax.plot(
            [r[1] for r in log["val"]], [100 * r[2] for r in log["val"]], "o-", label=label
        )
    loss_ax.set(xlabel="seconds", ylabel="training loss (Dice + CE)", yscale="log", title="loss")
    dice_ax.set(
        xlabel="seconds",
        ylabel="val mean Dice (x100)",
        title="validation Dice (ct_val)",
        ylim=(0, 100),
    )
    dice_ax.axhline(88, color="grey", ls="--", lw=0.8)
    for ax in (loss_ax, dice_ax):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:3])
