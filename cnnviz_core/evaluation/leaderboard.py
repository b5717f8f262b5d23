"""The leaderboard of an evaluation: methods (and references) by metric.

Files written into the output folder, each atomically:
    leaderboard.csv   one row per (method or reference, metric): mean, std, sem, median, n, rank
    scores.csv        one row per (method, metric, image): the per-image score
    leaderboard.png   the table rendered; the best value of each metric in bold
    leaderboard.html  the same table and the curve plots, a page of its own
    curves.METRIC.png for metrics with curves: each method's mean curve
    evaluation.json   the record: model, weights digest, methods, metrics and parameters, source
"""

from __future__ import annotations

import html
import json
import math
import os

import numpy as np

from .. import atomic
from ..store.layout import csv_text

ROW_COLUMNS = ["method", "reference", "metric", "mean", "std", "sem", "median", "n", "higher_is_better", "rank"]


def labels(evaluation) -> list[str]:
    return [*evaluation.methods, *evaluation.references]


def ranks(evaluation, metric: str) -> dict[str, int]:
    """1 = best mean for the metric, over the methods and references it scored (NaN last)."""
    scored = [(label, evaluation.results[(label, metric)]) for label in labels(evaluation) if (label, metric) in evaluation.results]
    sign = -1.0 if scored and scored[0][1].higher_is_better else 1.0

    def order(item):
        mean = item[1].summary["mean"]
        return (math.isnan(mean), sign * mean if not math.isnan(mean) else 0.0)

    return {label: k + 1 for k, (label, _) in enumerate(sorted(scored, key=order))}


def rows(evaluation) -> list[dict]:
    found = []
    for metric in evaluation.metrics:
        ranked = ranks(evaluation, metric)
        for label in labels(evaluation):
            result = evaluation.results.get((label, metric))
            if result is None:
                continue
            found.append({"method": label, "reference": label.startswith("reference:"), "metric": metric,
                          **{k: result.summary[k] for k in ("mean", "std", "sem", "median", "n")},
                          "higher_is_better": result.higher_is_better, "rank": ranked[label]})
    return found


def _cell(result) -> str:
    if result is None:
        return ""
    mean, sem = result.summary["mean"], result.summary["sem"]
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.4f} ± {sem:.4f}" if result.summary["n"] > 1 else f"{mean:.4f}"


def _header(evaluation, metric: str) -> str:
    first = next((r for (l, m), r in evaluation.results.items() if m == metric), None)
    arrow = "" if first is None else (" ↑" if first.higher_is_better else " ↓")
    return metric + arrow


def table(evaluation) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """(header, rows of cells, whether each cell is its metric's best)."""
    header = ["method", *[_header(evaluation, m) for m in evaluation.metrics]]
    body, best = [], []
    winners = {m: min(ranks(evaluation, m).items(), key=lambda kv: kv[1])[0] for m in evaluation.metrics if ranks(evaluation, m)}
    for label in labels(evaluation):
        cells = [label]
        flags = [False]
        for metric in evaluation.metrics:
            cells.append(_cell(evaluation.results.get((label, metric))))
            flags.append(winners.get(metric) == label)
        body.append(cells)
        best.append(flags)
    return header, body, best


def text_table(evaluation) -> str:
    header, body, _ = table(evaluation)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *body]]
    return "\n".join(lines)


def table_png(evaluation) -> bytes:
    from ..plots import _figure, figure_to_rgb
    from ..render import png_bytes

    header, body, best = table(evaluation)
    figure = _figure((1.6 + 1.9 * len(evaluation.metrics), 0.6 + 0.32 * (len(body) + 1)))
    axes = figure.add_subplot()
    axes.axis("off")
    drawn = axes.table(cellText=body, colLabels=header, loc="center", cellLoc="center")
    drawn.auto_set_font_size(False)
    drawn.set_fontsize(9)
    for (row, column), cell in drawn.get_celld().items():
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8e8e8")
        elif best[row - 1][column]:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#d9f2d9")
        elif body[row - 1][0].startswith("reference:"):
            cell.set_facecolor("#f4f4f4")
    figure.tight_layout()
    return png_bytes(figure_to_rgb(figure))


