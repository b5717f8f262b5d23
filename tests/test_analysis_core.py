"""The analysis base: datasets from folders, paths and iterables; one shared
forward per batch for several analyses; unreadable images skipped and listed;
an interrupted pass resumes from its checkpoint; results saved; the CLI path."""

from __future__ import annotations

import dataclasses
import json
import os
import types

import numpy as np
import pytest

import cnnviz_core
from cnnviz_core import Analysis, AnalysisMethod, AnalysisParams, Capability, Dataset, InputError, hookimpl, param
from cnnviz_core.cli import main
from cnnviz_core.registry import get_registry

from digits import as_images, digits_adapter, digits_split, write_digits_folder


@dataclasses.dataclass
class MeanParams(AnalysisParams):
    layer: str = param("pool", "layer whose mean activation is accumulated")


class ChannelMeans(AnalysisMethod):
    """Toy: the per-channel mean of a layer over the dataset, and label counts."""

    name = "channel_means"
    requires = frozenset({Capability.ACTIVATIONS})
    Params = MeanParams
    state_attributes = ("total", "count", "labels_seen")
    batch_hint = 16

    def setup(self):
        self.adapter.check_layer(self.params.layer)
        self.total, self.count, self.labels_seen = 0.0, 0, np.zeros(11, np.int64)

    def layers_needed(self):
        return [self.params.layer]

    def consume(self, batch, activations, logits):
        values = activations[self.params.layer].reshape(len(batch.inputs), -1)
        self.total = self.total + values.sum(0)
        self.count += len(values)
        np.add.at(self.labels_seen, batch.labels, 1)  # -1 (no label) lands in the last slot

    def finish(self):
        return Analysis(arrays={"means": self.total / self.count, "labels": self.labels_seen},
                        facts={"count": self.count})


class Accuracy(AnalysisMethod):
    """Toy: top-1 accuracy from the shared logits."""

    name = "toy_accuracy"
    requires = frozenset({Capability.FORWARD})
    needs_logits = True
    state_attributes = ("right", "seen")

    def setup(self):
        self.right = self.seen = 0

    def consume(self, batch, activations, logits):
        self.right += int((logits.argmax(1) == batch.labels).sum())
        self.seen += len(logits)

    def finish(self):
        return Analysis(facts={"accuracy": self.right / self.seen})


@pytest.fixture
def toy_registry():
    @hookimpl
    def cnnviz_methods():
        return [ChannelMeans, Accuracy]

    registry = get_registry()
    registry.register(types.SimpleNamespace(cnnviz_methods=cnnviz_methods), name="toy-analysis")
    yield registry
    registry.unregister("toy-analysis")


@pytest.fixture(scope="module")
def digits():
    return digits_adapter()


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    return write_digits_folder(tmp_path_factory.mktemp("digits"), per_class=6)


def test_folder_dataset_reads_class_subfolders_as_labels(digits_folder, digits):
    dataset = Dataset.from_spec(digits_folder)
    assert dataset.class_names == [str(d) for d in range(10)] and len(dataset) == 60
    batches = list(dataset.batches(digits.config, 25))
    assert [len(b.inputs) for b in batches] == [25, 25, 10]
    labels = np.concatenate([b.labels for b in batches])
    assert (np.bincount(labels) == 6).all()
    assert batches[0].inputs.shape == (25, 3, 8, 8) and batches[0].pixels.max() <= 1.0


def test_iterables_of_images_and_pairs(digits):
    _, _, test_x, test_y = digits_split()
    pairs = Dataset.from_spec(list(zip(as_images(test_x[:5]), test_y[:5])))
    assert np.concatenate([b.labels for b in pairs.batches(digits.config, 4)]).tolist() == test_y[:5].tolist()
    one_shot = Dataset.from_spec(iter(as_images(test_x[:3])))
    assert one_shot.length is None and not one_shot.reiterable
    assert [b.labels.tolist() for b in one_shot.batches(digits.config, 8)] == [[-1, -1, -1]]
    with pytest.raises(InputError, match="not a folder"):
        Dataset.from_spec("/no/such/folder")
    with pytest.raises(InputError, match="not one array"):
        Dataset.from_spec(np.zeros((4, 8, 8, 3)))


