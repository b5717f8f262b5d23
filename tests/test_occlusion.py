"""Occlusion against the definition, on hand-checked, tiny and pretrained
models, through every path: torch batches, onnxruntime, an ONNX adapter,
incremental inference and coarse-to-fine refinement."""

from __future__ import annotations

import gc
import json
import time
import types
import weakref

import numpy as np
import pytest
import torch

import cnnviz_core
import cnnviz_plugins.attribution.occlusion.backends as occlusion_backends
import cnnviz_plugins.attribution.occlusion.method as occlusion_module
import cnnviz_plugins.attribution.occlusion.runtime as occlusion_runtime
from cnnviz_adapters import onnx_runtime_cache
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core.config import PreprocessConfig
from cnnviz_plugins.attribution.occlusion.method import window_starts
from cnnviz_plugins.attribution.occlusion.backends import Decision, forget_decisions, probe_runners, tune_batch
from cnnviz_plugins.attribution.occlusion.fill import gaussian_blur
from cnnviz_plugins.attribution.occlusion.geometry import WindowGrid, parse_pair, spread_to_pixels
from conftest import SMALL_CONFIG, in_box, small_torch_adapter

from tiny_models import LinearNet, SmallConvNet

EXACT = 1e-4


def config(size):
    return PreprocessConfig(input_size=(size, size), mean=(0, 0, 0), std=(1, 1, 1))


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test has its own ONNX cache and probes afresh."""
    monkeypatch.setenv("CNNVIZ_CACHE", str(tmp_path / "cache"))
    forget_decisions()
    occlusion_runtime._engines.clear()  # traced models kept per process: a fake must not outlive its test
    yield
    forget_decisions()
    occlusion_runtime._engines.clear()


def fill_for(x, baseline, sigma=10.0):
    """The picture a window copies from, computed independently of the plugin's helper where it can be."""
    image = x[0]
    if baseline == "mean":
        return np.broadcast_to(image.mean(axis=(1, 2), keepdims=True), image.shape)
    if baseline == "blur":
        return gaussian_blur(torch.from_numpy(image), sigma).numpy()
    return np.full_like(image, baseline)


def naive_occlusion(model_logits, x, cls, window, stride, baseline=0.0, score="logit", sigma=10.0):
    """One window at a time, straight from the definition. Returns the
    per-pixel map and the per-position grid."""
    _, _, height, width = x.shape
    (wh, ww), (sh, sw) = parse_pair(window, "window"), parse_pair(stride, "stride")
    fill = fill_for(x, baseline, sigma)

    def score_of(batch):
        logits = model_logits(batch).astype(np.float64)
        if score == "prob":
            e = np.exp(logits - logits.max(1, keepdims=True))
            logits = e / e.sum(1, keepdims=True)
        return logits[0, cls]

    clean = score_of(x)
    total, count = np.zeros((height, width)), np.zeros((height, width))
    ys, xs = window_starts(height, wh, sh), window_starts(width, ww, sw)
    grid = np.zeros((len(ys), len(xs)))
    for i, y in enumerate(ys):
        for j, xx in enumerate(xs):
            occluded = x.copy()
            occluded[0, :, y : y + wh, xx : xx + ww] = fill[:, y : y + wh, xx : xx + ww]
            grid[i, j] = clean - score_of(occluded)
            total[y : y + wh, xx : xx + ww] += grid[i, j]
            count[y : y + wh, xx : xx + ww] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0), grid


def session_logits(path):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(batch, np.float32)})[0]


class CountingNet(SmallConvNet):
    """Counts the images its forward sees."""

    images = 0

    def forward(self, x):
        CountingNet.images += len(x)
        return super().forward(x)


# -- geometry ------------------------------------------------------------------
def test_window_starts_cover_every_pixel():
    assert window_starts(10, 4, 4) == [0, 4, 6]
    assert window_starts(8, 4, 4) == [0, 4]
    assert window_starts(5, 5, 2) == [0]


@pytest.mark.parametrize("value, expected", [(16, (16, 16)), ("16", (16, 16)), ("16x24", (16, 24)), ("8X3", (8, 3)),
                                             (" 4 x 5 ", (4, 5)), ((7, 2), (7, 2))])
