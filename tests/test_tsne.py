"""tsne on real models with real labels (the digits CNN's test split, the
pretrained EfficientNet-Lite0 on photographs), its default feature layer, its
sample cap; and the shared pass: top_patches + tsne over one pass equal
separate runs, and an interrupted pass resumes to the same result."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cnnviz_core
from cnnviz_adapters.onnx_export import export_onnx
from cnnviz_adapters.torch_adapter import TorchAdapter
from cnnviz_core import Dataset, InputError
from cnnviz_core.analysis_pass import CHECKPOINT_FOLDER
from cnnviz_core.config import PreprocessConfig

from conftest import hook_total
from digits import CLASS_NAMES, as_images, digits_adapter, digits_split, write_digits_folder


@pytest.fixture(scope="module")
def digits():
    return digits_adapter()


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    return write_digits_folder(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def folder_result(digits, digits_folder):
    return cnnviz_core.run("tsne", digits, digits_folder)


def test_digits_features_separate_the_classes(digits, digits_folder, folder_result):
    """The issue's bar: trustworthiness ≥ 0.9 and kNN accuracy ≥ 0.9 on the
    360 test digits; facts recomputed independently from the layer's output."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import trustworthiness
    from sklearn.model_selection import LeaveOneOut, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    result = folder_result
    facts = result.facts
    assert facts["layer"] == "pool" and facts["points"] == 360 and facts["feature_dims"] == 64 and facts["pca_dims"] == 50
    assert facts["trustworthiness"] >= 0.9 and facts["knn_accuracy"] >= 0.9
    assert result.coordinates.shape == (360, 2) and np.isfinite(result.coordinates).all()
    _, _, _, test_y = digits_split()
    assert np.array_equal(np.sort(result.labels), np.sort(test_y))
    assert np.array_equal(result.indices, np.arange(360))
    assert result.metadata["class_names"] == CLASS_NAMES
    # independent recomputation: the features are the pool layer's output for the folder's images
    paths = [os.path.join(digits_folder, CLASS_NAMES[label], f"{name}.png") for label, name in zip(result.labels, result.names)]
    inputs, _ = digits.prepare(paths)
    features = digits.activations(inputs, ["pool"])["pool"].reshape(360, -1)
    reduced = PCA(n_components=50, random_state=0).fit_transform(features.astype(np.float64))
    assert abs(trustworthiness(reduced, result.coordinates, n_neighbors=5) - facts["trustworthiness"]) < 1e-3
    loo = cross_val_score(KNeighborsClassifier(n_neighbors=5), result.coordinates, result.labels, cv=LeaveOneOut()).mean()
    assert abs(loo - facts["knn_accuracy"]) <= 0.02  # tie-breaking differs: sklearn takes the smallest label
    assert result.pictures["scatter"].ndim == 3 and result.pictures["thumbnails"].shape == (1200, 1200, 3)
    # the thumbnail map is not blank: 360 thumbnails of white-on-black digits
    assert (result.pictures["thumbnails"] < 128).mean() > 0.05


def test_default_feature_layer_is_the_classifier_input(digits, lite0, tmp_path):
    assert digits.classifier_input_layer() == "pool"
    assert lite0.classifier_input_layer() == "global_pool"
    path = export_onnx(digits, tmp_path / "digits.onnx")
    onnx_adapter = cnnviz_core.load_model(path)
    layer = onnx_adapter.classifier_input_layer()
    x = np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(onnx_adapter.activations(x, [layer])[layer].reshape(4, -1),
                               digits.activations(x, ["pool"])["pool"].reshape(4, -1), atol=1e-5)
    conv_head = TorchAdapter(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.Flatten(1)),
                             "conv_head", PreprocessConfig(input_size=(6, 6)))
    assert conv_head.classifier_input_layer() is None  # no linear classifier


