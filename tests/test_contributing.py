"""CONTRIBUTING.md is checked, not trusted: every ```python block runs as
written, in order, in one module namespace (a later block uses the names of
an earlier one), in a fresh interpreter so that the registry changes the
blocks make cannot reach other tests; and every repository path that it or
README.md cites exists, including the folders of their Layout sections."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
README = ROOT / "README.md"
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<tag>[\w+-]*)[ \t]*$")
FENCE_TAGS = {"python", "sh", "toml", "text"}  # python runs; the others are shown only
PATH_SUFFIXES = (".py", ".toml", ".md")
PATTERN_CHARACTERS = set("<>{}*[]|=")  # a placeholder or a glob, not a path

# Runs the blocks as one script run as __main__, each compiled at its own line
# of the document so that a traceback points at CONTRIBUTING.md's line; then
# prints, as its last line, what each block printed.
RUNNER = r"""
import contextlib, io, json, sys, types
blocks = json.load(sys.stdin)
module = types.ModuleType("__main__")
module.__file__ = "CONTRIBUTING.md"
sys.modules["__main__"] = module
printed = []
for block in blocks:
    code = compile("\n" * block["line"] + block["code"], "CONTRIBUTING.md", "exec")
    with contextlib.redirect_stdout(io.StringIO()) as output:
        exec(code, module.__dict__)
    printed.append(output.getvalue())