def test_sizes_parse_as_height_by_width(value, expected):
    assert parse_pair(value, "window") == expected


@pytest.mark.parametrize("value", ["16x", "x16", "16*24", "a", "0", "0x4", -3, 2.5, True, (1, 2, 3)])
def test_bad_sizes_are_refused_with_the_syntax(value):
    with pytest.raises(cnnviz_core.InputError, match="HxW"):
        parse_pair(value, "window")


@pytest.mark.parametrize("window, stride", [((3, 2), (2, 3)), ((2, 2), (3, 3)), ((4, 1), (1, 1))])
def test_spread_matches_a_loop_over_windows(window, stride):
    grid_windows = WindowGrid.build((9, 8), window, stride)
    values = np.random.default_rng(0).normal(size=grid_windows.shape)
    total, count = np.zeros((9, 8)), np.zeros((9, 8))
    for i, y in enumerate(grid_windows.ys):
        for j, x in enumerate(grid_windows.xs):
            total[y : y + window[0], x : x + window[1]] += values[i, j]
            count[y : y + window[0], x : x + window[1]] += 1
    expected = np.divide(total, count, out=np.zeros_like(total), where=count > 0)  # stride > window leaves gaps: 0
    np.testing.assert_allclose(spread_to_pixels(values, grid_windows), expected, atol=1e-6)


# -- hand-checked and tiny models ---------------------------------------------------
def test_one_pixel_windows_give_each_pixels_contribution():
    """For a linear score and window 1, a pixel's value is Σ_c W[c, p] · x[c, p]."""
    weight = np.zeros((1, 3, 2, 2), dtype=np.float32)
    weight[0, 0] = [[1, 2], [3, 4]]
    weight[0, 1] = [[-1, 0], [0, 1]]
    weight[0, 2] = [[0, 0], [2, 0]]
    x = np.zeros((1, 3, 2, 2), dtype=np.float32)
    x[0, 0] = [[1, 1], [1, 1]]
    x[0, 1] = [[2, 0], [0, 3]]
    x[0, 2] = [[5, 5], [0.5, 5]]
    adapter = TorchAdapter(LinearNet(2, 2, classes=1, weight=weight), "linear", config(2))
    result = cnnviz_core.run("occlusion", adapter, x, target=0, window=1, stride=1)
    # pixel (0,0): 1*1 + (-1)*2 + 0*5 = -1; (0,1): 2; (1,0): 3 + 2*0.5 = 4; (1,1): 4 + 3 = 7
    np.testing.assert_allclose(result.maps[0], [[-1, 2], [4, 7]], atol=1e-5)
    np.testing.assert_allclose(result.extras["grid"][0], [[-1, 2], [4, 7]], atol=1e-5)


@pytest.mark.parametrize("window, stride, baseline", [(2, 1, 0.0), (3, 2, 0.5), (4, 3, -1.0), ("2x3", "3x1", 0.25),
                                                      ("3x2", 2, "mean"), (3, "2x1", "blur")])
def test_matches_naive_reference_on_linear_model(window, stride, baseline):
    model = LinearNet(7, 7, classes=3, seed=1)
    adapter = TorchAdapter(model, "linear", config(7))
    x = np.random.default_rng(2).normal(size=(1, 3, 7, 7)).astype(np.float32)
    result = cnnviz_core.run("occlusion", adapter, x, target=2, window=window, stride=stride, baseline=baseline,
                             blur_sigma=1.5, batch_size=3)
    expected, grid = naive_occlusion(adapter.logits, x, 2, window, stride, baseline, sigma=1.5)
    np.testing.assert_allclose(result.maps[0], expected, atol=EXACT)
    np.testing.assert_allclose(result.extras["grid"][0], grid, atol=EXACT)


