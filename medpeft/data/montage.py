"""A PNG montage of a few cases per split with their masks overlaid, to check by eye that data is read right.

One row per split (train, val, test), one panel per case: the image in grey (1 channel) or colour (3 channels) with
every foreground class filled in its own translucent colour (``tab10``, ``tab20`` beyond 10 classes) and outlined in
it, so a mask that is shifted, flipped or resized wrongly shows against the image's edges; a legend names the
classes. Drawn with Matplotlib's object-oriented API on an Agg canvas, so no GUI backend is needed and the
global pyplot state is left alone; the file is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from medpeft.io import atomic_output

if TYPE_CHECKING:
    from medpeft.data.inspection import InspectionSample

__all__ = ["class_colours", "overlay", "save_montage"]

_ALPHA = 0.35  # opacity of the mask fill: the anatomy below stays visible


def class_colours(num_classes: int) -> np.ndarray:
    """RGB colours ``[num_classes, 3]`` in ``[0, 1]``; class 0 (background) is never drawn, class ``c`` gets the
    ``(c - 1)``-th colour of ``tab10`` (``tab20`` for more than 10 foreground classes)."""
    cmap = matplotlib.colormaps["tab10" if num_classes <= 11 else "tab20"]
    return np.array([(0.0, 0.0, 0.0)] + [cmap(c % cmap.N)[:3] for c in range(num_classes - 1)])


def overlay(label: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """RGBA image ``[H, W, 4]`` of the foreground classes of ``label`` ``[H, W]``; background fully transparent."""
    rgba = np.zeros((*label.shape, 4))
    foreground = label > 0
    rgba[foreground, :3] = colours[np.minimum(label[foreground], len(colours) - 1)]
    rgba[foreground, 3] = _ALPHA
    return rgba


def save_montage(
    samples: Sequence[InspectionSample],
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "",
) -> Path:
    """Draw the samples, one row per split, and write the PNG atomically.

    Args:
        samples: Cases to draw, in row order (``image`` ``[C, H, W]`` in ``[0, 1]``, ``label`` ``[H, W]``).
        class_names: Name of each class id, background first; the legend lists the foreground ones.
        path: Destination ``.png``; missing folders are created.
        title: Figure title.

    Returns:
        ``path``.
    """
    rows: dict[str, list[InspectionSample]] = {}
    for sample in samples:
        rows.setdefault(sample.split, []).append(sample)
    n_rows, n_cols = max(len(rows), 1), max((len(row) for row in rows.values()), default=1)
    colours = class_colours(len(class_names))
    figure = Figure(figsize=(2.2 * n_cols, 2.3 * n_rows + 0.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for r, (split, row) in enumerate(rows.items()):
        for c, sample in enumerate(row):
            ax = axes[r, c]
            image = sample.image.transpose(1, 2, 0)  # [C, H, W] -> [H, W, C]
            if image.shape[2] == 1:
                ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(np.clip(image, 0.0, 1.0), interpolation="nearest")
            ax.imshow(overlay(sample.label, colours), interpolation="nearest")
            for class_id in np.unique(sample.label[sample.label > 0]).tolist():
                colour = colours[min(class_id, len(colours) - 1)]
                ax.contour(sample.label == class_id, levels=[0.5], colors=[colour], linewidths=0.8)
            ax.set_title(f"{split}: {sample.name}", fontsize=7)
    handles = [
        Patch(facecolor=(*colours[c], _ALPHA), edgecolor=colours[c], label=name)
        for c, name in enumerate(class_names)
        if c > 0
    ]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0.0, 0.5 / (2.3 * n_rows + 0.6), 1.0, 1.0))  # keep the bottom 0.5 inch for the legend
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png")
    return Path(path)
