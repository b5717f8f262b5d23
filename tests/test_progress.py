"""Progress: a live tqdm bar in a terminal, plain lines elsewhere, silent for
quick work, and off for library calls unless asked."""

from __future__ import annotations

import io

import pytest

from cnnviz_core.progress import PROGRESS_ENV, Progress, progress_default
from cnnviz_core.scheduler import Scheduler


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_a_live_bar():
    stream = Terminal()
    progress = Progress(4, "occlusion", delay=0, stream=stream)
    for _ in range(4):
        progress.update(1)
    progress.close()
    text = stream.getvalue()
    assert "occlusion" in text and "100%" in text
    assert "\r" in text  # redrawn in place
    assert text.endswith("\n")  # the finished bar stays on screen


def test_log_gets_plain_lines_at_start_quarters_and_end():
    stream = io.StringIO()
    progress = Progress(8, "rise", delay=0, stream=stream)
    for _ in range(8):
        progress.update(1)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0].startswith("rise:  12% (1/8)") and lines[0].endswith("; started")
    assert [line.split("%")[0] for line in lines[1:-1]] == ["rise:  25", "rise:  50", "rise:  75"]
    assert lines[-1].startswith("rise: 100% (8/8)") and lines[-1].endswith("; done")


def test_log_line_for_unfinished_work():
    stream = io.StringIO()
    progress = Progress(10, "tsne", delay=0, stream=stream)
    progress.set(3)
    progress.close()
    assert stream.getvalue().splitlines()[-1].endswith("; stopped")


@pytest.mark.parametrize("stream_class", [io.StringIO, Terminal])
def test_quick_work_stays_silent(stream_class):
    stream = stream_class()
    progress = Progress(100, "fast", stream=stream)  # default delay: 2 s
    for _ in range(100):
        progress.update(1)
    progress.close()
    assert stream.getvalue() == ""
    assert progress.done == 100


@pytest.mark.parametrize("stream_class", [io.StringIO, Terminal])
def test_disabled_prints_nothing_even_with_zero_delay(stream_class):
    stream = stream_class()
    progress = Progress(3, "off", enabled=False, delay=0, stream=stream)
    progress.update(3)
    progress.close()
    assert stream.getvalue() == ""


def test_never_counts_past_total_or_backwards():
    progress = Progress(2, delay=0, stream=io.StringIO())
    progress.update(5)
    assert progress.done == 2
    progress.set(1)
    assert progress.done == 2


def test_default_is_off_for_library_calls_and_the_environment_decides(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert progress_default() is False and Scheduler(device="cpu").progress is False
    assert progress_default(default=True) is True  # the CLI's default
    assert Scheduler(device="cpu", progress=True).progress is True
    monkeypatch.setenv(PROGRESS_ENV, "1")
    assert Scheduler(device="cpu").progress is True
    assert progress_default(False, default=True) is False  # an explicit choice (--quiet) wins
    monkeypatch.setenv(PROGRESS_ENV, "0")
    assert progress_default(default=True) is False