def test_blur_baseline_is_a_gaussian_blur_of_the_image():
    """The blurred copy keeps a constant image constant and the per-channel
    mean, and smooths: it is the separable Gaussian the help promises."""
    image = torch.from_numpy(np.random.default_rng(3).normal(size=(3, 40, 40)).astype(np.float32))
    blurred = gaussian_blur(image, 2.0)
    assert torch.allclose(gaussian_blur(torch.full((3, 9, 9), 0.7), 5.0), torch.full((3, 9, 9), 0.7), atol=1e-6)
    assert blurred.std() < 0.5 * image.std()
    # interior pixel: the 2-D Gaussian-weighted mean of its neighbourhood
    offsets = np.arange(-6, 7)
    kernel = np.exp(-0.5 * (offsets / 2.0) ** 2)
    kernel2d = np.outer(kernel, kernel) / np.outer(kernel, kernel).sum()
    expected = (image[1, 14:27, 14:27].numpy() * kernel2d).sum()
    assert blurred[1, 20, 20].item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("baseline", [0.0, "mean", "blur"])
def test_torch_batches_match_naive_reference_on_small_convnet(baseline):
    adapter = small_torch_adapter(seed=3)
    x = np.random.default_rng(5).normal(size=(1, 3, 32, 32)).astype(np.float32)
    # batch 5: the last batch is short, so the reused buffer is seen refilled and partly used
    result = cnnviz_core.run("occlusion", adapter, x, target=1, window="6x10", stride="5x7", baseline=baseline,
                             blur_sigma=3.0, batch_size=5, runtime="torch", incremental="off")
    expected, grid = naive_occlusion(adapter.logits, x, 1, "6x10", "5x7", baseline, sigma=3.0)
    np.testing.assert_allclose(result.extras["grid"][0], grid, atol=EXACT)
    np.testing.assert_allclose(result.maps[0], expected, atol=EXACT)
    assert result.metadata["runtime"]["backend"] == "torch" and result.metadata["runtime"]["how"] == "forced"
    assert result.params["window"] == "6x10" and result.params["stride"] == "5x7"


def test_prob_score_uses_softmax_probabilities():
    model = LinearNet(4, 4, classes=3, seed=3)
    adapter = TorchAdapter(model, "linear", config(4))
    x = np.random.default_rng(4).normal(size=(1, 3, 4, 4)).astype(np.float32)
    result = cnnviz_core.run("occlusion", adapter, x, target=1, window=2, stride=2, score="prob")
    np.testing.assert_allclose(result.maps[0], naive_occlusion(adapter.logits, x, 1, 2, 2, score="prob")[0], atol=1e-5)


@pytest.mark.parametrize("params, message", [
    ({"window": 5}, "larger than the input"), ({"window": "2x5"}, "larger than the input"), ({"stride": "3y3"}, "HxW"),
    ({"baseline": "grey"}, "'mean'"), ({"refine": 0}, "refine"), ({"refine": 1.5}, "refine"),
    ({"runtime": "tensorrt"}, "runtime"), ({"incremental": "maybe"}, "incremental"),
    ({"incremental": "on", "runtime": "onnx"}, "cannot be combined"),
])
def test_bad_parameters_are_refused_before_any_work(params, message):
    adapter = TorchAdapter(LinearNet(4, 4), "linear", config(4))
    with pytest.raises(cnnviz_core.InputError, match=message):
        cnnviz_core.run("occlusion", adapter, np.zeros((1, 3, 4, 4), np.float32), **params)


# -- several classes from the same passes ---------------------------------------------
def test_repeated_image_with_other_targets_shares_its_forward_passes():
    model = CountingNet(seed=1)
    adapter = TorchAdapter(model, "counting", SMALL_CONFIG)
    x = np.random.default_rng(6).normal(size=(1, 3, 32, 32)).astype(np.float32)
    other = np.random.default_rng(7).normal(size=(1, 3, 32, 32)).astype(np.float32)
    params = dict(window=8, stride=4, runtime="torch", incremental="off")
    windows = 7 * 7
    assert adapter.num_classes == 5  # read once (a forward of its own) before counting
    CountingNet.images = 0
    result = cnnviz_core.run("occlusion", adapter, np.concatenate([x, x, other, x]), target=[0, 3, 3, "top1"], **params)
    # two distinct images: their windows and clean passes once each (num_classes is read from the module)
    assert CountingNet.images == 2 * (windows + 1)
    assert result.metadata["windows"]["windows_requested"] == 4 * windows
    assert result.metadata["windows"]["windows_evaluated"] == 2 * windows
    for index, (image, cls) in enumerate([(x, 0), (x, 3), (other, 3)]):
        np.testing.assert_allclose(result.maps[index], naive_occlusion(adapter.logits, image, cls, 8, 4)[0], atol=EXACT)
    top1 = int(np.argmax(adapter.logits(x)[0]))
    assert result.classes[3] == top1
    np.testing.assert_allclose(result.maps[3], naive_occlusion(adapter.logits, x, top1, 8, 4)[0], atol=EXACT)


