"""The demo's HTML page: one section per kind of method, the torch model and
its ONNX copy side by side."""

from __future__ import annotations

import html

import numpy as np

STYLE = ("body{font-family:sans-serif}td,th{vertical-align:top;padding:4px;text-align:center}"
         "h2{margin-top:2em}.fail{color:#a00}")


def demo_page(adapter, names, logits, runs) -> str:
    sections = [
        f"<h1>cnnviz demo — {html.escape(adapter.name)}</h1>",
        "<p>Every method that runs on the model, on the PyTorch model (<b>torch</b>) and on its ONNX export (<b>onnx</b>). "
        "Raw values are in the .npy files beside this page.</p>",
        _attribution_table(adapter, names, logits, [r for r in runs if r.kind == "attribution" and not r.error]),
        _gallery("Synthesis: images made by optimization or search", [r for r in runs if r.kind == "synthesis" and not r.error]),
        _gallery("Analyses: one pass over scikit-image's photographs, and the weights", [r for r in runs if r.kind == "analysis" and not r.error]),
    ]
    failed = [r for r in runs if r.error]
    if failed:
        items = "".join(f"<li><b>{html.escape(r.method)}</b> ({r.model}): {html.escape(r.error)}</li>" for r in failed)
        sections.append(f"<h2 class='fail'>Failed</h2><ul>{items}</ul>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>cnnviz demo</title><style>{STYLE}</style></head><body>"
            + "".join(sections) + "</body></html>\n")


def _top5(adapter, row: np.ndarray) -> str:
    probs = np.exp(row - row.max())
    probs /= probs.sum()
    best = np.argsort(-probs)[:5]
    label = (lambda i: adapter.labels[i]) if adapter.labels else str
    return "<br>".join(f"{html.escape(label(int(i)))}: {probs[i]:.3f}" for i in best)


def _attribution_table(adapter, names, logits, runs) -> str:
    if not runs:
        return ""
    head = "".join(f"<th>{html.escape(r.method)}<br><small>{r.model}, {r.seconds:.2f} s</small></th>" for r in runs)
    body = []
    for i, name in enumerate(names):
        cells = "".join("<td>" + "<br>".join(f"<img src='{html.escape(f)}' width=224>" for f in r.files.get(name, [])) + "</td>"
                        for r in runs)
        body.append(f"<tr><td><img src='{name}.input.png' width=224><br><b>{html.escape(name)}</b><br>"
                    f"<small>{_top5(adapter, logits[i])}</small></td>{cells}</tr>")
    return ("<h2>Attribution: what in the photograph explains the top-1 class</h2>"
            f"<table><tr><th>input and top-5</th>{head}</tr>{''.join(body)}</table>")


def _gallery(title: str, runs) -> str:
    if not runs:
        return ""
    blocks = []
    for run in runs:
        figures = []
        for row, files in run.files.items():
            caption = html.escape(str(run.facts.get(row, row))) if isinstance(run.facts.get(row), str) else html.escape(row)
            figures += [f"<figure style='display:inline-block'><img src='{html.escape(f)}' style='max-width:360px'>"
                        f"<figcaption><small>{caption}</small></figcaption></figure>" for f in files]
        facts = {k: v for k, v in run.facts.items() if not isinstance(v, str) or k not in run.files}
        listed = "".join(f"<li>{html.escape(str(k))}: {html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</li>"
                         for k, v in facts.items() if k not in run.files)
        blocks.append(f"<h3>{html.escape(run.method)} <small>({run.model}, {run.seconds:.1f} s)</small></h3>"
                      f"<div>{''.join(figures)}</div>" + (f"<ul>{listed}</ul>" if listed else ""))
    return f"<h2>{html.escape(title)}</h2>" + "".join(blocks)
