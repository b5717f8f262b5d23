"""Dataset analyses in parallel: partial states from workers merge into the
state of one pass over all items (exactly for top_patches' top k and
pruning's counts; t-SNE collects the same features), and a pass on two
worker processes gives the single-process result — on the trained digits CNN."""

from __future__ import annotations

import os

import numpy as np
import pytest

import cnnviz_core
from cnnviz_core import Dataset, InputError, analysis_parallel, get_registry, state_codec
from cnnviz_core.analysis_pass import CHECKPOINT_FOLDER, _forward
from cnnviz_core.scheduler import Scheduler

from digits import as_images, digits_adapter, digits_split, write_digits_folder

SETTINGS = {
    "top_patches": {"layer": "features.2", "channels": "0-11", "top_k": 5, "tile": 8, "max_grids": 4},
    "tsne": {"perplexity": 5.0, "max_iter": 250, "max_points": 30},  # the cap cuts: the sample must agree too
    "pruning": {"sparsities": "0,50,90"},
}


@pytest.fixture(scope="module")
def digits():
    return digits_adapter()


@pytest.fixture(scope="module")
def pairs():
    _, _, pixels, labels = digits_split()
    return list(zip(as_images(pixels[:72]), (int(v) for v in labels[:72])))


def instances(adapter, source: Dataset) -> list:
    scheduler = Scheduler("cpu", progress=False)
    made = []
    for name, values in SETTINGS.items():
        cls = get_registry().method(name)
        method = cls(adapter, cls.make_params(batch_size=8, **values), scheduler)
        method.dataset = source
        method.setup()
        made.append(method)
    return made


def fed(adapter, source: Dataset, batches) -> list:
    """The three analyses after consuming ``batches`` (each batch once)."""
    methods = instances(adapter, source)
    layers = list(dict.fromkeys(layer for m in methods for layer in m.layers_needed()))
    for batch in batches:
        logits, activations = _forward(adapter, methods[0].scheduler, batch.inputs, layers)
        for method in methods:
            method.consume(batch, activations, logits)
    return methods


def through_codec(method) -> dict:
    """The state as a worker sends it (state_codec, never pickled)."""
    return state_codec.loads(state_codec.dumps({"s": method.state()}))["s"]


def assert_same_state(merged, whole) -> None:
    name = whole.name
    if name == "top_patches":
        for field in ("values", "images", "positions", "names", "crops"):
            assert np.array_equal(getattr(merged, field), getattr(whole, field)), field
        assert (whole.images >= 0).all()  # the lists are full, so the comparison covers every rank
    elif name == "pruning":
        assert np.array_equal(merged._agree, whole._agree) and np.array_equal(merged._correct, whole._correct)
        assert (merged._seen, merged._labelled) == (whole._seen, whole._labelled) == (72, 72)
    else:
        ours, theirs = merged._collected(), whole._collected()
        assert len(theirs[0]) == 30 and merged.total == whole.total == 72  # sampled down to max_points
        for got, want in zip(ours, theirs):
            assert np.array_equal(np.asarray(got), np.asarray(want))


def test_merged_partial_states_equal_one_state_over_all_items(digits, pairs):
    source = Dataset.from_spec(pairs)
    batches = list(source.batches(digits.config, 8))
    whole = fed(digits, source, batches)
    # uneven, interleaved parts (batches 0, 3, 6 and the rest), merged both ways round
    first = fed(digits, source, batches[::3])
    second = fed(digits, source, [b for i, b in enumerate(batches) if i % 3])
    empty = instances(digits, source)  # a worker that got no chunk
    for a, b, nothing, w in zip(first, second, empty, whole):
        sent_a, sent_b = through_codec(a), through_codec(b)
        a.merge(sent_b)
        assert_same_state(a, w)
        b.merge(sent_a)
        assert_same_state(b, w)
        a.merge(through_codec(nothing))
        assert_same_state(a, w)