# -- onnxruntime: the runtime cache and forced runtimes ----------------------------------
def test_onnx_runtime_matches_naive_on_its_session_and_agrees_with_torch(tmp_path):
    adapter = small_torch_adapter(seed=2)
    x = np.random.default_rng(8).normal(size=(1, 3, 32, 32)).astype(np.float32)
    params = dict(target=4, window="8x6", stride="6x5", baseline="mean", batch_size=4, incremental="off")
    onnx_result = cnnviz_core.run("occlusion", adapter, x, runtime="onnx", **params)
    runtime = onnx_result.metadata["runtime"]
    assert runtime["backend"] == "onnxruntime" and runtime["providers"] == ["CPUExecutionProvider"]
    assert runtime["onnx_cache"]["path"].startswith(str(tmp_path / "cache"))
    expected, _ = naive_occlusion(session_logits(runtime["onnx_cache"]["path"]), x, 4, "8x6", "6x5", "mean")
    np.testing.assert_allclose(onnx_result.maps[0], expected, atol=EXACT)
    torch_result = cnnviz_core.run("occlusion", adapter, x, runtime="torch", **params)
    np.testing.assert_allclose(onnx_result.maps, torch_result.maps, atol=1e-4)


def test_onnx_adapter_matches_naive_and_refuses_torch_only_options(small_onnx_path):
    model = cnnviz_core.load_model(small_onnx_path)
    x = np.random.default_rng(9).normal(size=(1, 3, 32, 32)).astype(np.float32)
    result = cnnviz_core.run("occlusion", model, x, target=2, window=7, stride=5, baseline="blur", blur_sigma=2.0)
    np.testing.assert_allclose(result.maps[0], naive_occlusion(model.logits, x, 2, 7, 5, "blur", sigma=2.0)[0], atol=EXACT)
    assert result.metadata["runtime"]["backend"] == "onnx adapter"
    for params, flag in [({"runtime": "torch"}, "--runtime torch"), ({"incremental": "on"}, "--incremental on")]:
        with pytest.raises(cnnviz_core.InputError, match=flag):
            cnnviz_core.run("occlusion", model, x, **params)


def test_runtime_cache_is_reused_and_keyed_by_weights(tmp_path, monkeypatch):
    exports = []
    real_export = onnx_runtime_cache.export_onnx
    monkeypatch.setattr(onnx_runtime_cache, "export_onnx", lambda *a, **k: exports.append(1) or real_export(*a, **k))
    onnx_runtime_cache.clear_sessions()
    x = np.random.default_rng(10).normal(size=(1, 3, 32, 32)).astype(np.float32)
    params = dict(target=0, window=16, stride=16, runtime="onnx")
    first = cnnviz_core.run("occlusion", small_torch_adapter(seed=0), x, **params).metadata["runtime"]["onnx_cache"]
    second = cnnviz_core.run("occlusion", small_torch_adapter(seed=0), x, **params).metadata["runtime"]["onnx_cache"]
    assert first["exported_now"] and not second["exported_now"] and len(exports) == 1
    assert second["path"] == first["path"]
    other = cnnviz_core.run("occlusion", small_torch_adapter(seed=1), x, **params).metadata["runtime"]["onnx_cache"]
    assert other["exported_now"] and other["path"] != first["path"] and len(exports) == 2
    # a weight changed in place is another model
    changed = small_torch_adapter(seed=0)
    with torch.no_grad():
        changed.module.fc.bias.add_(1.0)
    assert onnx_runtime_cache.fingerprint(changed) != first["key"] and not onnx_runtime_cache.fingerprint(changed).startswith(first["key"])
    folder = tmp_path / "cache" / "onnx"
    assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".json", ".onnx", ".onnx"]  # no temporary left
    assert json.loads((folder / (first["path"].split("/")[-1] + ".json")).read_text())["input_size"] == [32, 32]


