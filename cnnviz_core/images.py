"""Loading images safely (files and scikit-image's samples by name) and
turning every form of image input into model inputs."""

from __future__ import annotations

import os
import warnings
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import pixel_arrays
from .config import PreprocessConfig
from .errors import ImageLoadError, InputError, MethodWarning
from .pixel_arrays import NormalizedBatch

# Refuse decompression bombs outright instead of PIL's warning-then-error band.
MAX_PIXELS = 89_478_485

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}

SAMPLE_PREFIX = "skimage:"
# scikit-image's sample images shipped inside its wheel (the others download on first use).
SAMPLE_NAMES = (
    "astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee", "coins", "colorwheel",
    "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon", "page",
    "retina", "rocket", "shepp_logan_phantom", "text",
)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB with its EXIF orientation applied; every failure
    is an ImageLoadError naming the file."""
    if not os.path.exists(path):
        raise ImageLoadError(path, "no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageLoadError(path, f"{width}x{height} pixels exceeds the {MAX_PIXELS} pixel limit (decompression bomb?)")
                image.load()  # decode now: truncated data fails here, not later
                image = ImageOps.exif_transpose(image)
                return to_rgb(image)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(path, f"too large ({error})") from None
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image format PIL can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(path, f"corrupt or truncated ({error})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGBA is composited on white; grayscale, palette and CMYK converted."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def resize(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """RGB image → float32 (3, H, W) in [0, 1] at the model's input size."""
    height, width = config.input_size
    resized = image.resize((width, height), _RESAMPLE[config.interpolation])
    return np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0