def curve_pngs(evaluation) -> dict[str, bytes]:
    """metric -> PNG of each method's mean curve, for metrics with curves."""
    from ..plots import line_plot
    from ..registry import get_registry
    from ..render import png_bytes

    found = {}
    for metric in evaluation.metrics:
        scored = [(label, evaluation.results[(label, metric)]) for label in labels(evaluation) if (label, metric) in evaluation.results]
        if not scored or not scored[0][1].curves:
            continue
        axes_names = getattr(get_registry().methods.get(metric), "curve_axes", {})
        for curve in scored[0][1].curves:
            means = {label: np.nanmean(result.curves[curve], axis=0) for label, result in scored if curve in result.curves}
            x = scored[0][1].curve_x[curve]
            xlabel, ylabel = axes_names.get(curve, ("step", "score"))
            key = metric if curve == metric else f"{metric}.{curve}"
            found[key] = png_bytes(line_plot(means, title=f"{metric}: mean over {len(scored[0][1].scores)} images",
                                             xlabel=xlabel, ylabel=ylabel, x=x))
    return found


def page(evaluation, curves: list[str], record: dict) -> str:
    header, body, best = table(evaluation)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    lines = []
    for cells, flags in zip(body, best):
        kind = ' class="reference"' if cells[0].startswith("reference:") else ""
        tds = "".join(f"<td{' class=best' if flag else ''}>{html.escape(c)}</td>" for c, flag in zip(cells, flags))
        lines.append(f"<tr{kind}>{tds}</tr>")
    model = html.escape(str(record.get("model", {}).get("name", "")))
    plots = "".join(f'<figure><img src="curves.{html.escape(name)}.png" alt="{html.escape(name)} curves"></figure>' for name in curves)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cnnviz evaluation: {model}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; font-variant-numeric: tabular-nums; }}
th:first-child, td:first-child {{ text-align: left; }}
td.best {{ font-weight: bold; background: #d9f2d9; }}
tr.reference td {{ color: #666; background: #f7f7f7; }}
figure {{ display: inline-block; margin: .5rem; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>Which explanation can be trusted? {model}</h1>
<p>Mean ± standard error over {len(evaluation.results[next(iter(evaluation.results))].scores) if evaluation.results else 0} images
({html.escape(str(record.get("source", "")))}). ↑: higher is better, ↓: lower is better; the best of each metric in bold.
References (model-free maps) show what a score means.</p>
<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>
{plots}
</body></html>
"""


def write_all(evaluation, out: str, record: dict) -> dict[str, str]:
    """Every leaderboard file into ``out``; returns name -> path."""
    files = {}

    def put(name: str, data: bytes | str) -> None:
        path = os.path.join(out, name)
        atomic.write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
        files[name] = path

    put("leaderboard.csv", csv_text(rows(evaluation), ROW_COLUMNS))
    per_image = [{"method": label, "metric": metric, "image": name, "score": float(score)}
                 for (label, metric), result in evaluation.results.items() for name, score in zip(result.names, result.scores)]
    put("scores.csv", csv_text(per_image, ["method", "metric", "image", "score"]))
    put("leaderboard.png", table_png(evaluation))
    curves = curve_pngs(evaluation)
    for name, data in curves.items():
        put(f"curves.{name}.png", data)
    put("leaderboard.html", page(evaluation, list(curves), record))
    full = {**record, "methods": evaluation.methods, "references": evaluation.references,
            "metrics": {m: next(r.params for (l, mm), r in evaluation.results.items() if mm == m)
                        for m in evaluation.metrics if any(mm == m for _, mm in evaluation.results)}}
    put("evaluation.json", json.dumps(full, indent=2, default=atomic.json_default) + "\n")
    return files