def test_forced_onnx_export_failure_is_an_error_and_auto_falls_back_to_torch(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(onnx_runtime_cache, "export_onnx", broken)
    adapter = small_torch_adapter(seed=4)
    x = np.random.default_rng(11).normal(size=(1, 3, 32, 32)).astype(np.float32)
    with pytest.raises(cnnviz_core.MethodError, match="--runtime onnx.*exporter exploded.*--runtime torch"):
        cnnviz_core.run("occlusion", adapter, x, window=8, stride=8, runtime="onnx")
    # enough windows (15 x 15) for auto to want a probe: the failed export leaves torch, with a warning
    with pytest.warns(cnnviz_core.MethodWarning, match="onnxruntime runner .* could not be set up .*exporter exploded"):
        result = cnnviz_core.run("occlusion", adapter, x, target=1, window=4, stride=2, incremental="off")
    assert result.metadata["runtime"]["backend"] == "torch"
    assert "exporter exploded" in result.metadata["runtime"]["runner_errors"]["onnxruntime"]
    np.testing.assert_allclose(result.maps[0], naive_occlusion(adapter.logits, x, 1, 4, 2)[0], atol=EXACT)


def test_auto_times_both_runtimes_and_remembers_the_decision():
    adapter = small_torch_adapter(seed=5)
    x = np.random.default_rng(12).normal(size=(1, 3, 32, 32)).astype(np.float32)
    params = dict(target=3, window=4, stride=2, batch_size=8, incremental="off")  # 15 x 15 windows, probe 2 x 2 x 8
    first = cnnviz_core.run("occlusion", adapter, x, **params)
    runtime = first.metadata["runtime"]
    assert runtime["how"] == "probe" and set(runtime["probe_ms_per_window"]) == {"torch", "onnxruntime"}
    fastest = min(runtime["probe_ms_per_window"], key=runtime["probe_ms_per_window"].get)
    assert runtime["chosen"] == runtime["backend"] == fastest
    # windows run on both runtimes during the probe: still the definition, to the runtimes' agreement
    np.testing.assert_allclose(first.maps[0], naive_occlusion(adapter.logits, x, 3, 4, 2)[0], atol=1e-4)
    again = cnnviz_core.run("occlusion", adapter, x, **params).metadata["runtime"]
    assert again["how"] == "remembered" and again["chosen"] == fastest


def test_probe_keeps_every_result_picks_the_fastest_and_drops_a_failing_runner():
    class Runner:
        def __init__(self, delay, fail=False):
            self.delay, self.fail, self.batch_size = delay, fail, 3

        def occluded_logits(self, image, boxes, fill):
            if self.fail:
                raise RuntimeError("no kernel")
            time.sleep(self.delay * len(boxes))
            return np.asarray(boxes, np.float32)[:, :1] + self.delay

    boxes = np.arange(80).reshape(20, 4)
    failures = []
    runners = {"slow": Runner(0.004), "broken": Runner(0, fail=True), "fast": Runner(0.0005)}
    decision, rows = probe_runners(runners, None, boxes, None, lambda name, error: failures.append(name))
    assert decision.chosen == "fast" and decision.how == "probe" and failures == ["broken"]
    assert sorted(rows) == list(range(12))  # 2 batches of 3 on each runner that worked, taking turns
    assert rows[0][0] == 0.004 and rows[3][0] == 4 * 3 + 0.0005 and rows[6][0] == 4 * 6 + 0.004
    assert isinstance(decision, Decision) and decision.probe_ms_per_window["slow"] > decision.probe_ms_per_window["fast"]


class SizedRunner:
    """Per-window cost that depends on the batch size, as measured runtimes'
    does, on a clock of its own: the tuning's decisions are exact, whatever
    the load on the machine."""

    def __init__(self, ms_by_size, batch_size=16):
        self.ms_by_size, self.batch_size, self.sizes = ms_by_size, batch_size, []
        self.now = 0.0

    def occluded_logits(self, image, boxes, fill):
        self.sizes.append(len(boxes))
        self.now += self.ms_by_size[len(boxes)] * len(boxes) / 1000
        return np.asarray(boxes, np.float32)[:, :1]

    def clock(self, monkeypatch):
        monkeypatch.setattr(occlusion_backends, "time", types.SimpleNamespace(perf_counter=lambda: self.now))
        return self


@pytest.mark.parametrize("ms_by_size, expected", [
    ({4: 4.0, 8: 3.0, 16: 2.0, 32: 1.0, 64: 2.0}, 32),  # larger batches pay off, up to a point
    ({4: 0.5, 8: 1.0, 16: 2.0, 32: 3.0, 64: 4.0}, 4),  # smaller ones do: up fails, then down
    ({4: 3.0, 8: 3.0, 16: 2.0, 32: 2.0, 64: 2.0}, 16),  # no size 5% better: kept
])
def test_batch_size_is_tuned_on_real_batches(ms_by_size, expected, monkeypatch):
    runner = SizedRunner(ms_by_size).clock(monkeypatch)
    boxes = np.arange(4 * 400).reshape(400, 4)
    tuning, rows = tune_batch(runner, None, boxes, None, (4, 8, 16, 32, 64))
    assert tuning.complete and tuning.batch_size == expected
    assert sorted(rows) == list(range(sum(runner.sizes)))  # every result kept, in order
    assert all(runner.sizes.count(size) == occlusion_backends.TUNE_BATCHES for size in set(runner.sizes))  # per size tried
    short = tune_batch(SizedRunner(ms_by_size).clock(monkeypatch), None, boxes[:40], None, (4, 8, 16, 32, 64))[0]
    assert not short.complete and short.batch_size in (16, expected)


# -- incremental inference ------------------------------------------------------------
class FakeIncremental:
    """The IncrementalOcclusion interface, computed by full passes: for the wiring."""

    built = []

    def __init__(self, module, fraction):
        self.module, self.fraction, self.calls = module, fraction, 0

    @classmethod
    def build(cls, module, input_shape):
        cls.built.append(tuple(input_shape))
        if getattr(module, "untraceable", False):
            raise cnnviz_core.MethodError("occlusion", "cannot trace this model")
        return cls(module, getattr(module, "fraction", 0.1))

    def estimated_flop_fraction(self, window):
        return self.fraction

    def describe(self):
        return {"fake": True}

    def occluded_logits(self, image, boxes, fill, batch_size=None):
        self.calls += 1
        batch = image[None].repeat(len(boxes), 1, 1, 1)
        for k, (y0, y1, x0, x1) in enumerate(boxes):
            batch[k, :, y0:y1, x0:x1] = fill[:, y0:y1, x0:x1]
        return self.module(batch)


def test_incremental_wiring_with_a_fake_engine(monkeypatch):
    monkeypatch.setattr(occlusion_module, "incremental_class", lambda: FakeIncremental)
    FakeIncremental.built = []
    adapter = small_torch_adapter(seed=6)
    x = np.random.default_rng(13).normal(size=(1, 3, 32, 32)).astype(np.float32)
    forced = cnnviz_core.run("occlusion", adapter, x, target=2, window=6, stride=3, incremental="on")
    assert FakeIncremental.built == [(1, 3, 32, 32)]
    record = forced.metadata["incremental"]
    assert record["used"] and record["estimated_flop_fraction"] == 0.1 and record["detail"] == {"fake": True}
    np.testing.assert_allclose(forced.maps[0], naive_occlusion(adapter.logits, x, 2, 6, 3)[0], atol=EXACT)
    # auto: a large job times the fake beside torch and onnxruntime
    auto = cnnviz_core.run("occlusion", adapter, x, target=2, window=4, stride=1, batch_size=8).metadata
    assert set(auto["runtime"]["probe_ms_per_window"]) == {"torch", "onnxruntime", "incremental"}
    assert auto["incremental"]["used"] == (auto["runtime"]["chosen"] == "incremental")
    # an engine that would save too little, or cannot trace the model, is left out in auto mode; `on` raises
    other = small_torch_adapter(seed=7)
    other.module.fraction = 0.9
    skipped = cnnviz_core.run("occlusion", other, x, window=4, stride=1, batch_size=8).metadata["incremental"]
    assert not skipped["used"] and "too little saved" in skipped["reason"]
    untraceable = small_torch_adapter(seed=8)
    untraceable.module.untraceable = True
    untraced = cnnviz_core.run("occlusion", untraceable, x, window=4, stride=1, batch_size=8).metadata
    assert "cannot trace" in untraced["incremental"]["reason"]
    assert set(untraced["runtime"]["probe_ms_per_window"]) == {"torch", "onnxruntime"}
    with pytest.raises(cnnviz_core.MethodError, match="cannot trace"):
        cnnviz_core.run("occlusion", untraceable, x, window=4, stride=1, incremental="on")


def test_incremental_engine_matches_naive_on_small_convnet():
    adapter = small_torch_adapter(seed=9)
    x = np.random.default_rng(14).normal(size=(1, 3, 32, 32)).astype(np.float32)
    result = cnnviz_core.run("occlusion", adapter, x, target=0, window="5x7", stride="3x4", baseline="blur", blur_sigma=2.0,
                             incremental="on")
    assert result.metadata["incremental"]["used"] and result.metadata["runtime"]["backend"] == "incremental"
    expected, grid = naive_occlusion(adapter.logits, x, 0, "5x7", "3x4", "blur", sigma=2.0)
    np.testing.assert_allclose(result.extras["grid"][0], grid, atol=EXACT)
    np.testing.assert_allclose(result.maps[0], expected, atol=EXACT)


def test_a_model_dropped_after_runs_is_freed_with_its_traced_engine_and_sessions():
    module = SmallConvNet(seed=15)
    adapter = TorchAdapter(module, "dropped", SMALL_CONFIG)
    x = np.random.default_rng(15).normal(size=(1, 3, 32, 32)).astype(np.float32)
    traced = cnnviz_core.run("occlusion", adapter, x, window=8, stride=4, incremental="on")
    exported = cnnviz_core.run("occlusion", adapter, x, window=8, stride=8, runtime="onnx")
    path = exported.metadata["runtime"]["onnx_cache"]["path"]
    assert traced.metadata["incremental"]["used"] and len(occlusion_runtime._engines) == 1
    assert any(key[0] == path for key in onnx_runtime_cache._sessions)  # kept for a later run
    alive = weakref.ref(module)
    del module, adapter, traced, exported
    gc.collect()
    assert alive() is None
    assert len(occlusion_runtime._engines) == 0
    assert not any(key[0] == path for key in onnx_runtime_cache._sessions)


# -- coarse-to-fine refinement ----------------------------------------------------------
def test_refine_one_is_exact_and_a_fraction_is_exact_where_it_says():
    adapter = small_torch_adapter(seed=10)
    x = np.random.default_rng(15).normal(size=(1, 3, 32, 32)).astype(np.float32)
    params = dict(target=1, window=6, stride=2, runtime="torch", incremental="off")
    expected, grid = naive_occlusion(adapter.logits, x, 1, 6, 2)
    full = cnnviz_core.run("occlusion", adapter, x, refine=1.0, **params)
    np.testing.assert_allclose(full.maps[0], expected, atol=EXACT)
    assert full.extras["evaluated"].all() and full.metadata["refine"][0]["exact_fraction"] == 1.0

    part = cnnviz_core.run("occlusion", adapter, x, refine=0.25, **params)
    exact = part.extras["evaluated"][0]
    record = part.metadata["refine"][0]
    assert 0 < exact.mean() < 1 and record["exact_fraction"] == pytest.approx(exact.mean(), abs=1e-4)
    assert record["windows_exact"] == exact.sum() == part.metadata["windows"]["windows_evaluated"]
    np.testing.assert_allclose(part.extras["grid"][0][exact], grid[exact], atol=EXACT)
    # every coarse position (every second one, plus the edge) is exact; the refined cells hold the largest drops
    assert exact[::2, ::2].all() and exact[-1, -1]
    refined = exact.copy()
    refined[::2, ::2] = False
    refined[-1, ::2] = refined[::2, -1] = False
    refined[-1, -1] = False
    assert grid[refined].mean() > grid[~exact].mean()
    # the reported gap: interpolated estimate versus exact value on the refined windows
    estimate = occlusion_module.CoarseToFine(WindowGrid.build((32, 32), (6, 6), (2, 2)), 0.25)
    coarse = grid[np.ix_(estimate.rows, estimate.cols)]
    gap = np.abs(estimate.estimate(coarse)[refined] - grid[refined])
    assert record["interpolation_error_on_refined_windows"]["max"] == pytest.approx(gap.max(), abs=1e-4)
    assert record["interpolation_error_on_refined_windows"]["windows_compared"] == refined.sum()
    # interpolated where not exact: between the coarse neighbours
    assert np.abs(part.maps[0] - expected).max() > 0


# -- the pretrained model ----------------------------------------------------------------
def test_pretrained_occlusion_peaks_on_the_cat_and_onnx_agrees(lite0, lite0_onnx, photos):
    onnx_model = cnnviz_core.load_model(lite0_onnx)
    params = dict(target="Egyptian cat", window=56, stride=28)
    torch_result = cnnviz_core.run("occlusion", lite0, [photos["cat_on_grey"]], runtime="torch", **params)
    onnx_result = cnnviz_core.run("occlusion", onnx_model, [photos["cat_on_grey"]], **params)
    grid = torch_result.extras["grid"][0]
    assert grid.shape == (7, 7)
    assert in_box(torch_result.maps[0])
    # occluding plain grey background changes nothing
    assert np.abs(torch_result.maps[0][170:, :60]).max() < 0.05
    np.testing.assert_allclose(onnx_result.maps, torch_result.maps, atol=1e-3, rtol=1e-4)
    assert onnx_result.scores[0] == pytest.approx(torch_result.scores[0], abs=1e-4)


def test_pretrained_every_exact_path_matches_the_naive_reference(lite0, photos):
    """Window 56 stride 56: 16 windows, so that the naive loop stays quick."""
    x, _ = lite0.prepare([photos["chelsea"]])
    expected, grid = naive_occlusion(lite0.logits, x, 285, 56, 56)
    common = dict(target=285, window=56, stride=56)
    paths = {
        "torch": dict(runtime="torch", incremental="off"),
        "incremental": dict(incremental="on"),
        "refine": dict(runtime="torch", incremental="off", refine=1.0),
    }
    for name, params in paths.items():
        result = cnnviz_core.run("occlusion", lite0, x, **common, **params)
        np.testing.assert_allclose(result.extras["grid"][0], grid, atol=EXACT, err_msg=name)
        np.testing.assert_allclose(result.maps[0], expected, atol=EXACT, err_msg=name)
    onnx = cnnviz_core.run("occlusion", lite0, x, **common, runtime="onnx")
    path = onnx.metadata["runtime"]["onnx_cache"]["path"]
    np.testing.assert_allclose(onnx.maps[0], naive_occlusion(session_logits(path), x, 285, 56, 56)[0], atol=EXACT)
    np.testing.assert_allclose(onnx.maps[0], expected, atol=1e-3)


def test_cli_rectangular_window_and_blur_baseline(lite0, photos, tmp_path, capsys):
    from cnnviz_core.cli import main

    out = tmp_path / "out"
    code = main(["run", "occlusion", "--model", "efficientnet_lite0", "--image", photos["chelsea"], "--out", str(out),
                 "--window", "16x24", "--stride", "104x100", "--baseline", "blur", "--target", "Egyptian cat", "--quiet"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "occlusion.class285_Egyptian_cat.json").read_text())  # file names carry the target
    assert record["params"]["window"] == "16x24" and record["params"]["baseline"] == "blur"
    assert record["metadata"]["windows"]["grid"] == [3, 3] and record["metadata"]["runtime"]["backend"]
    assert np.load(out / "occlusion.class285_Egyptian_cat.grid.npy").shape == (1, 3, 3)
    code = main(["run", "occlusion", "--model", "efficientnet_lite0", "--image", photos["chelsea"], "--out", str(out),
                 "--window", "16by24"])
    assert code == 2 and "HxW" in capsys.readouterr().err
