"""Resumable analysis passes: a checkpoint is keyed by the model's weights too
(``--weights A`` never resumes from ``--weights B``'s state), it is an .npz
plus JSON read without pickle (a planted pickle is never unpickled), a
checkpoint that cannot be read or was written for another run is ignored with
a warning, and resuming still gives the uninterrupted result."""

from __future__ import annotations

import dataclasses
import os
import pickle
import types

import numpy as np
import pytest
import torch

import cnnviz_core
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core import Analysis, AnalysisMethod, AnalysisParams, Capability, MethodWarning, hookimpl, param, state_codec
from cnnviz_core.analysis_pass import CHECKPOINT_FOLDER
from cnnviz_core.cli import main
from cnnviz_core.registry import get_registry

from digits import CLASS_NAMES, DIGITS_CONFIG, DigitsNet, trained_digits_net, write_digits_folder


@dataclasses.dataclass
class ProbeParams(AnalysisParams):
    layer: str = param("pool", "layer whose activations are summed")


class ResumeProbe(AnalysisMethod):
    """Sums a layer's activations per label; its state mixes every kind of
    value the checkpoint codec takes (arrays, an object array of strings, a
    dict with integer keys, tuples, numbers)."""

    name = "resume_probe"
    requires = frozenset({Capability.ACTIVATIONS})
    Params = ProbeParams
    state_attributes = ("sums", "last_names", "per_label", "count", "first")
    batch_hint = 16

    def setup(self):
        self.sums = np.zeros(64)
        self.last_names = np.full(2, "", dtype=object)
        self.per_label: dict[int, np.ndarray] = {}
        self.count, self.first = 0, None

    def layers_needed(self):
        return [self.params.layer]

    def consume(self, batch, activations, logits):
        values = activations[self.params.layer].reshape(len(batch.inputs), -1).astype(np.float64)
        self.sums = self.sums + values.sum(0)
        for label, row in zip(batch.labels.tolist(), values):
            self.per_label[label] = self.per_label.get(label, np.zeros(64)) + row
        self.last_names = np.array(batch.names[-2:], dtype=object)
        self.first = self.first or (batch.names[0], np.float32(values[0, 0]))
        self.count += len(values)

    def finish(self):
        labels = sorted(self.per_label)
        return Analysis(arrays={"sums": self.sums, "per_label": np.stack([self.per_label[k] for k in labels])},
                        facts={"count": self.count, "labels": labels, "last": list(self.last_names), "first": self.first[0]})


@pytest.fixture
def probe_registered():
    @hookimpl
    def cnnviz_methods():
        return [ResumeProbe]

    registry = get_registry()
    registry.register(types.SimpleNamespace(cnnviz_methods=cnnviz_methods), name="resume-probe")
    yield
    registry.unregister("resume-probe")


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, str]:
    """Two different state dicts of the digits CNN, saved with torch.save."""
    folder = tmp_path_factory.mktemp("weights")
    state_a = trained_digits_net().state_dict()
    state_b = {k: v.clone() for k, v in state_a.items()}
    state_b["features.5.weight"] *= 1.5  # a differently trained net, as far as the pass can tell
    paths = {"A": str(folder / "a.pth"), "B": str(folder / "b.pth")}
    torch.save(state_a, paths["A"])
    torch.save(state_b, paths["B"])
    return paths


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    return write_digits_folder(tmp_path_factory.mktemp("digits"), per_class=6)  # 60 images: batches of 16


def model(weights: str) -> TorchAdapter:
    adapter = cnnviz_core.load_model(DigitsNet(), weights=weights, labels=CLASS_NAMES)
    adapter.config = DIGITS_CONFIG
    return adapter


def interrupted(monkeypatch, *args, **kwargs):
    """Run the probe and stop it while its third batch is folded in."""
    calls = {"n": 0}
    original = ResumeProbe.consume

    def consume(self, batch, activations, logits):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        original(self, batch, activations, logits)

    monkeypatch.setattr(ResumeProbe, "consume", consume)
    with pytest.raises(KeyboardInterrupt):
        cnnviz_core.run("resume_probe", *args, **kwargs)
    monkeypatch.setattr(ResumeProbe, "consume", original)


