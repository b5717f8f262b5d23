"""The adapter contract (cnnviz_core.ModelAdapter): a capability means exactly
the calls it allows. A third party's adapter over plain numpy code, declaring
``forward`` only, is offered exactly the forward-only methods, and each runs
on it; one that adds ``activations`` gets receptive fields and stages from
the contract's defaults; and the torch and ONNX adapters answer every model
question alike on the pretrained EfficientNet-Lite0."""

from __future__ import annotations

import contextlib
import types

import numpy as np
import pytest

import cnnviz_core
from cnnviz_core import AdapterError, Capability, ModelAdapter, PreprocessConfig, hookimpl
from cnnviz_core.cli import main as cli_main

from conftest import state_copy, states_equal

SIZE = 16
CLASSES = 5
PREFIX = "pooled:"
PLUGIN = "test-pooled-linear-adapter"
# forward-only methods made quick on a 16 px model; any other gets its demo parameters
QUICK = {
    "occlusion": {"window": 4, "stride": 4},
    "rise": {"masks": 64, "grid": 4},
    "fooling_images": {"generations": 3, "population": 8, "parents": 2},
    "tsne": {"perplexity": 2.0},  # 8 images; the demo's settings are for hundreds
}


def pooled_linear(pixels: np.ndarray) -> np.ndarray:
    """A fixed linear model of 4x4-pooled pixels: (B, 3, 16, 16) → (B, 5)."""
    b = len(pixels)
    pooled = pixels.reshape(b, 3, 4, 4, 4, 4).mean(axis=(3, 5)).reshape(b, 48)
    weight = np.cos(np.arange(48 * CLASSES, dtype=np.float64).reshape(CLASSES, 48))  # fixed, no randomness
    return (pooled @ weight.T + np.linspace(-1, 1, CLASSES)).astype(np.float32)


class PooledLinearAdapter(ModelAdapter):
    """A third party's adapter: any Python callable over numpy, forward only."""

    kind = "pooled-numpy"
    capabilities = frozenset({Capability.FORWARD})

    def __init__(self, function=pooled_linear, name: str = "pooled_linear"):
        super().__init__(name, PreprocessConfig(input_size=(SIZE, SIZE)), labels=[f"class {i}" for i in range(CLASSES)])
        self.function = function

    @classmethod
    def can_load(cls, spec) -> bool:
        return isinstance(spec, str) and spec.startswith(PREFIX)

    @classmethod
    def load(cls, spec, **options) -> "PooledLinearAdapter":
        return cls(name=spec[len(PREFIX):] or "pooled_linear")

    @property
    def num_classes(self) -> int:
        return CLASSES

    def layers(self) -> list[str]:
        return []

    def default_layer(self) -> str:
        raise cnnviz_core.LayerNotFoundError("<a spatial feature layer>", [])

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        return self.function(np.asarray(inputs, dtype=np.float32))


@pytest.fixture
def third_party():
    """The adapter registered through the process-wide registry, as an
    installed plugin's would be; unregistered afterwards."""
    plugin = types.SimpleNamespace(cnnviz_adapters=hookimpl(lambda: [PooledLinearAdapter]))
    registry = cnnviz_core.get_registry()
    registry.register(plugin, name=PLUGIN)
    try:
        yield registry
    finally:
        registry.unregister(PLUGIN)


def forward_only(registry) -> list[str]:
    return sorted(name for name, cls in registry.methods.items() if set(cls.requires) <= {Capability.FORWARD})


def cli_statuses(listing: str, registry) -> list[tuple[str, str]]:
    """(method, first word of its status) from ``cnnviz methods --model``."""
    rows = []
    for line in listing.splitlines():
        name = line.split(maxsplit=1)[0] if line.strip() else ""
        if name in registry.methods:
            needs = ", ".join(sorted(str(c) for c in registry.methods[name].requires))
            rows.append((name, line.split("needs " + needs, 1)[1].split()[0]))
    return rows


