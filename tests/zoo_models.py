"""THE list of timm architectures the zoo conformance test (tests/test_zoo.py)
runs every registered method on, and how one (method, architecture, adapter)
pair is run and judged. Adding an entry to ZOO adds its tests; the README's
"Models" table is generated from the same code (benchmarks/zoo_table.py).

Models are random-initialized, shrunk through timm's own model arguments
(depths, widths) so that every method runs in a fraction of a second, and fed
small inputs where the architecture allows."""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import numpy as np

NUM_CLASSES = 10
BATCH = 2


@dataclasses.dataclass(frozen=True)
class ZooModel:
    family: str  # what the entry stands for in the table
    timm_name: str
    kwargs: dict  # timm model arguments that make it tiny
    size: int  # input height and width
    what: str  # the feature it covers

    @property
    def id(self) -> str:
        return self.family


ZOO = (
    ZooModel("resnet", "resnet18", dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=8), 64,
             "residual blocks, batch norm, ReLU"),
    ZooModel("mobilenetv3", "mobilenetv3_small_050", {}, 64, "depthwise separable, hard-swish, squeeze-excite"),
    ZooModel("efficientnet", "test_efficientnet", {}, 64, "MBConv, SiLU, squeeze-excite"),
    ZooModel("densenet", "densenet121", dict(growth_rate=8, block_config=(1, 1, 1, 1)), 64, "dense concatenation"),
    # inception_v3 takes 7 s to build and 6 s a forward on 2 cores; InceptionNeXt's parallel
    # depthwise branches (square, wide, tall, identity, concatenated) are the inception idea at test cost
    ZooModel("inception_next", "inception_next_atto", dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)), 64,
             "inception-style parallel branches, concatenated"),
    ZooModel("convnext", "convnext_atto", dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)), 64,
             "7x7 depthwise, LayerNorm, GELU"),
    ZooModel("regnet", "regnetx_002", {}, 64, "grouped convolutions, designed widths"),
    ZooModel("vit", "vit_tiny_patch16_224", dict(img_size=64, depth=2, embed_dim=32, num_heads=2), 64,
             "tokens (B, N, C) with a class token"),
    ZooModel("deit", "deit_tiny_distilled_patch16_224", dict(img_size=64, depth=2, embed_dim=32, num_heads=2), 64,
             "class and distillation tokens"),
    ZooModel("swin", "swin_tiny_patch4_window7_224", dict(img_size=56, depths=(1, 1), embed_dim=16, num_heads=(1, 2)), 56,
             "windowed attention, channels-last maps (B, H, W, C)"),
    ZooModel("levit", "levit_128s", dict(img_size=64, embed_dim=(16, 32, 48), num_heads=(1, 2, 3), depth=(1, 1, 1), key_dim=8),
             64, "hybrid: convolution stem, attention stages"),
)

# Settings that keep each method to a fraction of a second on a 64-pixel model:
# few steps, few masks, wide windows. Only a method's cost changes, not what it computes.
CHEAP = {
    "occlusion": dict(window=16, stride=16),
    "rise": dict(masks=16, grid=4),
    "score_cam": dict(channels=4),
    "integrated_gradients": dict(steps=4, integration="riemann_middle"),
    "smoothgrad": dict(samples=2),
    "adversarial": dict(steps=2),
    "class_model": dict(steps=2),
    "deepdream": dict(steps=1, octaves=1, jitter=4),
    "fooling_images": dict(generations=2, population=4, parents=2, confidence=0.5),
    "inversion": dict(steps=2),
    "style_transfer": dict(steps=2, optimizer="adam", style="skimage:camera"),
    "filters": dict(max_filters=8, max_inputs=2, tile=16),
    "pruning": dict(sparsities="0,50"),
    "top_patches": dict(channels="2", top_k=2, tile=16, max_grids=1, overview_channels=2),
    "tsne": dict(perplexity=3.0, max_iter=250, pca_dims=4, thumb=8, canvas=200),
}
DATASET_SIZE = 12  # images in an analysis's dataset