def test_onnx_embeds_like_torch(digits, tmp_path):
    _, _, test_x, test_y = digits_split()
    data = list(zip(as_images(test_x[:150]), test_y[:150]))
    path = export_onnx(digits, tmp_path / "digits.onnx")
    torch_result = cnnviz_core.run("tsne", digits, data, perplexity=20.0, max_iter=300)
    onnx_result = cnnviz_core.run("tsne", path, data, perplexity=20.0, max_iter=300)
    assert onnx_result.facts["layer"] == cnnviz_core.load_model(path).classifier_input_layer()
    assert onnx_result.facts["knn_accuracy"] >= 0.9 and onnx_result.facts["trustworthiness"] >= 0.9
    # features equal to ~1e-6 still grow into different t-SNE layouts; the neighbourhoods must agree
    from sklearn.manifold import trustworthiness

    assert abs(onnx_result.facts["pca_explained_variance"] - torch_result.facts["pca_explained_variance"]) < 1e-5
    assert trustworthiness(torch_result.coordinates, onnx_result.coordinates, n_neighbors=5) >= 0.9


def test_blocked_trustworthiness_equals_scikit_learn(monkeypatch):
    from sklearn.manifold import trustworthiness as reference

    from cnnviz_plugins.analysis.support import embedding_quality

    monkeypatch.setattr(embedding_quality, "BLOCK_ELEMENTS", 1000)  # blocks of 3 rows
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 10))
    embedding = features[:, :2] + 0.5 * rng.normal(size=(300, 2))
    for k in (1, 5, 20):
        assert embedding_quality.trustworthiness(features, embedding, k) == pytest.approx(reference(features, embedding, n_neighbors=k), abs=1e-12)


def test_model_without_linear_head_embeds_its_last_spatial_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    adapter = TorchAdapter(model.eval(), "conv_head", PreprocessConfig(input_size=(10, 10)))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(10, 10, 3), dtype=np.uint8) for _ in range(12)]
    result = cnnviz_core.run("tsne", adapter, images, perplexity=3.0, max_iter=250)
    assert result.facts["layer"] == adapter.default_layer() and result.facts["feature_dims"] == 3  # averaged over positions
    assert result.facts["knn_accuracy"] is None and result.labels.tolist() == [-1] * 12


def test_too_few_images_for_the_perplexity(digits):
    _, _, test_x, test_y = digits_split()
    data = list(zip(as_images(test_x[:10]), test_y[:10]))
    with pytest.raises(InputError, match="perplexity"):
        cnnviz_core.run("tsne", digits, data)  # known length: refused in setup, before the pass
    with pytest.raises(InputError, match="perplexity"):
        cnnviz_core.run("tsne", digits, iter(data))  # an iterator: found out at the end
    assert cnnviz_core.run("tsne", digits, data, perplexity=3.0, max_iter=250).coordinates.shape == (10, 2)
    with pytest.raises(InputError, match="thumb"):
        cnnviz_core.run("tsne", digits, data, thumb=128, canvas=64)
    assert hook_total(digits.module) == 0


def test_sample_cap_does_not_depend_on_batches(digits):
    _, _, test_x, test_y = digits_split()
    data = list(zip(as_images(test_x[:200]), test_y[:200]))
    small = cnnviz_core.run("tsne", digits, data, max_points=60, perplexity=10.0, max_iter=250, batch_size=13)
    large = cnnviz_core.run("tsne", digits, data, max_points=60, perplexity=10.0, max_iter=250, batch_size=32)
    assert small.facts["points"] == 60 and small.facts["sampled"]
    assert np.array_equal(small.indices, large.indices) and (np.diff(small.indices) > 0).all()
    assert np.array_equal(small.labels, np.asarray(test_y)[small.indices])
    np.testing.assert_allclose(small.coordinates, large.coordinates, atol=1e-3 * np.abs(large.coordinates).max())