def assert_same(result, expected):
    np.testing.assert_allclose(result.sums, expected.sums, rtol=1e-6)
    np.testing.assert_allclose(result.per_label, expected.per_label, rtol=1e-6)
    assert result.facts == expected.facts


def checkpoints(out) -> list[str]:
    folder = os.path.join(out, CHECKPOINT_FOLDER)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_other_weights_never_resume_and_the_same_weights_do(probe_registered, weight_files, digits_folder, tmp_path, monkeypatch):
    expected = {k: cnnviz_core.run("resume_probe", model(path), digits_folder) for k, path in weight_files.items()}
    assert not np.allclose(expected["A"].sums, expected["B"].sums)  # the two nets do differ
    interrupted(monkeypatch, model(weight_files["A"]), digits_folder, out=tmp_path)
    assert len(checkpoints(tmp_path)) == 1
    with_b = cnnviz_core.run("resume_probe", model(weight_files["B"]), digits_folder, out=tmp_path)
    assert with_b.metadata["resumed_from"] == 0
    assert_same(with_b, expected["B"])
    with_a = cnnviz_core.run("resume_probe", model(weight_files["A"]), digits_folder, out=tmp_path)
    assert with_a.metadata["resumed_from"] == 32  # A's own checkpoint: two batches of 16
    assert_same(with_a, expected["A"])
    assert checkpoints(tmp_path) == []


def test_cli_weights_flag_keys_the_checkpoint(probe_registered, weight_files, digits_folder, tmp_path, monkeypatch):
    load = cnnviz_core.api.load_model  # passes adapters through
    monkeypatch.setattr(cnnviz_core.api, "load_model", lambda spec, **options: load(spec) if isinstance(spec, TorchAdapter)
                        else model(options["weights"]))
    out = tmp_path / "out"
    # --weights goes with timm:NAME; the stand-in loader builds the digits CNN from the weights given
    argv = ["run", "resume_probe", "--model", "timm:digits", "--dataset", digits_folder, "--out", str(out), "--quiet"]
    calls = {"n": 0}
    original = ResumeProbe.consume

    def consume(self, batch, activations, logits):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        original(self, batch, activations, logits)

    monkeypatch.setattr(ResumeProbe, "consume", consume)
    assert main([*argv, "--weights", weight_files["A"]]) == 130  # interrupted
    monkeypatch.setattr(ResumeProbe, "consume", original)
    assert len(checkpoints(out)) == 1
    assert main([*argv, "--weights", weight_files["B"]]) == 0
    assert len(checkpoints(out)) == 1  # B started over and finished; A's checkpoint is untouched
    expected = cnnviz_core.run("resume_probe", model(weight_files["B"]), digits_folder)
    np.testing.assert_allclose(np.load(out / "resume_probe.sums.npy"), expected.sums, rtol=1e-6)


