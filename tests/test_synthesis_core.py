"""The synthesis base: items from targets or images, per-item seeds that do not
depend on batching, best-so-far images handed to a sink, input checks, saving,
and the CLI path — with a toy method whose every number is known."""

from __future__ import annotations

import dataclasses
import json
import os
import types

import numpy as np
import pytest

import cnnviz_core
from cnnviz_core import Capability, InputError, hookimpl, MethodError, Synthesis, SynthesisMethod, SynthesisParams, TargetError, param
from cnnviz_core.cli import main
from cnnviz_core.registry import get_registry

from conftest import SMALL_CONFIG, small_torch_adapter


@dataclasses.dataclass
class NoiseParams(SynthesisParams):
    steps: int = param(5, "steps", minimum=1)


class NoiseClimb(SynthesisMethod):
    """Toy: per-item random image; objective rises by one per step."""

    name = "noise_climb"
    requires = frozenset({Capability.FORWARD})
    Params = NoiseParams

    def synthesize(self, images, targets):
        rngs = self.rngs(len(targets))
        pictures = np.stack([rng.random((3, *self.adapter.config.input_size)) for rng in rngs]).astype(np.float32)
        history = np.zeros((len(targets), self.params.steps))
        for step in range(self.params.steps):
            history[:, step] = step + np.arange(len(targets))
            self.step_done(step, pictures * (step + 1) / self.params.steps, history[:, step])
        return Synthesis(images=pictures, history={"objective": history})


class ImageDarkener(SynthesisMethod):
    """Toy: halves its input image; objective falls."""

    name = "image_darkener"
    requires = frozenset({Capability.FORWARD})
    needs_image = True
    higher_is_better = False

    def synthesize(self, images, targets):
        logits = self.adapter.logits(self.to_model(images * 0.5))
        return Synthesis(images=images * 0.5, history={"objective": np.stack([images.mean((1, 2, 3)), images.mean((1, 2, 3)) / 2], 1)},
                         classes=logits.argmax(1), scores=np.full(len(images), 0.5, np.float32))


class BadShape(NoiseClimb):
    name = "bad_shape"

    def synthesize(self, images, targets):
        return Synthesis(images=np.zeros((1, 3, 4, 4), np.float32), history={"objective": np.zeros((1, 1))})


@pytest.fixture
def toy_registry():
    @hookimpl
    def cnnviz_methods():
        return [NoiseClimb, ImageDarkener, BadShape]

    plugin = types.SimpleNamespace(cnnviz_methods=cnnviz_methods)
    registry = get_registry()
    registry.register(plugin, name="toy-synthesis")
    yield registry
    registry.unregister("toy-synthesis")


def test_items_from_targets_are_seeded_per_item_whatever_the_batching(toy_registry):
    model = small_torch_adapter()
    together = cnnviz_core.run("noise_climb", model, target=[1, 2, 3], batch_size=3, seed=7)
    apart = cnnviz_core.run("noise_climb", model, target=[1, 2, 3], batch_size=1, seed=7)
    other = cnnviz_core.run("noise_climb", model, target=[1, 2, 3], seed=8)
    assert together.images.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(together.images, apart.images)
    assert not np.allclose(together.images, other.images)
    assert not np.allclose(together.images[0], together.images[1])  # items differ from each other
    assert together.names == ["class1", "class2", "class3"]
    assert together.history["objective"].shape == (3, 5)


def test_best_image_so_far_reaches_the_sink(toy_registry):
    seen = {}
    result = cnnviz_core.run("noise_climb", small_torch_adapter(), target=[0, 1],
                             keep_best=lambda index, image, value, step: seen.__setitem__(index, (image, value, step)))
    assert set(seen) == {0, 1}
    image, value, step = seen[1]
    assert value == 5.0  # the last step's objective, 4 + item index 1, then the final offer repeats it
    np.testing.assert_allclose(image, result.images[1])


