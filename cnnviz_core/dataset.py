"""Datasets for the analyses and dataset runs: a folder of images (class
subfolders are the labels), a list file (one path per line, optionally a
label after it), a glob pattern, a list of paths, or any iterable of images or
(image, label) pairs.

Images are decoded only when their batch is reached, so memory is bounded by
one batch (plus one prefetched) whatever the dataset's size. A file that cannot
be read is skipped with a warning and listed in ``skipped``; a run on a dataset
where nothing can be read is an error."""

from __future__ import annotations

import dataclasses
import glob
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from . import images as imaging
from .config import PreprocessConfig
from .errors import ImageLoadError, InputError, MethodWarning

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


@dataclasses.dataclass
class DatasetBatch:
    """One streamed batch: normalized inputs, their [0, 1] pixels, labels
    (-1 where unknown), names, and the items' positions in the dataset."""

    inputs: np.ndarray  # (b, 3, H, W) float32, normalized
    pixels: np.ndarray  # (b, 3, H, W) float32 in [0, 1]
    labels: np.ndarray  # (b,) int64, -1 = no label
    names: list[str]
    indices: np.ndarray  # (b,) int64: position in the dataset (skipped items keep their number)


class Dataset:
    """A source of images with optional labels. Build one with
    :meth:`from_spec`; iterate with :meth:`batches`."""

    def __init__(self, items: Iterable[tuple[Any, int]], length: int | None, class_names: Sequence[str] | None,
                 description: str, reiterable: bool):
        self._items = items
        self.length = length
        self.class_names = list(class_names) if class_names is not None else None
        self.description = description
        self.reiterable = reiterable
        self.skipped: list[dict[str, str]] = []

    # -- construction --------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: Any, class_names: Sequence[str] | None = None) -> "Dataset":
        if isinstance(spec, Dataset):
            return spec
        if isinstance(spec, (str, os.PathLike)):
            if os.path.isdir(spec):
                return cls.from_folder(spec)
            if glob.has_magic(os.fspath(spec)):
                return cls.from_glob(os.fspath(spec))
            if os.path.isfile(spec) and not _is_image(os.path.basename(spec)):
                return cls.from_list_file(spec)
            raise InputError(f"dataset {spec} is not a folder, a list file or a glob pattern; give a folder of images "
                             "(class subfolders as labels), a text file of image paths, a pattern such as 'images/*.png', "
                             "a list of image paths or an iterable of images")
        if isinstance(spec, np.ndarray) or hasattr(spec, "detach"):
            raise InputError("a dataset is a folder, a list of paths, or an iterable of images / (image, label) pairs, not one array; "
                             "wrap arrays as a list of (H, W, 3) images")
        if isinstance(spec, Sequence) and spec and all(isinstance(p, (str, os.PathLike)) for p in spec):
            items = [(str(p), -1) for p in spec]
            return cls(items, len(items), class_names, f"{len(items)} paths", True)
        if isinstance(spec, Sequence):
            items = list(_pairs(spec))
            return cls(items, len(items), class_names, f"{len(items)} images", True)
        if isinstance(spec, Iterable):  # a one-shot iterator: streamed once, never held
            return cls(_pairs(spec), None, class_names, "an iterator of images", False)
        raise InputError(f"cannot read a dataset from {type(spec).__name__}")

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "Dataset":
        """Images directly in the folder are unlabelled; each subfolder is a
        class (sorted names, label = position), as torchvision's ImageFolder."""
        folder = os.fspath(folder)
        subfolders = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
        classes = [c for c in subfolders if any(_is_image(n) for n in os.listdir(os.path.join(folder, c)))]
        items: list[tuple[str, int]] = []
        if classes:
            for label, name in enumerate(classes):
                items += [(os.path.join(folder, name, f), label) for f in sorted(os.listdir(os.path.join(folder, name))) if _is_image(f)]
        else:
            items = [(os.path.join(folder, f), -1) for f in sorted(os.listdir(folder)) if _is_image(f)]
        if not items:
            raise InputError(f"no images found in {folder} (looked for {', '.join(IMAGE_SUFFIXES)} files, and in class subfolders)")
        return cls(items, len(items), classes or None, folder, True)

    @classmethod
    def from_glob(cls, pattern: str) -> "Dataset":
        """The image files a glob pattern matches (``**`` recursive), sorted, unlabelled."""
        items = [(p, -1) for p in sorted(glob.glob(pattern, recursive=True)) if _is_image(os.path.basename(p))]
        if not items:
            raise InputError(f"the pattern {pattern} matches no image file ({', '.join(IMAGE_SUFFIXES)})")
        return cls(items, len(items), None, pattern, True)

    @classmethod
    def from_list_file(cls, path: str | os.PathLike) -> "Dataset":
        """A text file with one image path per line, optionally followed by a
        whitespace and an integer label; relative paths are relative to the
        file's folder; blank lines and lines starting with # are ignored."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        items: list[tuple[str, int]] = []
        with open(path, encoding="utf-8") as stream:
            for line in stream:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                name, label = line, -1
                parts = line.rsplit(maxsplit=1)  # a path may hold spaces; a trailing integer is the label
                if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                    name, label = parts[0], int(parts[1])
                items.append((name if os.path.isabs(name) else os.path.join(folder, name), label))
        if not items:
            raise InputError(f"the list file {path} names no image; write one image path per line (optionally a label after it)")
        return cls(items, len(items), None, path, True)

    @property
    def has_labels(self) -> bool:
        return self.class_names is not None

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("this dataset is an iterator of unknown length")
        return self.length

    # -- streaming -----------------------------------------------------------
    def batches(self, config: PreprocessConfig, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[DatasetBatch]:
        """Batches of decoded, resized, normalized images of items ``start`` to
        ``stop`` (exclusive; None: the end); the next batch is decoded on a
        worker thread while the current one is used."""
        chunks = _chunks(self._numbered(start, stop), batch_size)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            for chunk in chunks:
                future = pool.submit(self._decode, chunk, config)
                if pending is not None:
                    batch = pending.result()
                    if batch is not None:
                        yield batch
                pending = future
            if pending is not None:
                batch = pending.result()
                if batch is not None:
                    yield batch

    def _numbered(self, start: int, stop: int | None = None) -> Iterator[tuple[int, Any, int]]:
        if isinstance(self._items, Sequence):  # random access: no walk over the items before start
            end = len(self._items) if stop is None else min(stop, len(self._items))
            for index in range(start, end):
                item, label = self._items[index]
                yield index, item, label
            return
        for index, (item, label) in enumerate(self._items):
            if stop is not None and index >= stop:
                return
            if index >= start:
                yield index, item, label

    def _decode(self, chunk: list[tuple[int, Any, int]], config: PreprocessConfig) -> DatasetBatch | None:
        pixels, labels, names, indices = [], [], [], []
        for index, item, label in chunk:
            try:
                image, name = _open(item, index)
            except (ImageLoadError, InputError) as error:
                self.skipped.append({"index": str(index), "item": str(item) if isinstance(item, (str, os.PathLike)) else f"item {index}",
                                     "error": str(error)})
                warnings.warn(f"skipping dataset item {index}: {error}", MethodWarning, stacklevel=2)
                continue
            pixels.append(imaging.resize(image, config))
            labels.append(label)
            names.append(name)
            indices.append(index)
        if not pixels:
            return None
        stacked = np.stack(pixels)
        return DatasetBatch(imaging.normalize(stacked, config), stacked, np.asarray(labels, np.int64), names,
                            np.asarray(indices, np.int64))

    def entry(self, index: int) -> tuple[Any, int] | None:
        """(item, label) of item ``index`` where the source allows random
        access (paths, sequences); None for one-shot iterators."""
        if not isinstance(self._items, Sequence):
            return None
        return self._items[index]

    def image(self, index: int) -> Image.Image | None:
        """Random access to item ``index`` where the source allows it (paths,
        sequences); None for one-shot iterators."""
        if not isinstance(self._items, Sequence):
            return None
        return _open(self._items[index][0], index)[0]


def _is_image(name: str) -> bool:
    # NAME.mask.png beside an image is its object mask (localization metrics), not an image of the dataset
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".") and not name.lower().endswith(".mask.png")


def _pairs(source: Iterable) -> Iterator[tuple[Any, int]]:
    for entry in source:
        if isinstance(entry, tuple) and len(entry) == 2 and not isinstance(entry[0], (int, float)):
            yield entry[0], int(entry[1])
        else:
            yield entry, -1


def _chunks(numbered: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for entry in numbered:
        chunk.append(entry)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _open(item: Any, index: int) -> tuple[Image.Image, str]:
    if isinstance(item, (str, os.PathLike)):
        return imaging.load_image(item), os.path.splitext(os.path.basename(item))[0]
    if isinstance(item, Image.Image):
        return imaging.to_rgb(item), f"item{index}"
    if hasattr(item, "detach"):
        item = item.detach().cpu().numpy()
    if isinstance(item, np.ndarray):
        return Image.fromarray(_to_uint8_hwc(item, index)), f"item{index}"
    raise InputError(f"dataset item {index} is a {type(item).__name__}; give paths, PIL images or (H, W, 3) arrays")


def _to_uint8_hwc(array: np.ndarray, index: int) -> np.ndarray:
    """(H, W), (H, W, 3) or (3, H, W) arrays; floats in [0, 1] or uint8."""
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.transpose(array, (1, 2, 0))
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise InputError(f"dataset item {index} has shape {array.shape}; give (H, W), (H, W, 3) or (3, H, W)")
    if np.issubdtype(array.dtype, np.floating):
        if array.min() < 0 or array.max() > 1:
            raise InputError(f"dataset item {index}: float pixels must lie in [0, 1]")
        array = (array * 255 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(array.astype(np.uint8))