def test_a_forward_only_adapter_is_offered_exactly_the_forward_only_methods(third_party, capsys):
    expected = forward_only(third_party)
    assert {"occlusion", "rise", "fooling_images"} <= set(expected)
    model = cnnviz_core.load_model(PREFIX + "demo")
    assert isinstance(model, PooledLinearAdapter)
    assert sorted(cnnviz_core.methods(model)) == expected
    assert cli_main(["methods", "--model", PREFIX + "demo"]) == 0
    assert sorted(name for name, status in cli_statuses(capsys.readouterr().out, third_party) if status == "runs") == expected
    refused = sorted(set(third_party.methods) - set(expected))
    with pytest.raises(cnnviz_core.CapabilityError, match="does not provide"):
        cnnviz_core.run(refused[0], model, np.zeros((1, 3, SIZE, SIZE), np.float32))


def test_every_forward_only_method_runs_on_it(third_party):
    model = PooledLinearAdapter()
    x = np.random.default_rng(0).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    pixels = np.random.default_rng(1).random((2, 3, SIZE, SIZE)).astype(np.float32)
    for name in forward_only(third_party):
        method = third_party.method(name)
        if method.kind == "metric":
            continue  # metrics score other methods' maps: tests/test_evaluation_*.py
        if method.explains == "detection":
            continue  # needs a detector and a detection target: tests/test_detection.py
        params = {**getattr(method, "demo_params", {}), **QUICK.get(name, {}), "device": "cpu"}
        if method.kind == "attribution":
            result = cnnviz_core.run(name, model, x, target=[1, "top1"], **params)
            assert result.maps.shape == (2, SIZE, SIZE) and np.isfinite(result.maps).all(), name
            assert result.classes[0] == 1 and result.classes[1] == int(np.argmax(pooled_linear(x[1:])[0])), name
        elif method.kind == "synthesis":
            result = cnnviz_core.run(name, model, pixels if method.needs_image else None, target=[0, 3], **params)
            assert result.images.shape == (2, 3, SIZE, SIZE) and np.isfinite(result.images).all(), name
            assert result.images.min() >= 0 and result.images.max() <= 1, name
        else:
            images = [np.full((SIZE, SIZE, 3), 40 * i, np.uint8) for i in range(6)]
            result = cnnviz_core.run(name, model, images, **params)
            assert all(np.isfinite(np.asarray(a, dtype=np.float64)).all() for a in result.arrays.values()
                       if np.asarray(a).dtype.kind in "fiu"), name


def test_occlusion_on_it_is_the_definition():
    model = PooledLinearAdapter()
    x = np.random.default_rng(2).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    result = cnnviz_core.run("occlusion", model, x, target=2, window=8, stride=8, device="cpu")
    clean = pooled_linear(x)[0, 2]
    expected = np.zeros((SIZE, SIZE))
    for y in (0, 8):
        for x0 in (0, 8):
            occluded = x.copy()
            occluded[:, :, y : y + 8, x0 : x0 + 8] = 0
            expected[y : y + 8, x0 : x0 + 8] = clean - pooled_linear(occluded)[0, 2]
    np.testing.assert_allclose(result.maps[0], expected, atol=1e-5)
    runtime = result.metadata["runtime"]
    assert runtime["backend"] == "pooled-numpy adapter" and runtime["how"] == "only option"
    assert "gradients capability" in result.metadata["incremental"]["reason"]
    for flag in ({"runtime": "torch"}, {"incremental": "on"}):
        with pytest.raises(cnnviz_core.InputError, match=f"--{next(iter(flag))}"):
            cnnviz_core.run("occlusion", model, x, window=8, stride=8, **flag)