def test_a_state_of_other_settings_is_refused(digits, pairs):
    source = Dataset.from_spec(pairs)
    top = instances(digits, source)[0]
    cls = get_registry().method("top_patches")
    other = cls(digits, cls.make_params(**{**SETTINGS["top_patches"], "top_k": 3}), top.scheduler)
    other.setup()
    with pytest.raises(cnnviz_core.CnnvizError, match="other settings"):
        top.merge(other.state())


def test_two_worker_processes_interrupted_and_resumed_give_the_single_process_results(digits, tmp_path, monkeypatch):
    folder = write_digits_folder(tmp_path / "digits", per_class=6)  # 60 labelled PNGs
    settings = {name: {**values, "batch_size": 4} for name, values in SETTINGS.items()}  # chunks of 16: 4 chunks
    one = cnnviz_core.analyze(settings, digits, folder, device="cpu")
    out = tmp_path / "out"
    updates = []
    original = analysis_parallel.Progress.set

    def interrupted(self, value):  # the run stops once the first finished chunk is merged
        updates.append(value)
        if len(updates) == 2:
            raise RuntimeError("interrupted")
        original(self, value)

    with monkeypatch.context() as patch:
        patch.setattr(analysis_parallel.Progress, "set", interrupted)
        with pytest.raises(RuntimeError, match="interrupted"):
            cnnviz_core.analyze(settings, digits, folder, device="cpu", workers=2, out=out)
    assert len(os.listdir(out / CHECKPOINT_FOLDER)) == 1  # the merged chunk is kept
    two = cnnviz_core.analyze(settings, digits, folder, device="cpu", workers=2, out=out)
    assert not os.listdir(out / CHECKPOINT_FOLDER)  # removed once the pass completed
    for name in ("top_patches", "tsne", "pruning"):
        assert set(one[name].arrays) == set(two[name].arrays)
        for key, array in one[name].arrays.items():
            assert np.array_equal(array, two[name].arrays[key], equal_nan=array.dtype.kind == "f"), (name, key)
        metadata = two[name].metadata
        assert metadata["images"] == 60 and metadata["workers"] == ["cpu", "cpu"] and metadata["chunk_size"] == 16
        assert metadata["resumed_from"] >= 16  # at least one chunk was not computed again
    assert np.array_equal(one["top_patches"].pictures["overview"], two["top_patches"].pictures["overview"])
    assert one["tsne"].facts["points"] == 30 and one["tsne"].facts["sampled"]
    assert next(digits.module.parameters()).device.type == "cpu"  # the user's model stayed where it was


def test_a_one_shot_iterator_on_two_workers_is_refused_before_any_work(digits, pairs):
    read = []

    def stream():
        for pair in pairs:
            read.append(pair)
            yield pair

    with pytest.raises(InputError, match="one-shot iterator"):
        cnnviz_core.analyze({"pruning": {}}, digits, stream(), device="cpu", workers=2)
    assert read == []


def test_the_cli_passes_workers_and_devices_to_the_pass(digits, tmp_path, monkeypatch):
    from cnnviz_core import api, cli

    asked = {}

    def analyze(params, adapter, dataset, **options):
        asked.update(options, params=params, dataset=dataset)
        return {}

    monkeypatch.setattr(cli, "_load", lambda *args, **kwargs: digits)
    monkeypatch.setattr(api, "analyze", analyze)
    folder = str(tmp_path / "images")
    for argv, workers, devices in ((["pruning"], 2, None), (["pruning", "tsne", "--devices", "cpu"], 3, "cpu")):
        code = cli.main(["run", *argv, "--model", "digits", "--dataset", folder, "--out", str(tmp_path / "out"),
                         "--workers", str(workers), "--device", "cpu", "--quiet"])
        assert code == 0 and (asked["workers"], asked["devices"]) == (workers, devices)
        assert list(asked["params"]) == [a for a in argv if not a.startswith("-") and a != "cpu"]
