"""The demo's HTML page: a section per kind of method, a card per method and
model with a line on what its pictures show and how to read them.

Self-contained: no external links, fonts or scripts. The grid fits any width
from a phone to a wide screen (no horizontal scrolling at 1280 px); a click
on a picture shows it large (a few lines of inline script; without script
the link opens the file). While the demo runs the page reloads itself."""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

from . import demo_text
from .registry import get_registry

RUNTIMES = {"torch": "PyTorch", "onnx": "ONNX"}
RELOAD_SECONDS = 5

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;margin:0 auto;max-width:1240px;padding:0 16px 40px;line-height:1.4}
h1{margin:16px 0 4px}h2{margin:32px 0 4px;border-bottom:2px solid #ddd}h3{margin:0 0 4px;font-size:1.05em}
nav a{margin-right:12px}.status{background:#f4f4f4;padding:6px 10px;border-radius:4px}
.intro{max-width:72em;color:#444}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,390px),1fr));gap:14px;align-items:start}
.grid.wide{grid-template-columns:repeat(auto-fill,minmax(min(100%,560px),1fr))}
.card{border:1px solid #ddd;border-radius:6px;padding:10px;min-width:0}
.tag{font-size:.75em;font-weight:normal;background:#eef;border-radius:3px;padding:1px 5px;margin-left:4px}
.time{font-size:.75em;font-weight:normal;color:#777;margin-left:4px}
.what{margin:2px 0;font-size:.9em}.how{margin:2px 0 8px;font-size:.9em;color:#555}
.rowtitle{font-size:.85em;font-weight:600;margin:6px 0 2px}
.pics{display:grid;grid-template-columns:repeat(auto-fit,minmax(100px,1fr));gap:6px;align-items:start}
.wide .pics{grid-template-columns:repeat(auto-fit,minmax(240px,1fr))}
.photos{display:flex;flex-wrap:wrap;gap:14px 28px}.photo{display:flex;gap:10px;align-items:flex-start}.photo a{flex:0 0 180px}
figure{margin:0;min-width:0}figcaption{font-size:.78em;color:#555;overflow-wrap:anywhere}
img{display:block;width:100%;height:auto;background:#fafafa}a.zoom{cursor:zoom-in}
.facts{font-size:.85em;border-collapse:collapse;margin-top:8px}.facts td{padding:1px 8px 1px 0;vertical-align:top}
.notes{font-size:.8em;color:#8a5a00;margin:6px 0 0;padding-left:18px}
.fail{color:#a00}
.board{border-collapse:collapse;margin:10px 0;font-size:.9em;max-width:100%}
.board th,.board td{border:1px solid #ccc;padding:3px 8px;text-align:right;font-variant-numeric:tabular-nums}
.board th:first-child,.board td:first-child{text-align:left}.board td.best{font-weight:bold;background:#d9f2d9}
.board tr.reference td{color:#666;background:#f7f7f7}.reading{font-size:.9em;color:#444;margin:2px 0;padding-left:18px}
#zoom{position:fixed;inset:0;background:rgba(0,0,0,.85);display:flex;align-items:center;justify-content:center;cursor:zoom-out;z-index:9}
#zoom[hidden]{display:none}
#zoom img{width:auto;height:auto;min-width:min(90vw,640px);max-width:95vw;max-height:95vh;object-fit:contain;background:#fff}
"""

# Shows a clicked picture large; a click anywhere or Escape closes it.
SCRIPT = """
document.addEventListener('click',function(e){
 var box=document.getElementById('zoom'),link=e.target.closest&&e.target.closest('a.zoom');
 if(link){e.preventDefault();box.textContent='';var img=new Image();img.src=link.getAttribute('href');
  img.alt=link.getAttribute('title')||'';box.appendChild(img);box.hidden=false;return;}
 if(!box.hidden){box.hidden=true;}
});
document.addEventListener('keydown',function(e){if(e.key==='Escape'){document.getElementById('zoom').hidden=true;}});
"""

SKIPPED_FACTS = {"box_format", "index", "layers", "scope", "channels", "neighbors", "sampled"}


def demo_page(adapter, names, logits, runs, pending=(), done: bool = True, board=None) -> str:
    """The whole page for the runs so far; ``pending``: (method, model) still
    to run; ``board``: the demo's Leaderboard, once made."""
    esc = html.escape
    links = [*demo_text.SECTIONS, *(["evaluation"] if board is not None and board.evaluation is not None else [])]
    sections = [f"<h1>cnnviz demo &mdash; {esc(adapter.name)}</h1>", _status(runs, pending, done),
                "<nav>" + "".join(f"<a href='#{kind}'>{esc(kind)}</a>" for kind in links) + "</nav>",
                _inputs(adapter, names, logits)]
    for kind in demo_text.SECTIONS:
        sections.append(_section(kind, [r for r in runs if r.kind == kind and not r.error]))
    if board is not None and board.evaluation is not None:
        sections.append(_leaderboard(board))
    failed = [r for r in runs if r.error]
    if failed or (board is not None and board.error):
        items = "".join(f"<li><b>{esc(r.method)}</b> ({esc(RUNTIMES.get(r.model, r.model))}): {esc(r.error)}</li>" for r in failed)
        items += f"<li><b>evaluation</b>: {esc(board.error)}</li>" if board is not None and board.error else ""
        sections.append(f"<h2 class='fail' id='failed'>Failed</h2><ul>{items}</ul>")
    reload = "" if done else f"<meta http-equiv='refresh' content='{RELOAD_SECONDS}'>"
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"{reload}<title>cnnviz demo</title><style>{STYLE}</style></head><body>"
            + "".join(sections) + f"<div id='zoom' hidden></div><script>{SCRIPT}</script></body></html>\n")


def _status(runs, pending, done) -> str:
    seconds = sum(r.seconds for r in runs)
    if done:
        text = (f"Done: {len(runs)} runs in {seconds:.0f} s of computing. Raw values (.npy) and a JSON record of each "
                "run are in torch/ and onnx/ beside this page. Click a picture to enlarge it.")
    else:
        left = ", ".join(f"{m} ({RUNTIMES.get(label, label)})" for m, label in list(pending)[:6])
        more = f" and {len(pending) - 6} more" if len(pending) > 6 else ""
        text = (f"Running: {len(runs)} of {len(runs) + len(pending)} done; this page reloads itself every "
                f"{RELOAD_SECONDS} s. Next: {left}{more}.")
    return f"<p class='status'>{html.escape(text)}</p>"


def _inputs(adapter, names, logits) -> str:
    figures = "".join(
        f"<figure class='photo'>{_image(f'{name}.input.png', name)}<figcaption><b>{html.escape(name)}</b>, the model's top 5:<br>"
        f"{_top5(adapter, logits[i])}</figcaption></figure>" for i, name in enumerate(names))
    return ("<section id='inputs'><h2>The photographs</h2><p class='intro'>Two of scikit-image's photographs, as the model sees them "
            f"(resized and cropped to its input). Attribution methods explain each one's top-1 class.</p><div class='photos'>{figures}</div></section>")


def _top5(adapter, row: np.ndarray) -> str:
    probs = np.exp(row - row.max())
    probs /= probs.sum()
    best = np.argsort(-probs)[:5]
    label = (lambda i: adapter.labels[i]) if adapter.labels else str
    return "<br>".join(f"{html.escape(label(int(i)))}: {probs[i]:.3f}" for i in best)


def _section(kind: str, runs) -> str:
    title, intro = demo_text.SECTIONS[kind]
    first = {}
    for position, run in enumerate(runs):
        first.setdefault(run.method, position)
    ordered = sorted(runs, key=lambda r: (first[r.method], r.model != "torch"))  # a method's torch and ONNX runs side by side
    cards = "".join(_card(run) for run in ordered) or "<p>(none yet)</p>"
    return (f"<section id='{kind}'><h2>{html.escape(title)}</h2><p class='intro'>{html.escape(intro)}</p>"
            f"<div class='grid{' wide' if kind == 'analysis' else ''}'>{cards}</div></section>")


def _leaderboard(board) -> str:
    """The evaluation section: the leaderboard as an HTML table (it reflows
    with the page, unlike a picture of one), a line per metric on how to read
    it, and the deletion and insertion curves."""
    from .evaluation.leaderboard import table

    esc = html.escape
    title, intro = demo_text.EVALUATION
    header, body, best = table(board.evaluation)
    head = "".join(f"<th>{esc(cell)}</th>" for cell in header)
    rows = "".join(
        f"<tr{' class=reference' if cells[0].startswith('reference:') else ''}>"
        + "".join(f"<td{' class=best' if flag else ''}>{esc(cell)}</td>" for cell, flag in zip(cells, flags)) + "</tr>"
        for cells, flags in zip(body, best))
    reading = "".join(f"<li>{esc(demo_text.METRICS[m])}</li>" for m in board.evaluation.metrics if m in demo_text.METRICS)
    figures = "".join(f"<figure>{_image(path, f'{metric} curves')}<figcaption>{esc(metric)}: the mean curve of each "
                      f"method over the photographs</figcaption></figure>" for metric, path in board.curves.items())
    return (f"<section id='evaluation'><h2>{esc(title)}</h2><p class='intro'>{esc(intro)}</p>"
            f"<table class='board'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            f"<ul class='reading'>{reading}</ul><p class='how'>{esc(board.settings)} <span class='time'>{board.seconds:.1f} s</span></p>"
            f"<div class='grid wide'>{figures}</div></section>")


def _card(run) -> str:
    esc = html.escape
    registry = get_registry()
    summary = registry.method(run.method).summary() if run.method in registry.methods else ""
    what, how = demo_text.note(run.method, summary)
    rows = []
    for title, pictures in run.rows.items():
        figures = "".join(f"<figure>{_image(p.path, p.caption)}<figcaption>{esc(p.caption)}</figcaption></figure>" for p in pictures)
        heading = f"<div class='rowtitle'>{esc(title)}</div>" if title else ""
        rows.append(f"{heading}<div class='pics'>{figures}</div>")
    facts = _facts(run.facts)
    notes = "".join(f"<li>{esc(n)}</li>" for n in run.notes)
    return (f"<article class='card' id='{esc(run.method)}-{esc(run.model)}'>"
            f"<h3>{esc(run.method)}<span class='tag'>{esc(RUNTIMES.get(run.model, run.model))}</span>"
            f"<span class='time'>{run.seconds:.1f} s</span></h3>"
            f"<p class='what'>{esc(what)}</p>" + (f"<p class='how'>{esc(how)}</p>" if how else "")
            + "".join(rows) + facts + (f"<ul class='notes'>{notes}</ul>" if notes else "") + "</article>")


def _image(path: str, title: str) -> str:
    path, title = html.escape(path, quote=True), html.escape(title, quote=True)
    return f"<a class='zoom' href='{path}' title='{title}'><img src='{path}' alt='{title}'></a>"


def _facts(facts: dict[str, Any]) -> str:
    """The analysis facts worth reading, formatted; no raw tables and no
    numbers that stand for "not computed" (t-SNE's KL is 1.8e308 when its
    optimizer never left the exaggeration phase)."""
    rows = []
    for key, value in facts.items():
        if key in SKIPPED_FACTS:
            continue
        text = _fact_text(key, value)
        if text is not None:
            rows.append(f"<tr><td>{html.escape(key.replace('_', ' '))}</td><td>{html.escape(text)}</td></tr>")
    return f"<table class='facts'>{''.join(rows)}</table>" if rows else ""


def _fact_text(key: str, value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) and abs(value) < 1e300 else None
    if isinstance(value, str):
        return value if len(value) <= 80 else None
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return ", ".join(f"{v:.3g}" for v in value)  # one per photo
    if key == "receptive_field" and isinstance(value, dict) and "centre_size" in value:
        height, width = value["centre_size"]
        return f"{height}x{width} px at the centre, a unit every {value.get('stride', ['?'])[0]:.3g} px"
    if key == "sparsities" and isinstance(value, list) and all(isinstance(v, dict) for v in value):
        parts = []
        for level in value:
            measured = level.get("accuracy") if level.get("accuracy") is not None else level.get("agreement")
            name = "accuracy" if level.get("accuracy") is not None else "agreement"
            parts.append(f"{level.get('sparsity', 0):g} %: {name} {measured:.2f}")
        return "; ".join(parts)
    return None