def test_questions_beyond_its_capabilities_name_what_it_lacks():
    model = PooledLinearAdapter()
    for question, lacking in ((model.stage_outputs, "activations"), (model.weight_layers, "weights"),
                              (lambda: model.receptive_field("any"), "activations"), (model.cam_head, "activations")):
        with pytest.raises(AdapterError, match=f"pooled_linear.*{lacking} capability"):
            question()
    with pytest.raises(AdapterError, match="weights capability"):
        with model.with_weights({}):
            pass
    assert model.weights_digest() is None  # it cannot tell its weights apart
    assert list(model.forward_runners()) == ["adapter"]
    runner = model.forward_runners()["adapter"]()
    x = np.random.default_rng(3).normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    assert runner.takes == "numpy" and np.array_equal(runner.forward(x), pooled_linear(x))


# -- the contract's defaults, from activations and weights alone ---------------------------
def conv3x3(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Zero-padded 3x3 convolution: (B, C, H, W), (K, C, 3, 3) → (B, K, H, W)."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    return sum(np.einsum("bchw,kc->bkhw", padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]], kernel[:, :, dy, dx])
               for dy in range(3) for dx in range(3))


class NumpyCNNAdapter(PooledLinearAdapter):
    """conv (3x3, 16 px) → relu → pool (2x2 mean, 8 px) → global mean → fc, in
    numpy; it exposes its layers and weights and runs with weights replaced."""

    kind = "numpy-cnn"
    capabilities = frozenset({Capability.FORWARD, Capability.ACTIVATIONS, Capability.WEIGHTS})

    def __init__(self):
        super().__init__(name="numpy_cnn")
        angles = np.arange(4 * 3 * 9 + CLASSES * 4, dtype=np.float64)
        self._weights = {
            "conv.weight": np.sin(angles[:108]).reshape(4, 3, 3, 3).astype(np.float32),
            "fc.weight": np.cos(angles[108:]).reshape(CLASSES, 4).astype(np.float32),
            "fc.bias": np.linspace(-0.5, 0.5, CLASSES).astype(np.float32),
        }

    def layers(self) -> list[str]:
        return ["conv", "relu", "pool"]

    def default_layer(self) -> str:
        return "pool"

    def logits_and_activations(self, inputs, names):
        for name in names:
            self.check_layer(name)
        w = self._weights
        conv = conv3x3(np.asarray(inputs, np.float64), w["conv.weight"].astype(np.float64))
        relu = np.maximum(conv, 0)
        b, k, h, width = relu.shape
        pool = relu.reshape(b, k, h // 2, 2, width // 2, 2).mean(axis=(3, 5))
        logits = pool.mean(axis=(2, 3)) @ w["fc.weight"].T.astype(np.float64) + w["fc.bias"]
        outputs = {"conv": conv, "relu": relu, "pool": pool}
        return logits.astype(np.float32), {name: outputs[name].astype(np.float32) for name in names}

    def logits(self, inputs):
        return self.logits_and_activations(inputs, [])[0]

    def weights(self):
        return {name: value.copy() for name, value in self._weights.items()}

    @contextlib.contextmanager
    def with_weights(self, overrides):
        names = self.check_overrides(overrides)
        saved = dict(self._weights)
        self._weights.update({names[name]: np.asarray(value, np.float32) for name, value in overrides.items()})
        try:
            yield self
        finally:
            self._weights = saved


def test_an_activations_and_weights_adapter_gets_every_answer_from_the_defaults():
    model = NumpyCNNAdapter()
    assert model.layer_shapes(["relu", "pool"]) == {"relu": (1, 4, 16, 16), "pool": (1, 4, 8, 8)}
    assert model.stage_outputs() == ["relu", "pool"] and model.mid_level_layer() == "relu"
    assert model.classifier_input_layer() is None  # nothing says where its classifier is
    field = model.receptive_field("pool")
    assert field.method == "probe" and field.shape == (1, 4, 8, 8)
    q = np.arange(8)
    # pool unit q reads conv 2q, 2q+1, which read pixels 2q-1 .. 2q+2 (clipped to the image)
    for span in (field.rows, field.cols):
        assert np.array_equal(span.lo, np.maximum(2 * q - 1, 0)) and np.array_equal(span.hi, np.minimum(2 * q + 2, SIZE - 1))
    assert field.boxes(np.array(0), np.array(7)).tolist() == [0, 3, 13, 16]
    with pytest.raises(cnnviz_core.LayerNotFoundError):
        model.receptive_field("conv9")
    assert [(layer.name, layer.kind, layer.shape) for layer in model.weight_layers()] == [
        ("conv.weight", "conv", (4, 3, 3, 3)), ("fc.weight", "linear", (CLASSES, 4))]
    head = model.cam_head()  # the global mean of relu equals that of pool: the last one is the head's input
    assert head.feature_layer == "pool" and head.classifier == "fc.weight"
    np.testing.assert_allclose(head.bias, model.weights()["fc.bias"], atol=1e-5)
    digest = model.weights_digest()
    x = np.random.default_rng(5).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    clean = model.logits(x)
    with model.with_weights({"fc.weight": np.zeros((CLASSES, 4), np.float32)}):
        np.testing.assert_allclose(model.logits(x), np.broadcast_to(model.weights()["fc.bias"], (2, CLASSES)), atol=1e-6)
        assert model.weights_digest() != digest
    assert np.array_equal(model.logits(x), clean) and model.weights_digest() == digest


def test_every_method_its_capabilities_cover_runs_on_it(third_party):
    model = NumpyCNNAdapter()
    covered = sorted(name for name, cls in third_party.methods.items() if set(cls.requires) <= model.capabilities)
    assert {"cam", "score_cam", "filters", "top_patches", "tsne", "pruning", "occlusion"} <= set(covered)
    assert sorted(cnnviz_core.methods(model)) == covered
    x = np.random.default_rng(6).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    dataset = [(np.random.default_rng(i).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), i % CLASSES) for i in range(8)]
    for name in covered:
        method = third_party.method(name)
        if method.kind == "metric" or method.explains == "detection":
            continue  # metrics score other methods' maps; drise needs a detector (tests/test_detection.py)
        params = {**getattr(method, "demo_params", {}), **QUICK.get(name, {}), "device": "cpu"}
        if method.kind == "attribution":
            result = cnnviz_core.run(name, model, x, target=[1, "top1"], **params)
            assert result.maps.shape == (2, SIZE, SIZE) and np.isfinite(result.maps).all(), name
        elif method.kind == "synthesis":
            result = cnnviz_core.run(name, model, None, target=[0, 3], **params)
            assert result.images.shape == (2, 3, SIZE, SIZE) and np.isfinite(result.images).all(), name
        else:
            result = cnnviz_core.run(name, model, dataset if method.uses_dataset else None, **params)
            numbers = [np.asarray(a) for a in result.arrays.values() if np.asarray(a).dtype.kind == "f"]
            assert numbers and all(np.isfinite(a[~np.isnan(a)]).all() for a in numbers), name
    cam = cnnviz_core.run("cam", model, x, target=[2, 2], device="cpu")
    logit = model.logits(x)[:, 2]
    # CAM's map averages to the logit less the bias
    np.testing.assert_allclose(cam.extras["layer_map"].mean(axis=(1, 2)) + model.weights()["fc.bias"][2], logit, rtol=1e-4)