class Planted:
    """Unpickling this creates a file: the proof that a pickle was executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_is_never_unpickled(probe_registered, weight_files, digits_folder, tmp_path, monkeypatch):
    expected = cnnviz_core.run("resume_probe", model(weight_files["A"]), digits_folder)
    interrupted(monkeypatch, model(weight_files["A"]), digits_folder, out=tmp_path)
    (name,) = checkpoints(tmp_path)
    marker = tmp_path / "pickle-was-executed"
    folder = tmp_path / CHECKPOINT_FOLDER
    (folder / name).write_bytes(pickle.dumps(Planted(str(marker))))
    stem = os.path.splitext(name)[0]
    for legacy in (f"{stem}.pkl", f"{stem}.npz.pkl"):  # names an older cnnviz might have read
        (folder / legacy).write_bytes(pickle.dumps(Planted(str(marker))))
    with pytest.warns(MethodWarning, match="ignoring the checkpoint"):
        result = cnnviz_core.run("resume_probe", model(weight_files["A"]), digits_folder, out=tmp_path)
    assert not marker.exists()
    assert result.metadata["resumed_from"] == 0
    assert_same(result, expected)


def test_a_checkpoint_written_for_another_run_is_ignored(probe_registered, weight_files, digits_folder, tmp_path, monkeypatch):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    interrupted(monkeypatch, model(weight_files["A"]), digits_folder, out=out_a)
    interrupted(monkeypatch, model(weight_files["B"]), digits_folder, out=out_b)
    (name_a,), (name_b,) = checkpoints(out_a), checkpoints(out_b)
    # A's checkpoint put where B's run looks for its own
    (out_b / CHECKPOINT_FOLDER / name_b).write_bytes((out_a / CHECKPOINT_FOLDER / name_a).read_bytes())
    with pytest.warns(MethodWarning, match="written for other"):
        result = cnnviz_core.run("resume_probe", model(weight_files["B"]), digits_folder, out=out_b)
    assert result.metadata["resumed_from"] == 0
    assert_same(result, cnnviz_core.run("resume_probe", model(weight_files["B"]), digits_folder))


def test_a_truncated_checkpoint_is_ignored(probe_registered, weight_files, digits_folder, tmp_path, monkeypatch):
    interrupted(monkeypatch, model(weight_files["A"]), digits_folder, out=tmp_path)
    (name,) = checkpoints(tmp_path)
    path = tmp_path / CHECKPOINT_FOLDER / name
    path.write_bytes(path.read_bytes()[:200])
    with pytest.warns(MethodWarning, match="ignoring the checkpoint"):
        result = cnnviz_core.run("resume_probe", model(weight_files["A"]), digits_folder, out=tmp_path)
    assert result.metadata["resumed_from"] == 0 and result.facts["count"] == 60


# -- the codec ------------------------------------------------------------------
def test_codec_round_trips_the_supported_values():
    names = np.full((2, 2), "", dtype=object)
    names[0, 1] = "a longer name than the others"
    record = {"n": 3, "x": 2.5, "nan": float("nan"), "s": "text", "none": None, "flag": True,
              "arrays": [np.arange(6, dtype=np.int16).reshape(2, 3), np.zeros((0, 4), np.float32)],
              "names": names, "scalar": np.float32(1.25), "pair": (1, "b"), "by_label": {3: np.ones(2), "k": [1, 2]}}
    back = state_codec.loads(state_codec.dumps(record))
    assert back["n"] == 3 and back["x"] == 2.5 and np.isnan(back["nan"]) and back["s"] == "text" and back["none"] is None
    assert back["flag"] is True and back["pair"] == (1, "b") and back["by_label"]["k"] == [1, 2]
    assert back["arrays"][0].dtype == np.int16 and back["arrays"][0].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert back["arrays"][1].shape == (0, 4) and back["arrays"][1].dtype == np.float32
    assert back["names"].dtype == object and back["names"].tolist() == names.tolist()
    back["names"][1, 1] = "x" * 100  # still an object array: longer strings fit
    assert back["scalar"].dtype == np.float32 and back["scalar"] == np.float32(1.25)
    np.testing.assert_array_equal(back["by_label"][3], np.ones(2))


@pytest.mark.parametrize("value", [{1, 2}, np.array([object(), 1], dtype=object), {(1, 2): 3}, torch.zeros(2)])
def test_codec_refuses_what_it_cannot_write_safely(value):
    with pytest.raises(state_codec.StateError):
        state_codec.dumps({"state": value})


def test_a_state_the_codec_cannot_write_only_costs_resumability(probe_registered, weight_files, digits_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(ResumeProbe, "state_attributes", ("sums", "unsupported"))
    monkeypatch.setattr(ResumeProbe, "unsupported", {1, 2}, raising=False)
    calls = {"n": 0}
    original = ResumeProbe.consume

    def consume(self, batch, activations, logits):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        original(self, batch, activations, logits)

    monkeypatch.setattr(ResumeProbe, "consume", consume)
    with pytest.raises(KeyboardInterrupt), pytest.warns(MethodWarning, match="cannot be resumed"):
        cnnviz_core.run("resume_probe", model(weight_files["A"]), digits_folder, out=tmp_path)
    assert checkpoints(tmp_path) == []
