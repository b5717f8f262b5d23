"""The style image of style transfer, from what a user can give: a file path,
``skimage:NAME`` for a photograph bundled with scikit-image (offline, which
is how ``cnnviz demo`` gets a style without a file), a PIL image, or an array
((H, W, 3) / (3, H, W) / (1, 3, H, W); uint8, or floats in [0, 1]).

Checked before any work, so a bad file is an ImageLoadError up front."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from cnnviz_core import ImageLoadError, InputError, images as imaging

SKIMAGE_PREFIX = "skimage:"
# scikit-image samples shipped inside its wheel (the others download on first use).
SKIMAGE_BUNDLED = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins", "colorwheel", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "logo", "moon", "retina", "rocket", "text",
)


class InMemoryImage:
    """A style given as a PIL image or an array, kept as RGB uint8. Its text
    form is what the run's JSON record shows instead of every pixel."""

    def __init__(self, image: Image.Image):
        self.pixels = np.asarray(imaging.to_rgb(image), dtype=np.uint8).copy()

    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels)

    def __str__(self) -> str:
        height, width = self.pixels.shape[:2]
        return f"<in-memory image {width}x{height}>"

    __repr__ = __str__


def checked_style(style, method: str):
    """The style parameter, checked: a path or ``skimage:NAME`` string that
    opens, or an in-memory image wrapped in :class:`InMemoryImage`."""
    if isinstance(style, InMemoryImage):
        return style
    if isinstance(style, (str, os.PathLike)):
        text = os.fspath(style)
        if not text:
            raise InputError(f"{method} needs a style image: --style PATH (or skimage:NAME, e.g. skimage:immunohistochemistry)")
        open_style(text, method)  # fails now, not after the content is loaded
        return text
    if isinstance(style, Image.Image):
        return InMemoryImage(style)
    if hasattr(style, "detach") and hasattr(style, "cpu"):
        style = style.detach().cpu().numpy()
    if isinstance(style, np.ndarray):
        return InMemoryImage(Image.fromarray(_array_to_uint8(style, method)))
    raise InputError(f"{method}: style must be a file path, skimage:NAME, a PIL image or an array, got {type(style).__name__}")


def open_style(style, method: str) -> Image.Image:
    """The style as an RGB PIL image."""
    if isinstance(style, InMemoryImage):
        return style.image()
    text = os.fspath(style)
    if text.startswith(SKIMAGE_PREFIX):
        return _skimage_sample(text[len(SKIMAGE_PREFIX):], method)
    return imaging.load_image(text)


def style_pixels(style, config, method: str) -> np.ndarray:
    """(3, H, W) float32 pixels in [0, 1] at the model's input size."""
    return imaging.resize(open_style(style, method), config)


def _skimage_sample(name: str, method: str) -> Image.Image:
    if name not in SKIMAGE_BUNDLED:
        raise InputError(f"{method}: skimage:{name} is not a bundled scikit-image sample; choose one of {', '.join(SKIMAGE_BUNDLED)}")
    try:
        from skimage import data
    except ImportError:
        raise InputError(f"{method}: skimage:{name} needs scikit-image: pip install scikit-image") from None
    try:
        array = getattr(data, name)()
    except Exception as error:  # a broken install: a missing or corrupt sample file
        raise ImageLoadError(f"skimage:{name}", f"scikit-image could not load it ({type(error).__name__}: {error})") from None
    return imaging.to_rgb(Image.fromarray(_array_to_uint8(np.asarray(array), method)))


def _array_to_uint8(array: np.ndarray, method: str) -> np.ndarray:
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InputError(f"{method}: a style array must be (H, W, 3), (3, H, W) or (H, W), got shape {array.shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise InputError(f"{method}: a style array must be uint8, or floats in [0, 1]")
    return np.round(array * 255).astype(np.uint8)