# -- torch and ONNX answer alike ----------------------------------------------------------
@pytest.fixture(scope="module")
def lite0_pair(lite0, lite0_onnx):
    return lite0, cnnviz_core.load_model(lite0_onnx)


def probe_images(count: int = 2) -> np.ndarray:
    return np.random.default_rng(4).normal(size=(count, 3, 224, 224)).astype(np.float32)


def assert_same_values(a: np.ndarray, b: np.ndarray) -> None:
    a, b = np.asarray(a).reshape(len(a), -1), np.asarray(b).reshape(len(b), -1)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=2e-4 * float(np.abs(a).max()))


@pytest.mark.slow
def test_stage_outputs_are_the_same_tensors(lite0_pair):
    torch_model, onnx_model = lite0_pair
    torch_stages, onnx_stages = torch_model.stage_outputs(), onnx_model.stage_outputs()
    assert torch_stages == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"] and len(onnx_stages) == 5
    assert onnx_model.mid_level_layer() == onnx_stages[3] and torch_model.mid_level_layer() == "blocks.4"
    x = probe_images()
    ours, theirs = torch_model.activations(x, torch_stages), onnx_model.activations(x, onnx_stages)
    for torch_stage, onnx_stage in zip(torch_stages, onnx_stages):
        assert_same_values(ours[torch_stage], theirs[onnx_stage])


