"""Faithfulness metrics on the pretrained model and real photos, at 96 px
with few steps: Grad-CAM beats a random map and its own inverse on deletion
and insertion, and torch and its ONNX export give the same scores."""

from __future__ import annotations

import numpy as np
import pytest

import cnnviz_core
from cnnviz_adapters.onnx_export import export_onnx
from cnnviz_core import MetricBatch, get_registry

pytestmark = pytest.mark.slow
SIZE = (96, 96)
PHOTOS = ["skimage:chelsea", "skimage:coffee", "skimage:astronaut"]


@pytest.fixture(scope="module")
def small_lite0():
    return cnnviz_core.load_model("efficientnet_lite0", input_size=SIZE)


@pytest.fixture(scope="module")
def evaluation(small_lite0):
    return cnnviz_core.evaluate(small_lite0, ["gradcam"], {"deletion": {"steps": 16}, "insertion": {"steps": 16}}, PHOTOS,
                                references=["random"])


@pytest.fixture(scope="module")
def gradcam_batch(small_lite0):
    inputs, names = small_lite0.prepare(PHOTOS)
    result = cnnviz_core.run("gradcam", small_lite0, inputs, normalized=True)
    return MetricBatch(inputs, result.maps, result.classes, names, "gradcam", explain=None)


def mean_score(metric: str, adapter, batch: MetricBatch, maps: np.ndarray) -> float:
    cls = get_registry().method(metric)
    inverted = MetricBatch(batch.inputs, maps, batch.classes, batch.names, "inverted", explain=None)
    return float(cls(adapter, cls.make_params(steps=16)).evaluate(inverted).scores.mean())


def test_gradcam_deletes_faster_than_a_random_map_and_its_inverse(evaluation, small_lite0, gradcam_batch):
    gradcam = evaluation.result("gradcam", "deletion").summary["mean"]
    assert gradcam < evaluation.result("reference:random", "deletion").summary["mean"]
    assert gradcam < mean_score("deletion", small_lite0, gradcam_batch, -gradcam_batch.maps)
    assert evaluation.result("gradcam", "deletion").higher_is_better is False
    curve = evaluation.result("gradcam", "deletion").curves["deletion"]
    assert curve.shape == (3, 17) and np.all(curve[:, -1] < curve[:, 0])  # everything removed: the class is gone


def test_gradcam_inserts_faster_than_a_random_map_and_its_inverse(evaluation, small_lite0, gradcam_batch):
    gradcam = evaluation.result("gradcam", "insertion").summary["mean"]
    assert gradcam > evaluation.result("reference:random", "insertion").summary["mean"]
    assert gradcam > mean_score("insertion", small_lite0, gradcam_batch, -gradcam_batch.maps)
    rows = {(row["method"], row["metric"]): row for row in evaluation.rows()}
    assert rows[("gradcam", "insertion")]["rank"] == 1 and rows[("reference:random", "insertion")]["reference"]
    assert evaluation.references == ["reference:random"]


def test_torch_and_onnx_give_the_same_faithfulness_scores(small_lite0, gradcam_batch, tmp_path):
    onnx_model = cnnviz_core.load_model(export_onnx(small_lite0, tmp_path / "lite0_96.onnx"))
    assert tuple(onnx_model.config.input_size) == SIZE
    one = MetricBatch(gradcam_batch.inputs[:1], gradcam_batch.maps[:1], gradcam_batch.classes[:1],
                      gradcam_batch.names[:1], "gradcam", explain=None)
    quick = {"deletion": {"steps": 8}, "insertion": {"steps": 8}, "pixel_flipping": {"regions": 8, "patch": 12},
             "road": {"steps": 3}, "faithfulness_correlation": {"runs": 8, "subset": 64}, "infidelity": {"samples": 4}}
    for name, params in quick.items():
        cls = get_registry().method(name)
        on_torch = cls(small_lite0, cls.make_params(runtime="default", **params)).evaluate(one)
        on_onnx = cls(onnx_model, cls.make_params(**params)).evaluate(one)
        # infidelity is in squared logit units (about 16 here): float32 runtimes agree to 1e-5 of it
        np.testing.assert_allclose(on_onnx.scores, on_torch.scores, atol=1e-4, rtol=1e-5 if name == "infidelity" else 0, err_msg=name)
        for curve in on_torch.curves:
            np.testing.assert_allclose(on_onnx.curves[curve], on_torch.curves[curve], atol=1e-4, err_msg=name)