def test_analyses_share_one_forward_per_batch_and_match_separate_runs(toy_registry, digits, digits_folder, monkeypatch):
    forwards = []
    original = digits.logits_and_activations
    monkeypatch.setattr(digits, "logits_and_activations", lambda inputs, names: forwards.append(len(inputs)) or original(inputs, names))
    together = cnnviz_core.analyze(["channel_means", "toy_accuracy"], digits, digits_folder)
    assert forwards == [16, 16, 16, 12]  # 60 images, each batch run once for both analyses
    monkeypatch.undo()
    alone = cnnviz_core.run("channel_means", digits, digits_folder)
    np.testing.assert_allclose(together["channel_means"].means, alone.means, rtol=1e-6)
    assert together["toy_accuracy"].facts["accuracy"] >= 0.9
    assert together["channel_means"].metadata["images"] == 60


def test_unreadable_images_are_skipped_and_listed(toy_registry, digits, digits_folder, tmp_path):
    paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(digits_folder) for f in fs)[:5]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.warns(cnnviz_core.MethodWarning, match="broken"):
        result = cnnviz_core.run("channel_means", digits, [*paths, str(broken)])
    assert result.facts["count"] == 5
    assert result.metadata["skipped"][0]["item"].endswith("broken.png")
    with pytest.raises(InputError, match="could be read"), pytest.warns(cnnviz_core.MethodWarning):
        cnnviz_core.run("channel_means", digits, [str(broken)])


def test_an_interrupted_pass_resumes_from_its_checkpoint(toy_registry, digits, digits_folder, tmp_path, monkeypatch):
    expected = cnnviz_core.run("channel_means", digits, digits_folder)
    calls = {"n": 0}
    original = ChannelMeans.consume

    def failing_consume(self, batch, activations, logits):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        original(self, batch, activations, logits)

    monkeypatch.setattr(ChannelMeans, "consume", failing_consume)
    with pytest.raises(KeyboardInterrupt):
        cnnviz_core.run("channel_means", digits, digits_folder, out=tmp_path)
    assert os.listdir(tmp_path / ".cnnviz-resume")
    monkeypatch.setattr(ChannelMeans, "consume", original)
    resumed = cnnviz_core.run("channel_means", digits, digits_folder, out=tmp_path)
    assert resumed.metadata["resumed_from"] == 32  # two batches of 16 were kept
    np.testing.assert_allclose(resumed.means, expected.means, rtol=1e-6)
    assert resumed.facts["count"] == 60
    assert not os.listdir(tmp_path / ".cnnviz-resume")  # removed once complete


def test_wrong_layer_is_refused_before_any_work(toy_registry, digits, digits_folder):
    with pytest.raises(cnnviz_core.LayerNotFoundError):
        cnnviz_core.run("channel_means", digits, digits_folder, layer="nope")
    with pytest.raises(InputError, match="dataset"):
        cnnviz_core.run("channel_means", digits)


def test_cli_runs_several_analyses_over_one_pass(toy_registry, digits_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(cnnviz_core.api, "load_model", lambda spec, **options: digits_adapter())
    out = tmp_path / "out"
    assert main(["run", "channel_means", "toy_accuracy", "--model", "digits", "--dataset", digits_folder,
                 "--layer", "features.4", "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "channel_means.json").read_text())
    assert record["params"]["layer"] == "features.4" and record["facts"]["count"] == 60
    assert np.load(out / "channel_means.means.npy").shape == (32 * 4 * 4,)
    assert json.loads((out / "toy_accuracy.json").read_text())["facts"]["accuracy"] >= 0.9
    # a missing --dataset is a usage error; an attribution method cannot join the pass
    assert main(["run", "channel_means", "toy_accuracy", "--model", "digits", "--out", str(out)]) == 2
    assert main(["run", "channel_means", "gradcam", "--model", "digits", "--dataset", digits_folder, "--out", str(out)]) == 2
