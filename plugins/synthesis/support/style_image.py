"""The style image of style transfer, from what a user can give: a file path,
``skimage:NAME`` for a photograph bundled with scikit-image (offline, which
is how ``cnnviz demo`` gets a style without a file), a PIL image, or an array
or tensor ((H, W, 3) / (3, H, W) / (1, 3, H, W); uint8, or floats in [0, 1]).
Files, samples and arrays are read by ``cnnviz_core.images``, as every image
input is.

Checked before any work, so a bad file is an ImageLoadError up front."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from cnnviz_core import ImageLoadError, InputError, images as imaging


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
    if isinstance(style, np.ndarray) or hasattr(style, "detach"):  # an array or tensor, read like any image input
        return InMemoryImage(_named(method, lambda: imaging.pil_image(style, "the style array")))
    raise InputError(f"{method}: style must be a file path, skimage:NAME, a PIL image or an array, got {type(style).__name__}")


def open_style(style, method: str) -> Image.Image:
    """The style as an RGB PIL image."""
    if isinstance(style, InMemoryImage):
        return style.image()
    return _named(method, lambda: imaging.open_image(os.fspath(style)))


def style_pixels(style, config, method: str) -> np.ndarray:
    """(3, H, W) float32 pixels in [0, 1] at the model's input size."""
    return imaging.resize(open_style(style, method), config)


def _named(method: str, read):
    """What ``read()`` returns; its InputError (not an unreadable file's,
    which names the file) names the method."""
    try:
        return read()
    except ImageLoadError:
        raise
    except InputError as error:
        raise InputError(f"{method}: {error}") from None