def test_image_methods_take_pixels_in_unit_range_and_refuse_others(toy_registry, photos):
    model = small_torch_adapter()
    pixels = np.full((2, 3, 32, 32), 0.8, np.float32)
    result = cnnviz_core.run("image_darkener", model, pixels)
    np.testing.assert_allclose(result.images, 0.4)
    assert result.inputs is not None and result.classes.shape == (2,)
    from_file = cnnviz_core.run("image_darkener", model, [photos["chelsea"]])
    assert from_file.names == ["chelsea"] and 0 <= from_file.images.min() and from_file.images.max() <= 0.5
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        cnnviz_core.run("image_darkener", model, pixels * 2)
    with pytest.raises(InputError, match="32x32"):
        cnnviz_core.run("image_darkener", model, np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(InputError, match="starts from an input image"):
        cnnviz_core.run("image_darkener", model)
    with pytest.raises(InputError, match="targets alone"):
        cnnviz_core.run("noise_climb", model, pixels, target=1)
    with pytest.raises(TargetError, match="needs a target"):
        cnnviz_core.run("noise_climb", model)


def test_a_plugin_returning_the_wrong_shape_is_named(toy_registry):
    with pytest.raises(MethodError, match="bad_shape"):
        cnnviz_core.run("bad_shape", small_torch_adapter(), target=[0, 1])


def test_save_writes_images_arrays_history_and_record(toy_registry, tmp_path):
    result = cnnviz_core.run("noise_climb", small_torch_adapter(), target=[3])
    files = {os.path.basename(f) for f in result.save(tmp_path)}
    assert {"class3.noise_climb.png", "noise_climb.images.npy", "noise_climb.history.objective.npy",
            "noise_climb.history.png", "noise_climb.json"} <= files
    record = json.loads((tmp_path / "noise_climb.json").read_text())
    assert record["kind"] == "synthesis" and record["items"][0]["objective"]["objective"] == 4.0
    assert result._repr_png_().startswith(b"\x89PNG")


def test_cli_writes_best_so_far_and_final_files(toy_registry, tmp_path, photos):
    assert main(["run", "noise_climb", "--model", "timm:resnet18", "--target", "9", "ostrich", "--steps", "2",
                 "--out", str(tmp_path / "a"), "--quiet"]) == 0
    files = set(os.listdir(tmp_path / "a"))
    assert {"class9_ostrich.noise_climb.png", "class9_ostrich_1.noise_climb.png", "noise_climb.json"} <= files
    assert "class9_ostrich.noise_climb.best.png" in files
    # an image method without --image is a usage error (exit 2), nothing written
    assert main(["run", "image_darkener", "--model", "timm:resnet18", "--out", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "b").exists()
    assert main(["run", "image_darkener", "--model", "timm:resnet18", "--image", photos["coffee"],
                 "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert "coffee.image_darkener.png" in os.listdir(tmp_path / "c")


def test_model_left_unchanged(toy_registry):
    model = small_torch_adapter()
    model.module.train()
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    cnnviz_core.run("noise_climb", model, target=[0])
    assert model.module.training
    assert all((before[k] == v).all() for k, v in model.module.state_dict().items())


def test_config_of_small_adapter_is_the_one_used():
    assert small_torch_adapter().config == SMALL_CONFIG


def test_progress_counts_every_item_of_a_batch(toy_registry, monkeypatch):
    import cnnviz_core.synthesis as synthesis

    seen = []

    class Recorder:
        def __init__(self, total, desc, enabled):
            seen.append(("total", total))

        def set(self, done):
            seen.append(done)

        def close(self):
            pass

    monkeypatch.setattr(synthesis, "Progress", Recorder)
    cnnviz_core.run("noise_climb", small_torch_adapter(), target=[0, 1, 2], batch_size=2, steps=2)
    assert seen[0] == ("total", 6)
    assert seen[1:] == [2, 4, 5, 6]  # batch of two items: 2 then 4 steps done; then the last item