def normalize(pixels: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    mean = np.asarray(config.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(config.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return ((pixels - mean) / std).astype(np.float32)


def denormalize(inputs: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    mean = np.asarray(config.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(config.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.clip(inputs * std + mean, 0.0, 1.0).astype(np.float32)


def prepare_inputs(inputs, config: PreprocessConfig, normalized: bool | None = None,
                   size_known: bool = True) -> tuple[NormalizedBatch, list[str]]:
    """Any image input → the model's normalized float32 batch (tagged as a
    :class:`NormalizedBatch`) and a name per input (file stem, sample name
    or ``inputN``).

    Raw pixels — files, ``skimage:NAME`` samples, PIL images, uint8 arrays
    or tensors (one image, a stack, or a list of them), float pixels in
    [0, 1] — are resized with the model's interpolation and normalized,
    exactly as files are. A float (B, 3, H, W) array or tensor is taken as
    normalized already unless ``normalized=False`` says it is pixels (it
    gets a MethodWarning when it looks like [0, 1] pixels and nothing was
    declared); ``normalized=True`` declares it. A normalized batch is never
    resized: one of the wrong size is refused, naming the size needed —
    where the size is the model's own (``size_known``), not a default guess
    for a bare module that takes any size."""
    found = pixel_arrays.as_array(inputs)
    if found is None:
        if normalized not in (None, False):
            raise InputError("normalized=True declares one float (B, 3, H, W) array or tensor; files, PIL images "
                             "and lists are raw pixels and are preprocessed here")
        pixels, names = pixel_inputs(inputs, config)
        return NormalizedBatch.tag(normalize(pixels, config), config), names
    array, from_torch = found
    taken = pixel_arrays.role(array, normalized)
    if taken == "pixels":
        pixels, names = pixel_inputs(inputs, config)
        return NormalizedBatch.tag(normalize(pixels, config), config), names
    batch = checked_normalized(array, config, size_known)  # refused before any warning
    if taken == "model" and pixel_arrays.looks_like_unit_pixels(batch, config):
        warnings.warn(
            f"the float input holds values in [0, 1] and was taken as already normalized, but it looks like raw "
            f"pixels (this model normalizes with mean {list(config.mean)} and std {list(config.std)}): pass "
            "normalized=False to have it preprocessed as pixels (resized and normalized), or normalized=True "
            "if it is normalized already (silences this warning); cnnviz_core.preprocess(model, images) "
            "makes a normalized batch", MethodWarning, stacklevel=4)
    return NormalizedBatch.tag(batch, config), [f"input{i}" for i in range(len(batch))]


def checked_normalized(array: np.ndarray, config: PreprocessConfig, size_known: bool = True) -> np.ndarray:
    """A normalized batch, checked: (B, 3, H, W) floats, finite, at the
    model's input size, made for this model's normalization."""
    made_for = getattr(array, "config", None)
    if made_for is not None and (made_for.mean != config.mean or made_for.std != config.std):
        raise InputError(f"this batch was normalized for another model (mean {list(made_for.mean)}, std "
                         f"{list(made_for.std)}); this one uses mean {list(config.mean)}, std {list(config.std)}: "
                         "preprocess the images for this model (cnnviz_core.preprocess(model, images)) or give them as pixels")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1] != 3:
        raise InputError(f"a normalized input must have shape (B, 3, H, W), got {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"a normalized input must be floating point, got {array.dtype}")
    if not np.isfinite(array).all():
        raise InputError("the input contains NaN or infinite values")
    height, width = config.input_size
    if size_known and tuple(array.shape[-2:]) != (height, width):
        raise InputError(
            f"the model takes {height}x{width} inputs, but this normalized batch is {array.shape[-2]}x{array.shape[-1]} "
            "and only raw pixels are resized: give the images as pixels (files, uint8 arrays, or floats in [0, 1] "
            "with normalized=False) to have them resized, or resize before normalizing")
    return np.ascontiguousarray(array, dtype=np.float32)


def pixel_inputs(inputs, config: PreprocessConfig) -> tuple[np.ndarray, list[str]]:
    """Raw images in any form → (B, 3, H, W) float32 pixels in [0, 1] at the
    model's input size, and their names. Arrays and tensors are pixels here
    whatever their dtype (uint8 0-255, floats in [0, 1])."""
    found = pixel_arrays.as_array(inputs)
    if found is not None:
        array, from_torch = found
        pixel_arrays.check_dtype(array, "the input")
        images = pixel_arrays.images_of(array, from_torch)
        pixels = [pixels_at_size(image, config, f"input {i}") for i, image in enumerate(images)]
        return np.stack(pixels), [f"input{i}" for i in range(len(pixels))]
    if isinstance(inputs, (str, os.PathLike, Image.Image)):
        inputs = [inputs]
    if not isinstance(inputs, Iterable):
        raise InputError(f"inputs must be image files, skimage:NAME, PIL images or arrays, got {type(inputs).__name__}")
    pixels, names = [], []
    for i, item in enumerate(inputs):
        pixel, name = _item_pixels(item, i, config)
        pixels.append(pixel)
        names.append(name)
    if not pixels:
        raise InputError("no inputs given")
    return np.stack(pixels), unique_names(names)


def _item_pixels(item, index: int, config: PreprocessConfig) -> tuple[np.ndarray, str]:
    """One list item, always one raw image."""
    if isinstance(item, Image.Image):
        return resize(to_rgb(item), config), f"input{index}"
    if isinstance(item, (str, os.PathLike)):
        return resize(open_image(item), config), source_name(item)
    if isinstance(item, NormalizedBatch):
        raise InputError(f"input {index} is a normalized batch inside a list; give the batch itself")
    found = pixel_arrays.as_array(item)
    if found is None:
        raise InputError(f"input {index} is a {type(item).__name__}; give image files, skimage:NAME, PIL images or arrays")
    array, from_torch = found
    pixel_arrays.check_dtype(array, f"input {index}")
    images = pixel_arrays.images_of(array, from_torch, f"input {index}")
    if len(images) != 1:
        raise InputError(f"input {index} holds {len(images)} images; a list item is one image (or give the stack itself)")
    return pixels_at_size(images[0], config, f"input {index}"), f"input{index}"


def pixels_at_size(image: np.ndarray, config: PreprocessConfig, what: str = "the input") -> np.ndarray:
    """One (H, W, C) pixel array → float32 (3, H, W) in [0, 1] at the model's
    size. uint8 goes through PIL exactly as a decoded file does; floats at the
    model's size are kept exactly, other floats are rounded to 8 bits (the
    precision of an image file) and resized the same way, so a float copy of a
    file gives the file's numbers."""
    if image.dtype == np.uint8:
        return resize(_pil_image(image), config)
    pixel_arrays.check_unit_range(image, what)
    channels = image.shape[-1]
    if channels != 4 and tuple(image.shape[:2]) == tuple(config.input_size):
        rgb = np.repeat(image, 3, axis=-1) if channels == 1 else image
        return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
    return resize(_pil_image(_to_uint8(image)), config)


def pil_image(value, what: str = "the image") -> Image.Image:
    """One image given as an array or tensor ((H, W, 3), (3, H, W), grey,
    RGBA; uint8, or floats in [0, 1]) as an RGB PIL image."""
    found = pixel_arrays.as_array(value)
    if found is None:
        raise InputError(f"{what} must be an array or tensor, got {type(value).__name__}")
    array, from_torch = found
    pixel_arrays.check_dtype(array, what)
    images = pixel_arrays.images_of(array, from_torch, what)
    if len(images) != 1:
        raise InputError(f"{what} holds {len(images)} images; give one")
    image = images[0]
    if image.dtype != np.uint8:
        pixel_arrays.check_unit_range(image, what)
        image = _to_uint8(image)
    return _pil_image(image)


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(pixels, dtype=np.float64) * 255.0).astype(np.uint8)


def _pil_image(image: np.ndarray) -> Image.Image:
    """(H, W, C) uint8 → an RGB PIL image (grey expanded, RGBA composited on white)."""
    return to_rgb(Image.fromarray(np.ascontiguousarray(image[..., 0] if image.shape[-1] == 1 else image)))


# -- scikit-image's sample photographs ---------------------------------------------
def is_sample(source) -> bool:
    return isinstance(source, str) and source.startswith(SAMPLE_PREFIX)


def open_image(source: str | os.PathLike) -> Image.Image:
    """A file path, or ``skimage:NAME`` for a photograph bundled with
    scikit-image (offline), as an RGB PIL image."""
    if is_sample(source):
        return load_sample(source[len(SAMPLE_PREFIX):])
    return load_image(source)


def source_name(source: str | os.PathLike) -> str:
    """The name outputs get: the file stem, or the sample's name (chelsea)."""
    if is_sample(source):
        return source[len(SAMPLE_PREFIX):]
    return os.path.splitext(os.path.basename(source))[0]


def load_sample(name: str) -> Image.Image:
    """scikit-image's sample ``name`` as an RGB PIL image; InputError naming
    the available samples for an unknown name, or how to install scikit-image."""
    if name not in SAMPLE_NAMES:
        raise InputError(f"skimage:{name} is not a bundled scikit-image sample; choose one of {', '.join(SAMPLE_NAMES)}")
    try:
        from skimage import data
    except ImportError:
        raise InputError(f"skimage:{name} needs scikit-image: pip install scikit-image") from None
    try:
        array = np.asarray(getattr(data, name)())
    except Exception as error:  # a broken install: a missing or corrupt sample file
        raise ImageLoadError(f"skimage:{name}", f"scikit-image could not load it ({type(error).__name__}: {error})") from None
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = _to_uint8(np.clip(array, 0.0, 1.0))  # the float samples lie in [0, 1]
    return to_rgb(Image.fromarray(array))


def preprocess(model, images) -> NormalizedBatch:
    """Raw images (files, ``skimage:NAME``, PIL images, arrays or tensors of
    pixels — a float array is pixels in [0, 1] here) → the model's normalized
    batch, declared as such: pass it to :func:`cnnviz_core.run` as it is.
    ``model``: an adapter, or anything :func:`cnnviz_core.load_model` takes."""
    from .api import load_model

    batch, _ = load_model(model).prepare(images, normalized=False)
    return batch


def unique_names(names: Sequence[str]) -> list[str]:
    """Distinct names (they become file names): a repeat gets the first free
    ``_N`` suffix, never one another input already has."""
    taken: set[str] = set()
    result = []
    for name in names:
        candidate, count = name, 0
        while candidate in taken:
            count += 1
            candidate = f"{name}_{count}"
        taken.add(candidate)
        result.append(candidate)
    return result
