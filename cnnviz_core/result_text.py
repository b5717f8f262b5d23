"""Results in words: the few lines a result prints as (``repr``) and the
summary the CLI prints per item, shared by the three result kinds."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

WIDTH = 110  # characters per line of a repr
ITEMS_SHOWN = 3


def number(value: Any) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def shape(array: np.ndarray | None) -> str:
    if array is None:
        return "none"
    return f"{tuple(array.shape)} {array.dtype}"


def model_name(model: dict[str, Any]) -> str:
    name = model.get("name", "a model")
    return f"{name} ({model['adapter']})" if model.get("adapter") else str(name)


def brief(values: Sequence[Any], shown: int = ITEMS_SHOWN) -> str:
    values = list(values)
    text = ", ".join(str(v) for v in values[:shown])
    return text + (f" and {len(values) - shown} more" if len(values) > shown else "")


def clip(line: str, width: int = WIDTH) -> str:
    return line if len(line) <= width else line[: width - 3] + "..."


def compose(kind: str, title: str, head: Sequence[str], items: Sequence[str], saved_to: str | None) -> str:
    """``<Kind title`` then indented lines: the ``head`` lines, the first few
    item lines and a count of the others, and where the result was saved."""
    shown = list(head) + list(items[:ITEMS_SHOWN])
    if len(items) > ITEMS_SHOWN:
        shown.append(f"... and {len(items) - ITEMS_SHOWN} more")
    shown.append(f"saved: {saved_to}" if saved_to else "not saved (.save(folder) writes PNGs, arrays and a JSON record)")
    return "\n  ".join([f"<{kind} {title}", *(clip(line) for line in shown)]) + ">"


def start_end(record: dict[str, Any], history: dict[str, np.ndarray], index: int) -> tuple[float, float] | None:
    """An item's objective at the start and at the end: the method's own
    record of them where it keeps one, else the first and last finite values
    of its "objective" history."""
    if "start" in record and "end" in record:
        return float(record["start"]), float(record["end"])
    curve = history.get("objective")
    if curve is None or not curve.shape[-1]:
        return None
    values = np.asarray(curve[index], dtype=np.float64)
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    start = float(record["objective_start"]) if "objective_start" in record else float(finite[0])
    return start, float(finite[-1])


def sparsity_levels(levels: Sequence[dict[str, Any]], wanted: Sequence[float] = (50.0, 90.0)) -> list[str]:
    """Accuracy (or, without labels, agreement with the unpruned model) at
    the tested sparsities nearest to ``wanted``."""
    rows = [level for level in levels if isinstance(level, dict) and "sparsity" in level]
    if not rows:
        return []
    found = []
    for goal in wanted:
        nearest = min(rows, key=lambda level: abs(float(level["sparsity"]) - goal))
        if nearest not in found:
            found.append(nearest)
    accuracy = all(level.get("accuracy") is not None for level in found)
    measure = "accuracy" if accuracy else "agreement"
    values = ", ".join(f"{number(level[measure])} at {number(level['sparsity'])} %" for level in found)
    return [f"{measure} {values} sparsity"]