print(json.dumps(printed))
"""


def fenced_blocks(text: str) -> list[dict]:
    """Every fenced block: its tag, its code (dedented by the fence's indent),
    the 0-based line of its first code line, the 1-based lines of its fences,
    and ``output_of``: the index of the block it directly follows, if any."""
    blocks, lines, index = [], text.splitlines(), 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, start = len(opening["indent"]), index + 1
        end = start
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"the fence opened at line {index + 1} is never closed")
        code = "\n".join(dedent(line, indent) for line in lines[start:end])
        right_after = bool(blocks) and all(not line.strip() for line in lines[blocks[-1]["closed"]:index])
        blocks.append({"tag": opening["tag"], "code": code + "\n", "line": start, "opened": index + 1, "closed": end + 1,
                       "output_of": len(blocks) - 1 if right_after else None})
        index = end + 1
    return blocks


def dedent(line: str, indent: int) -> str:
    """A block line without the indent of its fence (a blank or shallower line loses what it has)."""
    return line[indent:] if line[:indent].isspace() or not indent else line.lstrip()


def prose(text: str) -> str:
    """The text outside fenced blocks."""
    kept, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line) or (inside and line.strip() == "```"):
            inside = not inside
            continue
        if not inside:
            kept.append(line)
    return "\n".join(kept)


def looks_like_path(token: str) -> bool:
    if "://" in token or token.startswith(("-", "/", "~", "$", ".")) or PATTERN_CHARACTERS & set(token):
        return False
    return "/" in token or token.endswith(PATH_SUFFIXES)


def cited_paths(text: str) -> list[str]:
    """Repository paths the prose cites: inline code that is one path-like
    token, and relative link targets (anchors dropped)."""
    body = prose(text)
    spans = [span.strip() for span in re.findall(r"`([^`\n]+)`", body)]
    paths = [span for span in spans if span and not any(c.isspace() for c in span) and looks_like_path(span)]
    for target in re.findall(r"\]\(([^)\s]+)\)", body):
        target = target.split("#", 1)[0]
        if target and "://" not in target and not target.startswith("mailto:"):
            paths.append(target)
    return paths


def layout_folders(text: str) -> list[str]:
    """The folders named in the fenced block of the "Layout" section: a line's
    first word ending in "/", indented lines inside the last unindented one."""
    match = re.search(r"^#+ *Layout\b.*?\n```[\w]*\n(?P<block>.*?)\n```", text, flags=re.S | re.M)
    assert match, "no Layout section with a fenced block"
    folders, parent = [], ""
    for line in match["block"].splitlines():
        words = line.split()
        if not words or not words[0].endswith("/"):
            continue
        if line[0].isspace():
            folders.append(parent + words[0])
        else:
            parent = words[0]
            folders.append(parent)
    return folders


@pytest.fixture(scope="module")
def contributing() -> str:
    return CONTRIBUTING.read_text(encoding="utf-8")


def test_every_fence_says_what_it_holds(contributing):
    blocks = fenced_blocks(contributing)
    untagged = [f"line {b['opened']}: ```{b['tag']}" for b in blocks if b["tag"] not in FENCE_TAGS]
    assert not untagged, f"tag each fence with one of {sorted(FENCE_TAGS)} (python blocks run): {untagged}"
    assert sum(b["tag"] == "python" for b in blocks) >= 5


def test_the_python_blocks_run_in_order_in_one_namespace(contributing, tmp_path):
    blocks = [b for b in fenced_blocks(contributing) if b["tag"] == "python"]
    source = "\n".join(b["code"] for b in blocks)
    for kind in ("AttributionMethod", "SynthesisMethod", "AnalysisMethod"):  # one method of each kind, really run
        assert re.search(rf"^class \w+\({kind}\):", source, flags=re.M), f"no {kind} subclass in the snippets"
    assert source.count("cnnviz_core.run(") >= 3
    env = {k: v for k, v in os.environ.items()
           if k not in ("CNNVIZ_DISABLE_PLUGIN_AUTOLOAD", "CNNVIZ_DISABLE_PLUGINS", "PYTHONPATH")}
    env["CNNVIZ_PROGRESS"] = "0"
    # On the CPU everywhere: the document's float comparisons are written for it (a GPU's TF32 convolutions round
    # differently), and placement on a GPU is the conformance tests' business.
    env["CUDA_VISIBLE_DEVICES"] = ""
    completed = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(blocks), capture_output=True,
                               text=True, timeout=600, cwd=tmp_path, env=env)
    assert completed.returncode == 0, f"a CONTRIBUTING.md snippet failed:\n{completed.stderr[-6000:]}"
    printed = dict(zip((b["opened"] for b in blocks), json.loads(completed.stdout.splitlines()[-1])))
    # A text block right after a python block shows what that block prints: it must be what it prints.
    every = fenced_blocks(contributing)
    shown = [(every[b["output_of"]]["opened"], b["code"]) for b in every
             if b["tag"] == "text" and b["output_of"] is not None and every[b["output_of"]]["tag"] == "python"]
    assert len(shown) >= 2
    for opened, text in shown:
        assert printed[opened].strip() == text.strip(), f"the block at line {opened} prints:\n{printed[opened]}"


def written_folders(text: str) -> set[str]:
    """Folders the document's own commands write (``--out X``, ``out="X"``) and
    ``make demo``'s: paths under them are outputs, not repository files."""
    named = re.findall(r"--out[ =]([\w.-]+)|\bout=\"([\w.-]+)\"", text + (ROOT / "Makefile").read_text())
    return {folder for pair in named for folder in pair if folder}


@pytest.mark.parametrize("document", [CONTRIBUTING, README], ids=lambda p: p.name)
def test_every_cited_path_exists(document):
    text = document.read_text(encoding="utf-8")
    cited = cited_paths(text) + layout_folders(text)
    outputs = written_folders(text)
    assert "demo_out" in outputs  # make demo's folder, which the usage section builds on
    missing = sorted({path for path in cited
                      if not (ROOT / path).exists() and path.split("/", 1)[0] not in outputs})
    assert not missing, f"{document.name} cites paths the repository lacks: {missing}"


def test_the_layouts_agree_and_name_every_top_level_folder(contributing):
    readme = set(layout_folders(README.read_text(encoding="utf-8")))
    assert set(layout_folders(contributing)) == readme, "CONTRIBUTING.md's Layout must name README.md's folders"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout: the tracked folders are unknown")
    top = {path.split("/", 1)[0] + "/" for path in tracked.stdout.splitlines() if "/" in path and not path.startswith(".")}
    assert top <= readme, f"README.md's Layout leaves out {sorted(top - readme)}"


def test_the_path_checks_catch_what_they_should():
    text = ("See `cnnviz_core/hookspecs.py`, `tests/nowhere.py`, `pyproject.toml` and [the guide](docs/guide.md#x).\n"
            "Not paths: `cnnviz run NAME --out out/`, `layer:channel@y,x`, `plugins/<family>/`, `--weights FILE.pth`.\n"
            "```sh\ncat hidden/in/a/block.py\n```\n"
            "## Layout\n\n```\ncnnviz_core/   the core\nplugins/       methods\n  attribution/ maps\n```\n")
    assert cited_paths(text) == ["cnnviz_core/hookspecs.py", "tests/nowhere.py", "pyproject.toml", "docs/guide.md"]
    assert layout_folders(text) == ["cnnviz_core/", "plugins/", "plugins/attribution/"]
    blocks = fenced_blocks("text\n  ```python\n  x = 1\n    y = 2\n  ```\n")
    assert blocks == [{"tag": "python", "code": "x = 1\n  y = 2\n", "line": 2, "opened": 2, "closed": 5, "output_of": None}]
    pair = fenced_blocks("```python\nprint(1)\n```\n\n```text\n1\n```\nprose\n```text\n2\n```\n")
    assert [b["output_of"] for b in pair] == [None, 0, None]
