"""Charts for results (loss curves, scatter plots), drawn with matplotlib's
Agg backend into RGB arrays so they are saved like any other picture."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _figure(size=(6.0, 4.0)):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=100)


def figure_to_rgb(figure) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def line_plot(
    curves: dict[str, np.ndarray],
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "",
    log_y: bool = False,
    x: np.ndarray | None = None,
) -> np.ndarray:
    """One line per named curve → RGB uint8 chart."""
    figure = _figure()
    axes = figure.add_subplot()
    for name, values in curves.items():
        values = np.asarray(values, dtype=np.float64)
        axes.plot(x if x is not None else np.arange(len(values)), values, label=name)
    if log_y and all(np.all(np.asarray(v) > 0) for v in curves.values()):
        axes.set_yscale("log")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if len(curves) > 1:
        axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure_to_rgb(figure)


def scatter_plot(points: np.ndarray, labels: Sequence | None = None, names: Sequence[str] | None = None, title: str = "") -> np.ndarray:
    """2-D points coloured by label (with a legend of ``names``) → RGB uint8."""
    figure = _figure((7.0, 6.0))
    axes = figure.add_subplot()
    if labels is None:
        axes.scatter(points[:, 0], points[:, 1], s=6)
    else:
        labels = np.asarray(labels)
        for value in np.unique(labels):
            chosen = labels == value
            name = names[int(value)] if names is not None and 0 <= int(value) < len(names) else str(value)
            axes.scatter(points[chosen, 0], points[chosen, 1], s=6, label=name)
        if len(np.unique(labels)) <= 20:
            axes.legend(fontsize="x-small", markerscale=2)
    axes.set_title(title)
    axes.set_xticks([])
    axes.set_yticks([])
    figure.tight_layout()
    return figure_to_rgb(figure)
