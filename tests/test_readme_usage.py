"""Every command of the README's usage sections runs as written.

The README promises that after ``make demo`` each line of "Use" and "Dataset
runs" works from the repository root. This test builds that situation in a
temporary folder (the virtual environment reachable as ``.venv``, the demo's
own dataset of crops in ``demo_out/dataset``), then runs the shell blocks line
by line in one shell, and the Python blocks in order in one interpreter, in
the order the README gives them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cnnviz_core import demo

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SECTIONS = ("## Use\n", "## Methods\n")  # the usage part: from "Use" up to "Methods"

pytestmark = pytest.mark.slow


def usage_blocks() -> list[tuple[str, str]]:
    """(language, code) of each fenced block of the usage part, in order."""
    text = README.read_text()
    start, stop = text.index(SECTIONS[0]), text.index(SECTIONS[1])
    return re.findall(r"```(sh|python)\n(.*?)```", text[start:stop], flags=re.S)


def shell_commands(code: str) -> list[str]:
    """The command lines of a shell block, trailing comments dropped."""
    commands = []
    for line in code.splitlines():
        line = re.split(r"\s#\s", line, maxsplit=1)[0].strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def test_the_usage_part_has_blocks_of_both_kinds():
    kinds = [kind for kind, _ in usage_blocks()]
    assert kinds.count("sh") >= 2 and kinds.count("python") >= 2
    assert shell_commands(usage_blocks()[0][1])[0] == "source .venv/bin/activate"


@pytest.fixture(scope="module")
def after_make_demo(tmp_path_factory) -> Path:
    """A working folder that looks like the repository after ``make demo``:
    ``.venv`` with ``cnnviz`` in it, and the demo's dataset folder."""
    root = tmp_path_factory.mktemp("readme")
    venv = REPO / ".venv"
    if (venv / "bin" / "activate").exists() and (venv / "bin" / "cnnviz").exists():
        (root / ".venv").symlink_to(venv)
    else:  # the suite runs from another environment: an activate that puts it first on PATH
        (root / ".venv" / "bin").mkdir(parents=True)
        (root / ".venv" / "bin" / "activate").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    demo._write_dataset(str(root / "demo_out" / "dataset"))
    return root


def test_every_usage_command_runs_as_written(after_make_demo):
    script, python_code = ["set -e"], []
    for kind, code in usage_blocks():
        if kind == "sh":
            for command in shell_commands(code):
                script += [f"echo {_quoted('>>> ' + command)}", command, 'echo "<<< $SECONDS s"']
        else:
            python_code.append(code)
    environment = {**os.environ, "CNNVIZ_PROGRESS": "0"}
    log = after_make_demo / "usage.log"  # what ran, and for how long, even after a timeout
    with open(log, "w") as stream:
        shell = subprocess.run(["bash", "-c", "\n".join(script)], cwd=after_make_demo, env=environment,
                               stdout=stream, stderr=subprocess.PIPE, text=True, timeout=1800)
    shell.stdout = log.read_text()
    ran = [line for line in shell.stdout.splitlines() if line.startswith(">>> ")]
    assert shell.returncode == 0, f"failed: {ran[-1] if ran else '?'}\n{shell.stdout[-3000:]}\n{shell.stderr[-3000:]}"
    assert len(ran) == sum(len(shell_commands(c)) for k, c in usage_blocks() if k == "sh")

    # What the commands say they write is there.
    assert (after_make_demo / "lite0.onnx").is_file() and (after_make_demo / "lite0.onnx.json").is_file()
    written = {path.name for path in (after_make_demo / "out").iterdir()}
    assert any("chelsea" in name and "gradcam" in name for name in written), written
    assert (after_make_demo / "store" / "index.csv").is_file()

    python = subprocess.run([sys.executable, "-c", "\n".join(python_code)], cwd=after_make_demo,
                            env=environment, capture_output=True, text=True, timeout=900)
    assert python.returncode == 0, python.stderr[-3000:]


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
