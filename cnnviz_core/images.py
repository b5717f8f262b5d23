"""Loading images safely and turning them into model inputs."""

from __future__ import annotations

import os
import warnings
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import PreprocessConfig
from .errors import ImageLoadError, InputError

# Refuse decompression bombs outright instead of PIL's warning-then-error band.
MAX_PIXELS = 89_478_485

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


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


def prepare_inputs(inputs, config: PreprocessConfig) -> tuple[np.ndarray, list[str]]:
    """Paths, PIL images or a preprocessed (B, 3, H, W) array/tensor → the
    normalized float32 batch and a name per input (file stem or index)."""
    if hasattr(inputs, "detach") and hasattr(inputs, "cpu"):  # torch tensor
        inputs = inputs.detach().cpu().numpy()
    if isinstance(inputs, np.ndarray):
        batch = _check_array(inputs, config)
        return batch, [f"input{i}" for i in range(len(batch))]
    if isinstance(inputs, (str, os.PathLike, Image.Image)):
        inputs = [inputs]
    if not isinstance(inputs, Iterable):
        raise InputError(f"inputs must be paths, PIL images or a (B, 3, H, W) array, got {type(inputs).__name__}")
    pixels, names = [], []
    for i, item in enumerate(inputs):
        if isinstance(item, Image.Image):
            image, name = to_rgb(item), f"input{i}"
        elif isinstance(item, (str, os.PathLike)):
            image, name = load_image(item), os.path.splitext(os.path.basename(item))[0]
        else:
            raise InputError(f"input {i} is a {type(item).__name__}; give paths, PIL images or one (B, 3, H, W) array")
        pixels.append(resize(image, config))
        names.append(name)
    if not pixels:
        raise InputError("no inputs given")
    return normalize(np.stack(pixels), config), unique_names(names)


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


def _check_array(array: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1] != 3:
        raise InputError(f"a preprocessed input must have shape (B, 3, H, W), got {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"a preprocessed input must be floating point (normalized), got {array.dtype}")
    if not np.isfinite(array).all():
        raise InputError("the input contains NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)
