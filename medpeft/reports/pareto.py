"""Accuracy-versus-cost Pareto front and its plot (Dice against the parameters a method trains in the encoder).

A method is on the Pareto front when no other method has at most as many trainable parameters and at least as
high a Dice, with one of the two strictly better. The plot uses matplotlib's object-oriented API with the Agg
canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

import math
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
    encoder_params: Sequence[float],
    dice: Sequence[float],
    dice_interval: Sequence[tuple[float, float] | None],
    interval_label: str,
    decoder_params: int | None = None,
    title: str | None = None,
) -> None:
    """Write a PNG of Dice against the parameters each method trains or adds in the encoder, written atomically.

    The x axis is symmetric-log so that ``decoder_only`` (0: frozen encoder) sits at the left edge and a 72-number
    adapter and a full encoder fit on one axis; the decoder, trained by every method, is named in a note instead
    of shifting every point by the same amount. Each method is a point with its uncertainty interval as an
    (asymmetric) bar, labelled beside it with labels pushed apart vertically; the Pareto front is a step line.

    Args:
        path: Output ``.png`` file.
        labels: Method labels.
        encoder_params: Parameters trained in or added to the encoder, per method.
        dice: Mean Dice per method.
        dice_interval: ``(low, high)`` per method (``None``: no bar).
        interval_label: What the bars are, e.g. ``"95 % bootstrap CI over test cases"``.
        decoder_params: Trainable decoder parameters (the same in every method), stated in a note.
        title: Plot title.
    """
    # a taller figure for many methods: their labels, pushed apart vertically, stack above the points
    figure = Figure(figsize=(6.4, 4.4 + 0.15 * max(0, len(labels) - 8)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    front = pareto_front(encoder_params, dice)
    bounds = [b for interval in dice_interval if interval for b in interval] + list(dice)
    low, high = min(bounds), max(bounds)
    pad = max(0.08 * (high - low), 0.005)
    axes.set_ylim(low - pad, high + pad)
    for i in range(len(labels)):
        interval = dice_interval[i]
        yerr = None if interval is None else [[max(dice[i] - interval[0], 0.0)], [max(interval[1] - dice[i], 0.0)]]
        colour = "C3" if i in front else "C0"
        axes.errorbar(encoder_params[i], dice[i], yerr=yerr, fmt="o", color=colour, ecolor=colour, capsize=3, zorder=3)
    # Labels above their points, on the right unless another point's bar stands close on the right (then on the
    # left), pushed apart vertically so that close methods stay readable.
    gap = 0.06 * (high - low + 2 * pad)
    decade = [math.log10(1.0 + x) for x in encoder_params]  # position on the symlog axis, in decades
    placed: list[float] = []
    for i in sorted(range(len(labels)), key=lambda k: dice[k]):
        y = dice[i]
        while any(abs(y - other) < gap for other in placed):
            y += gap / 4
        placed.append(y)
        crowded_right = any(0.0 < decade[j] - decade[i] < 0.6 for j in range(len(labels)))
        axes.annotate(
            labels[i],
            (encoder_params[i], dice[i]),
            xytext=(-6 if crowded_right else 6, y + gap / 8),  # x in points beside the point, y in data units
            textcoords=("offset points", "data"),
            fontsize=8,
            va="bottom",
            ha="right" if crowded_right else "left",
            arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.6} if y != dice[i] else None,
        )
    axes.set_ylim(low - pad, max(high + pad, max(placed) + gap))  # every label inside the axes
    # the front is a staircase: a method stays the best choice until a costlier one scores higher
    axes.plot(
        [encoder_params[i] for i in front],
        [dice[i] for i in front],
        drawstyle="steps-post",
        color="C3",
        linewidth=1,
        alpha=0.5,
        label="Pareto front",
        zorder=2,
    )
    axes.set_xscale("symlog", linthresh=1.0)
    axes.set_xlim(left=-0.5, right=max(max(encoder_params), 1.0) * 8)  # room for the rightmost label
    axes.set_xlabel("encoder parameters trained or added (symmetric log; 0 = frozen)")
    axes.set_ylabel("Dice (mean over test cases)")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    notes = [f"bars: {interval_label}"]
    if decoder_params is not None:
        notes.append(f"+ decoder: {decoder_params:,} parameters, trained in every method")
    axes.text(0.01, 0.99, "\n".join(notes), transform=axes.transAxes, fontsize=7.5, va="top", color="0.3")
    if title:
        axes.set_title(title)
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=150)