def build_module(entry: ZooModel):
    """The tiny random-initialized timm module, in eval mode."""
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model(entry.timm_name, pretrained=False, num_classes=NUM_CLASSES, **entry.kwargs).eval()


def torch_model(entry: ZooModel):
    import cnnviz_core

    return cnnviz_core.load_model(build_module(entry), name=entry.family, input_size=(entry.size, entry.size),
                                  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def onnx_model(entry: ZooModel, folder: str):
    """The ONNX export of the torch model, loaded (its sidecar carries the preprocessing)."""
    import cnnviz_core
    from cnnviz_adapters.onnx_export import export_onnx

    path = os.path.join(folder, f"{entry.family}.onnx")
    if not os.path.exists(path):
        export_onnx(torch_model(entry), path)
    return cnnviz_core.load_model(path)


_REGISTRY = []


def _registry():
    if not _REGISTRY:
        from cnnviz_core.registry import Registry

        _REGISTRY.append(Registry())
    return _REGISTRY[0]


ZOO_KINDS = ("attribution", "synthesis", "analysis")  # metrics run over attribution methods (cnnviz evaluate), not alone


def method_names() -> list[str]:
    return sorted(name for name, method in _registry().methods.items() if method.kind in ZOO_KINDS)


def runs_on(name: str, adapter_kind: str) -> bool:
    """Whether the adapter kind has every capability the method requires."""
    method = _registry().methods[name]
    adapter = next(a for a in _registry().adapters if a.kind == adapter_kind)
    return set(method.requires) <= set(adapter.capabilities)


def _inputs(size: int, seed: int = 0):
    return np.random.default_rng(seed).normal(size=(BATCH, 3, size, size)).astype(np.float32)


def run_pair(name: str, adapter, size: int) -> Any:
    """One run of a method on a zoo model with its cheap settings; the result,
    or the typed error the method refused with (raised)."""
    import cnnviz_core

    method = _registry().methods[name]
    params = CHEAP.get(name, {})
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: the methods' quality warnings are expected
        if method.kind == "analysis":
            dataset = [(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), i % 3) for i in range(DATASET_SIZE)]
            return cnnviz_core.run(name, adapter, dataset, **params)
        if method.kind == "synthesis":
            if method.needs_image:
                return cnnviz_core.run(name, adapter, rng.random((BATCH, 3, size, size)).astype(np.float32),
                                       normalized=False, target=[1, 2], **params)
            return cnnviz_core.run(name, adapter, None, target=[1, 2], **params)
        if method.explains == "neuron":
            layer = adapter.default_layer()
            target = [f"{layer}:0", f"{layer}:1"]
        else:
            target = [1, "top1"]
        return cnnviz_core.run(name, adapter, _inputs(size), normalized=True, target=target, **params)


def check_result(name: str, result, size: int) -> str:
    """What the run returned, checked: maps (B, H, W) and images (B, 3, H, W)
    at the input size with finite values, an analysis's arrays finite. Returns
    a short description; AssertionError when wrong."""
    kind = _registry().methods[name].kind
    if kind == "attribution":
        assert result.maps.shape == (BATCH, size, size), result.maps.shape
        assert np.isfinite(result.maps).all()
        return "ran"
    if kind == "synthesis":
        assert result.images is not None and result.images.shape[1:] == (3, size, size), getattr(result.images, "shape", None)
        assert len(result.images) == BATCH
        assert np.isfinite(result.images).all()
        return "ran"
    arrays = getattr(result, "arrays", None) or {}
    numeric = {k: np.asarray(v) for k, v in arrays.items() if np.asarray(v).dtype.kind in "fiu"}
    assert all(np.isfinite(v).all() for v in numeric.values() if v.dtype.kind == "f"), "non-finite analysis arrays"
    assert numeric or result.pictures, "an analysis with no arrays and no pictures"
    return "ran"
