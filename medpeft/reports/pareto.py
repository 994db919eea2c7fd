"""Accuracy-versus-cost Pareto front and its plot (Dice against trainable parameters).

A method is on the Pareto front when no other method has at most as many trainable parameters and at least as
high a Dice, with one of the two strictly better. The plot uses matplotlib's object-oriented API with the Agg
canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medpeft.io import atomic_output

__all__ = ["pareto_front", "plot_pareto"]


def pareto_front(cost: Sequence[float], score: Sequence[float]) -> list[int]:
    """Return the indices of the points on the Pareto front (lower ``cost``, higher ``score``), by cost.

    Args:
        cost: Cost of each point, e.g. trainable parameters.
        score: Score of each point, e.g. Dice.
    """
    assert len(cost) == len(score)
    points = range(len(cost))

    def dominated(i: int) -> bool:
        return any(
            cost[j] <= cost[i] and score[j] >= score[i] and (cost[j] < cost[i] or score[j] > score[i]) for j in points
        )

    return sorted((i for i in points if not dominated(i)), key=lambda i: (cost[i], -score[i]))


def plot_pareto(
    path: str | os.PathLike[str],
    labels: Sequence[str],
    params: Sequence[float],
    dice: Sequence[float],
    dice_std: Sequence[float | None],
    title: str | None = None,
) -> None:
    """Write a PNG of Dice against trainable parameters (log x), one labelled point per method with its std as
    error bar, and the Pareto front as a step line; written atomically.

    Args:
        path: Output ``.png`` file.
        labels: Method labels.
        params: Trainable parameters per method.
        dice: Mean Dice per method.
        dice_std: The ``±`` of each Dice (``None``: no error bar).
        title: Plot title.
    """
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    front = pareto_front(params, dice)
    # The y range follows the means, so methods that differ by a little stay apart even when the std (across test
    # cases, for one seed) is wide; bars reaching past the range are clipped.
    low, high = min(dice), max(dice)
    pad = max(0.3 * (high - low), 0.01)
    axes.set_ylim(low - pad, high + pad)
    for i in range(len(labels)):
        axes.errorbar(
            params[i],
            dice[i],
            yerr=dice_std[i] or 0.0,
            fmt="o",
            color="C3" if i in front else "C0",
            ecolor="C3" if i in front else "C0",
            elinewidth=1,
            alpha=0.9,
            capsize=3,
            zorder=3,
        )
    # Labels to the right of their points, pushed apart vertically so that close methods stay readable.
    gap = 0.07 * (high - low + 2 * pad)
    placed: list[float] = []
    for i in sorted(range(len(labels)), key=lambda k: dice[k]):
        y = dice[i]
        while any(abs(y - other) < gap for other in placed):
            y += gap / 4
        placed.append(y)
        axes.annotate(
            labels[i],
            (params[i], dice[i]),
            xytext=(params[i] * 1.12, y),
            textcoords="data",
            fontsize=8,
            va="center",
            arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.6} if y != dice[i] else None,
        )
    # the front is a staircase: a method stays the best choice until a costlier one scores higher
    axes.plot(
        [params[i] for i in front],
        [dice[i] for i in front],
        drawstyle="steps-post",
        color="C3",
        linewidth=1,
        label="Pareto front",
        zorder=2,
    )
    axes.set_xscale("log")
    axes.margins(x=0.3)  # room for the labels of the outermost points
    axes.set_xlabel("trainable parameters (log scale)")
    axes.set_ylabel("Dice (mean; bars ± std, clipped)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    if title:
        axes.set_title(title)
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=150)
