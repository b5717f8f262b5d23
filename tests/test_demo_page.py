"""The demo page as a person sees it: a reduced demo (a few methods of each
kind, a small crop dataset) is built, then loaded in headless Chromium at
1280 x 800 — no horizontal overflow, every picture loaded, no console error,
a click enlarges a picture. Screenshots land in tests/artifacts/.

Chromium is Debian's package (``make test`` installs it when run as root),
driven by Playwright's Python package through ``executable_path``: no
browser is downloaded."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from pathlib import Path

import pytest

from cnnviz_core import demo, demo_page

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
WIDTH, HEIGHT = 1280, 800
# two of each kind, on both runtimes: gradient methods on PyTorch, the rest on ONNX
REDUCED = ["gradcam", "deconvnet", "cam", "occlusion", "adversarial", "fooling_images", "filters", "tsne"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(page path, the demo's progress output) of a reduced demo."""
    out = tmp_path_factory.mktemp("demo")
    progress = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "CROPS_PER_PHOTO", 4)  # 56 crops: t-SNE still has a map to draw
        # the leaderboard (cam and occlusion are in REDUCED) with 8 steps a curve instead of 24
        patch.setattr(demo, "EVALUATION_METRICS", {**demo.EVALUATION_METRICS, "deletion": {"steps": 8}, "insertion": {"steps": 8}})
        with contextlib.redirect_stderr(progress):
            index = demo.run_demo(str(out), only=REDUCED, progress=True)
    return Path(index), progress.getvalue()


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Chromium is missing: run `make test` as root (it installs Debian's chromium), "
                    "or `apt-get install chromium`")
    return path


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path())
        yield launched
        launched.close()


def open_page(browser, index: Path):
    page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("requestfailed", lambda request: errors.append(f"failed to load {request.url}"))
    page.goto(index.as_uri(), wait_until="load")
    return page, errors


def test_page_fits_1280_loads_every_picture_and_logs_no_error(built, browser):
    index, _ = built
    page, errors = open_page(browser, index)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo_page_top.png"))
    page.screenshot(path=str(ARTIFACTS / "demo_page_full.png"), full_page=True)
    assert page.evaluate("document.scrollingElement.scrollWidth") <= WIDTH
    pictures = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    assert len(pictures) >= 2 * len(REDUCED)
    assert [src for src, complete, width in pictures if not complete or width == 0] == []
    # every card's pictures stay inside the viewport's width
    widest = page.evaluate("Math.max(...Array.from(document.querySelectorAll('.card, .board')).map(c => c.getBoundingClientRect().right))")
    assert widest <= WIDTH
    assert page.locator("#evaluation table.board").count() == 1  # the leaderboard is on the page, as HTML
    assert errors == []
    page.close()


def test_a_click_enlarges_a_picture_and_escape_closes_it(built, browser):
    index, _ = built
    page, errors = open_page(browser, index)
    first = page.locator("#attribution img").first
    small = first.bounding_box()["width"]
    first.click()
    zoomed = page.locator("#zoom img")
    zoomed.wait_for(state="visible")
    page.wait_for_function("document.querySelector('#zoom img').complete && document.querySelector('#zoom img').naturalWidth > 0")
    assert zoomed.bounding_box()["width"] > 2 * small
    page.screenshot(path=str(ARTIFACTS / "demo_page_zoom.png"))
    page.keyboard.press("Escape")
    assert page.locator("#zoom").is_hidden()
    assert errors == []
    page.close()


def test_page_is_self_contained_and_done(built):
    index, _ = built
    text = index.read_text()
    links = re.findall(r"(?:src|href)='([^']*)'", text)
    assert links and not [link for link in links if "//" in link]  # no external links, no CDN
    for link in links:
        if not link.startswith("#"):
            assert (index.parent / link).is_file(), link
    assert "http-equiv='refresh'" not in text  # the finished page stops reloading
    assert "Failed" not in text


def test_captions_say_what_each_picture_is(built):
    index, _ = built
    text = index.read_text()
    # the adversarial row: the original with its own class, then the adversarial image with the goal's
    original = re.search(r"original: ([^<(]+) \(p=([0-9.]+)\)", text)
    assert original and "ostrich" not in original.group(1)
    assert re.search(r"adversarial: ostrich[^(<]*\(p=[0-9.]+\)", text)
    assert re.search(r"made for [^:<]+: p=[0-9.]+", text)  # fooling images name their class and confidence
    assert "values" in text and "receptive field of" in text  # heatmaps, and deconvnet's unit
    assert "trustworthiness" in text and "e+308" not in text and "inf" not in re.sub(r"[a-z]inf|inf[a-z]", "", text)


def test_the_leaderboard_scores_the_methods_beside_references_with_curves(built):
    index, progress = built
    text = index.read_text()
    section = text[text.index("<section id='evaluation'>"):]
    rows = re.findall(r"<tr[^>]*><td[^>]*>([^<]+)</td>", section)
    assert rows == ["cam", "occlusion", "reference:random", "reference:sobel"]
    assert "deletion ↓" in section and "insertion ↑" in section and "lower is more faithful" in section
    assert len(re.findall(r"<td class=best>", section)) == 4  # one best cell per metric
    for metric in ("deletion", "insertion"):
        assert f"src='evaluation/curves.{metric}.png'" in section
    scores = (index.parent / "evaluation" / "leaderboard.csv").read_text().splitlines()
    assert len(scores) == 1 + 4 * 4  # header, then 4 rows (methods and references) x 4 metrics
    assert re.search(r"^evaluation of cam, occlusion by deletion, insertion, sparseness, complexity: [0-9.]+ s$", progress, re.M)


def test_progress_counts_methods_names_runtimes_and_no_internal_steps(built):
    _, progress = built
    lines = [line for line in progress.splitlines() if line.startswith("method ")]
    assert len(lines) == len(REDUCED)
    assert lines[0].startswith(f"method 1 of {len(REDUCED)}: ") and "left" in lines[0]
    assert any(" on PyTorch" in line for line in lines) and any(" on ONNX Runtime" in line for line in lines)
    assert "-forward" not in progress and "analysis-" not in progress
    first_kinds = [line.split(": ")[1].split(" on ")[0] for line in lines]
    assert first_kinds[0] in ("gradcam", "deconvnet")  # quick attribution methods come first


def test_a_running_page_says_so_and_reloads(built, lite0):
    import numpy as np

    text = demo_page.demo_page(lite0, ["chelsea"], np.zeros((1, 1000), np.float32), [], [("gradcam", "torch")], done=False)
    assert "http-equiv='refresh'" in text and "Running: 0 of 1 done" in text and "gradcam (PyTorch)" in text