@pytest.mark.slow
def test_classifier_input_and_cam_head_are_the_same(lite0_pair):
    torch_model, onnx_model = lite0_pair
    x = probe_images()
    torch_input, onnx_input = torch_model.classifier_input_layer(), onnx_model.classifier_input_layer()
    assert torch_input == "global_pool"
    assert_same_values(torch_model.activations(x, [torch_input])[torch_input], onnx_model.activations(x, [onnx_input])[onnx_input])
    torch_head, onnx_head = torch_model.cam_head(), onnx_model.cam_head()
    assert torch_head.classifier == "classifier" and torch_head.weight.shape == (1000, 1280)
    np.testing.assert_array_equal(torch_head.weight, onnx_head.weight)  # the classifier's own weights, not folded
    np.testing.assert_array_equal(torch_head.bias, onnx_head.bias)
    assert_same_values(torch_model.activations(x, [torch_head.feature_layer])[torch_head.feature_layer],
                       onnx_model.activations(x, [onnx_head.feature_layer])[onnx_head.feature_layer])


@pytest.mark.slow
def test_receptive_fields_are_the_same(lite0_pair):
    torch_model, onnx_model = lite0_pair
    for torch_layer, onnx_layer in zip(torch_model.stage_outputs()[1:4:2], onnx_model.stage_outputs()[1:4:2]):
        ours, theirs = torch_model.receptive_field(torch_layer), onnx_model.receptive_field(onnx_layer)
        assert ours.method == theirs.method == "graph" and ours.shape == theirs.shape
        assert ours.rows.same_as(theirs.rows) and ours.cols.same_as(theirs.cols)


@pytest.mark.slow
def test_weight_layers_and_running_with_replaced_weights(lite0_pair):
    torch_model, onnx_model = lite0_pair
    torch_layers, onnx_layers = torch_model.weight_layers(), onnx_model.weight_layers()
    # batch norm is folded into the ONNX convolutions: same layers, same shapes, other values
    assert [(l.name, l.kind, l.shape) for l in torch_layers] == [(l.name, l.kind, l.shape) for l in onnx_layers]
    assert not torch_layers[0].weight.flags.writeable and not onnx_layers[0].weight.flags.writeable
    x = probe_images(1)
    before = state_copy(torch_model.module)
    clean = {model: model.logits(x) for model in lite0_pair}
    for model in lite0_pair:
        stem = model.weight_layer("conv_stem", "conv")
        with model.with_weights({"conv_stem": np.zeros_like(stem.weight)}) as swapped:
            assert swapped is model
            stemless = model.logits(x)
        assert not np.allclose(stemless, clean[model], atol=1e-3)
        np.testing.assert_array_equal(model.logits(x), clean[model])  # back, bit for bit
        clean[model] = stemless
    # a zero stem leaves its (folded) bias: the two runtimes still agree
    assert_same_values(clean[torch_model], clean[onnx_model])
    assert states_equal(before, state_copy(torch_model.module))
    with pytest.raises(cnnviz_core.InputError, match="shape"):
        with torch_model.with_weights({"conv_stem": np.zeros((2, 2), np.float32)}):
            pass
    with pytest.raises(cnnviz_core.LayerNotFoundError):
        with onnx_model.with_weights({"no_such_layer": np.zeros(1, np.float32)}):
            pass
