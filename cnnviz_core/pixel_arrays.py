"""Arrays and tensors given as images: which hold raw pixels and which a
normalized batch, and each image's pixels as (H, W, C).

The rules, the same for every method kind:

- ``uint8`` is always pixels (0–255): an (H, W, 3) photo, a stack of them,
  a ``torchvision.io.read_image`` tensor (3, H, W).
- float pixels lie in [0, 1] (``ToTensor`` style).
- a float array in the model's layout, (B, 3, H, W) or (3, H, W), is what
  the model takes: normalized for attribution and analysis, pixels in [0, 1]
  at the model's size for synthesis — unless the caller declares it
  (``normalized=True`` / ``False``). Any other float layout, (H, W, 3) for
  instance, cannot be a model input and is pixels.
- :class:`NormalizedBatch` (what :func:`cnnviz_core.preprocess` returns)
  declares itself normalized.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import PreprocessConfig
from .errors import InputError

CHANNEL_COUNTS = (1, 3, 4)  # grey, RGB, RGBA


class NormalizedBatch(np.ndarray):
    """A (B, 3, H, W) float32 batch normalized for a model (``config``): a
    model input that says so. Slices stay normalized batches; anything
    computed from one (``batch + noise``) is a plain array again, since it
    may no longer be what the model's preprocessing made."""

    config: PreprocessConfig | None

    @classmethod
    def tag(cls, batch: np.ndarray, config: PreprocessConfig) -> "NormalizedBatch":
        tagged = np.asarray(batch).view(cls)
        tagged.config = config
        return tagged

    def __array_finalize__(self, obj) -> None:
        self.config = getattr(obj, "config", None)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = tuple(np.asarray(x) if isinstance(x, NormalizedBatch) else x for x in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(np.asarray(x) if isinstance(x, NormalizedBatch) else x for x in kwargs["out"])
        return getattr(ufunc, method)(*plain, **kwargs)

    def __reduce__(self):  # keep the config through pickling (worker processes)
        rebuild, arguments, state = super().__reduce__()
        return rebuild, arguments, (state, self.config)

    def __setstate__(self, state) -> None:
        array_state, self.config = state
        super().__setstate__(array_state)


def as_array(value: Any) -> tuple[np.ndarray, bool] | None:
    """A numpy array or torch tensor → (the array, whether it came from
    torch); anything else → None. Tensors are detached and copied to the CPU."""
    if isinstance(value, np.ndarray):
        return value, False
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        return value.detach().cpu().numpy(), True
    return None


def in_model_layout(array: np.ndarray) -> bool:
    """(B, 3, H, W) or (3, H, W): the layout a model takes."""
    return (array.ndim == 4 and array.shape[1] == 3) or (array.ndim == 3 and array.shape[0] == 3)


def check_dtype(array: np.ndarray, what: str) -> None:
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{what} is {array.dtype}; give uint8 pixels (0-255), float pixels in [0, 1], "
                         "or a normalized float (B, 3, H, W) batch")


def role(array: np.ndarray, normalized: bool | None, what: str = "the input") -> str:
    """How an array is taken: ``"normalized"`` (declared), ``"pixels"``, or
    ``"model"`` (an undeclared float batch in the model's layout)."""
    if normalized not in (None, True, False):
        raise InputError(f"normalized must be True, False or None, got {normalized!r}")
    if isinstance(array, NormalizedBatch):
        if normalized is False:
            raise InputError(f"{what} came from cnnviz_core.preprocess() and is normalized already; drop normalized=False")
        return "normalized"
    check_dtype(array, what)
    if normalized is False:
        return "pixels"
    if array.dtype == np.uint8 or not in_model_layout(array):
        if normalized:
            kind = "uint8 pixels" if array.dtype == np.uint8 else f"shaped {tuple(array.shape)}"
            raise InputError(f"{what} is {kind}, not a normalized batch: a normalized input is a float (B, 3, H, W) "
                             "array; drop normalized=True to have pixels preprocessed")
        return "pixels"
    return "normalized" if normalized else "model"


def images_of(array: np.ndarray, from_torch: bool, what: str = "the input") -> list[np.ndarray]:
    """The images of a pixel array, each (H, W, C) with C in 1, 3, 4: a batch
    (4-D) is split; (H, W) is grey."""
    if array.ndim == 4:
        return [channels_last(image, from_torch, f"{what} (image {i})") for i, image in enumerate(array)]
    if array.ndim in (2, 3):
        return [channels_last(array, from_torch, what)]
    raise InputError(f"{what} has shape {tuple(array.shape)}; give an image (H, W, 3) or (3, H, W), "
                     "or a batch (B, H, W, 3) or (B, 3, H, W)")


def channels_last(image: np.ndarray, from_torch: bool, what: str) -> np.ndarray:
    """One image as (H, W, C). Where both ends could be channels (a 3-pixel
    wide image) torch's convention (channels first) or numpy's (last) decides."""
    if image.ndim == 2:
        return image[..., None]
    first, last = image.shape[0] in CHANNEL_COUNTS, image.shape[-1] in CHANNEL_COUNTS
    if first and (not last or from_torch):
        return np.moveaxis(image, 0, -1)
    if last:
        return image
    raise InputError(f"{what} has shape {tuple(image.shape)}: no axis of 1, 3 or 4 channels; "
                     "give (H, W, 3) or (3, H, W)")


def check_unit_range(array: np.ndarray, what: str) -> None:
    """Float pixels must be finite and lie in [0, 1]."""
    if not np.isfinite(array).all():
        raise InputError(f"{what} contains NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise InputError(f"{what}: pixels must be uint8, or floats in [0, 1] (got floats from {low:.3g} to {high:.3g}); "
                         "divide 0-255 floats by 255; a normalized batch goes as one (B, 3, H, W) array with normalized=True")


def looks_like_unit_pixels(array: np.ndarray, config: PreprocessConfig) -> bool:
    """Values spread over part of [0, 1] where the model's normalization would
    move [0, 1] elsewhere: raw pixels, probably, not a normalized batch. A
    constant batch (zeros: the mean image, a usual baseline) says nothing."""
    moves = any(m != 0.0 for m in config.mean) or any(s != 1.0 for s in config.std)
    low, high = float(array.min()), float(array.max())
    return moves and 0.0 <= low < high <= 1.0