def photo_variants(folder) -> str:
    """Four photographs, each in four versions (as is, mirrored, a centre crop,
    darker), in one class folder per photograph."""
    from skimage import data

    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        photo = Image.fromarray(getattr(data, name)())
        width, height = photo.size
        crop = photo.crop((width // 8, height // 8, width - width // 8, height - height // 8))
        darker = Image.fromarray((np.asarray(photo) * 0.7).astype(np.uint8))
        os.makedirs(os.path.join(folder, name))
        for variant, image in (("plain", photo), ("mirror", photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
                               ("crop", crop), ("dark", darker)):
            image.save(os.path.join(folder, name, f"{name}_{variant}.png"))
    return str(folder)


def test_pretrained_lite0_groups_versions_of_the_same_photo(lite0, tmp_path):
    result = cnnviz_core.run("tsne", lite0, photo_variants(tmp_path / "photos"), perplexity=3.0, neighbors=3)
    facts = result.facts
    assert facts["layer"] == "global_pool" and facts["feature_dims"] == 1280 and facts["points"] == 16
    assert facts["knn_accuracy_features"] == 1.0  # each version's 3 nearest are the other versions of its photo
    assert facts["knn_accuracy"] >= 0.75 and facts["trustworthiness"] > 0.8
    assert result.metadata["class_names"] == ["astronaut", "chelsea", "coffee", "rocket"]


# -- several analyses over one pass, and resuming ---------------------------------
class FailingItems(list):
    """Dataset items whose reading fails at item ``fail_after`` (once armed),
    whether the dataset walks them or, as it does for a sequence, indexes them."""

    fail_after: int | None = None

    def __getitem__(self, index):
        if self.fail_after is not None and index == self.fail_after:
            raise OSError("disk went away")
        return super().__getitem__(index)

    def __iter__(self):
        for count, item in enumerate(super().__iter__()):
            if self.fail_after is not None and count == self.fail_after:
                raise OSError("disk went away")
            yield item


PASS = {"top_patches": {"layer": "features.4", "top_k": 4, "max_grids": 3}, "tsne": {"perplexity": 20.0, "max_iter": 300}}


@pytest.fixture(scope="module")
def digits_items():
    _, _, test_x, test_y = digits_split()
    return FailingItems(zip(as_images(test_x[:200]), (int(y) for y in test_y[:200])))


def dataset(items) -> Dataset:
    return Dataset(items, len(items), CLASS_NAMES, "digits test split, first 200", reiterable=True)


@pytest.fixture(scope="module")
def one_pass(digits, digits_items):
    return cnnviz_core.analyze(PASS, digits, dataset(digits_items))


def assert_same(a, b) -> None:
    assert a.arrays.keys() == b.arrays.keys()
    for key in a.arrays:
        if a.arrays[key].dtype.kind == "f":
            np.testing.assert_allclose(a.arrays[key], b.arrays[key], rtol=1e-5, atol=1e-5)
        else:
            assert np.array_equal(a.arrays[key], b.arrays[key]), key
    assert a.pictures.keys() == b.pictures.keys()


def test_one_pass_equals_separate_runs(digits, digits_items, one_pass):
    for name, params in PASS.items():
        separate = cnnviz_core.run(name, digits, dataset(digits_items), **params)
        assert_same(one_pass[name], separate)
        assert one_pass[name].metadata["images"] == 200


def test_interrupted_pass_resumes_to_the_same_result(digits, digits_items, one_pass, tmp_path):
    # item 150 fails while batch 128-159 is being gathered; batch 96-127, decoded ahead on the worker
    # thread, is lost with it: batches 0-95 were folded in and saved
    digits_items.fail_after = 150
    try:
        with pytest.raises(OSError, match="disk"):
            cnnviz_core.analyze(PASS, digits, dataset(digits_items), out=tmp_path)
    finally:
        digits_items.fail_after = None
    assert len(os.listdir(tmp_path / CHECKPOINT_FOLDER)) == 1
    resumed = cnnviz_core.analyze(PASS, digits, dataset(digits_items), out=tmp_path)
    for name in PASS:
        assert resumed[name].metadata["resumed_from"] == 96 and resumed[name].metadata["images"] == 200
        assert_same(resumed[name], one_pass[name])
    np.testing.assert_array_equal(resumed["top_patches"].pictures["overview"], one_pass["top_patches"].pictures["overview"])
    assert not os.listdir(tmp_path / CHECKPOINT_FOLDER)  # removed once the run completed
    assert torch.is_grad_enabled()
