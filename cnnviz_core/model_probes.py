"""Answers to adapter-contract questions worked out from capabilities alone:
the defaults of :class:`cnnviz_core.ModelAdapter`, and the checks the built-in
adapters run on their own answers. Each uses only ``activations`` (or
``weights``), so it holds for any adapter, a third party's included."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from .errors import InputError, LayerNotFoundError
from .model_facts import CamHead, ReceptiveField, Span, WeightLayer, not_a_cam_head

PROBE_SEEDS = (0, 1)  # a unit switched off (ReLU) on one random input is on for another
PROBE_CHUNK = 32  # perturbed copies per forward pass


def blank(adapter, batch: int = 1) -> np.ndarray:
    return np.zeros((batch, 3, *adapter.config.input_size), dtype=np.float32)


def measured_shapes(adapter, names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Each named layer's output shape for one blank image (one forward)."""
    if not names:
        return {}
    outputs = adapter.activations(blank(adapter), list(names))
    return {name: tuple(np.shape(value)) for name, value in outputs.items()}


def stages_by_resolution(names: Sequence[str], shapes: dict[str, tuple | None],
                         counted: Sequence[str] | None = None) -> list[str]:
    """Stage outputs from output shapes, ``names`` in forward order: each
    spatial resolution (a (1, C, h, w) output with more than one position)
    is a stage, in the order resolutions first appear, and its output is the
    last layer at that resolution. ``counted``: only resolutions one of these
    layers works at (convolutions: a size only pooling gives is no stage)."""
    spatial = {name: tuple(shape[2:]) for name, shape in shapes.items()
               if shape is not None and len(shape) == 4 and None not in shape[2:] and shape[2] * shape[3] > 1}
    sizes = [spatial[name] for name in names if name in spatial]
    kept = set(sizes) if counted is None else {spatial[name] for name in counted if name in spatial}
    last = {size: name for name in names if name in spatial and (size := spatial[name]) in kept}
    stages = [last[size] for size in dict.fromkeys(sizes) if size in kept]
    if not stages:
        raise LayerNotFoundError("<a spatial feature layer>", list(names))
    return stages


def middle(stages: list[str]) -> str:
    """The last-but-one stage: mid/late depth, where a representation keeps
    the layout of the image but no longer its pixels (VGG's conv4 block, from
    which Gatys et al. take the content; GoogLeNet's mixed4, where DeepDream's
    layers sat)."""
    return stages[-2] if len(stages) > 1 else stages[-1]


# -- receptive fields ----------------------------------------------------------------
def layer_map_shape(adapter, layer: str) -> tuple[int, ...]:
    shape = measured_shapes(adapter, [layer])[layer]
    if len(shape) != 4:
        raise InputError(f"layer {layer!r} outputs shape {tuple(shape)}; a receptive field needs a (B, C, H, W) feature map "
                         "(choose a convolutional layer)")
    return shape


def probed_receptive_field(adapter, layer: str, seeds=PROBE_SEEDS, chunk: int = PROBE_CHUNK) -> ReceptiveField:
    """Receptive fields measured by perturbation: input row r is redrawn at
    random; the layer rows whose activations change depend on it. Likewise
    for columns. H + W forward passes per seed, batched."""
    height, width = adapter.config.input_size
    tables: dict[str, np.ndarray] = {}
    reference = None
    for seed in seeds:
        rng = np.random.default_rng(seed)
        base = rng.normal(size=(1, 3, height, width)).astype(np.float32)
        reference = adapter.activations(base, [layer])[layer]
        if reference.ndim != 4:
            raise InputError(f"layer {layer!r} outputs shape {reference.shape}; a receptive field needs a (B, C, H, W) map")
        scale = float(np.abs(reference).max()) or 1.0
        for axis, count in (("rows", height), ("cols", width)):
            table = tables.setdefault(axis, np.zeros((reference.shape[2 if axis == "rows" else 3], count), bool))
            for start in range(0, count, chunk):
                lines = np.arange(start, min(start + chunk, count))
                batch = np.repeat(base, len(lines), axis=0)
                noise = rng.normal(size=batch.shape).astype(np.float32)
                for i, line in enumerate(lines):
                    if axis == "rows":
                        batch[i, :, line, :] = noise[i, :, line, :]
                    else:
                        batch[i, :, :, line] = noise[i, :, :, line]
                changed = np.abs(adapter.activations(batch, [layer])[layer] - reference) > 1e-5 * scale  # (b, C, h, w)
                table[:, lines] |= (changed.any(axis=(1, 3)) if axis == "rows" else changed.any(axis=(1, 2))).T
    return ReceptiveField(Span.from_support(tables["rows"]), Span.from_support(tables["cols"]), "probe", tuple(reference.shape))


def outside_dependence(adapter, layer: str, field: ReceptiveField, seed: int = 0) -> tuple[int, int] | None:
    """Perturb every pixel outside a unit's box, for the first, centre and
    last units of the layer: none may change (all channels at that
    position). The first unit that does is returned, None if none does."""
    height, width = adapter.config.input_size
    h, w = len(field.rows), len(field.cols)
    units = sorted({(0, 0), (h // 2, w // 2), (h - 1, w - 1)})
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(1, 3, height, width)).astype(np.float32)
    batch = np.repeat(base, len(units) + 1, axis=0)
    boxes = field.boxes(np.array([u[0] for u in units]), np.array([u[1] for u in units]))
    for i, (y0, y1, x0, x1) in enumerate(boxes, start=1):
        keep = batch[i, :, y0:y1, x0:x1].copy()
        batch[i] = rng.normal(size=(3, height, width)).astype(np.float32)
        batch[i, :, y0:y1, x0:x1] = keep
    maps = adapter.activations(batch, [layer])[layer]
    scale = float(np.abs(maps[0]).max()) or 1.0
    for i, (y, x) in enumerate(units, start=1):
        # a few ulps of slack: some kernels sum in an order that depends on the whole input
        if float(np.abs(maps[i, :, y, x] - maps[0, :, y, x]).max()) > 1e-4 * scale:
            return (y, x)
    return None


# -- CAM head ------------------------------------------------------------------------
CAM_TOLERANCE = 1e-4  # relative: float32 sums in another order


def cam_head_by_probe(adapter) -> CamHead:
    """A GAP + linear head found numerically: the last linear layer with one
    row per class is the classifier, and its feature layer the last layer
    whose (B, K, h, w) output, averaged over positions, gives the logits
    through it up to a constant (the bias) on two random inputs."""
    linears = [layer for layer in adapter.weight_layers() if layer.kind == "linear" and layer.shape[0] == adapter.num_classes]
    if not linears:
        raise not_a_cam_head(adapter.name, f"no linear layer has one row per class ({adapter.num_classes})")
    classifier = linears[-1]
    weight = np.asarray(classifier.weight, np.float64)
    shapes = adapter.layer_shapes(adapter.layers())
    candidates = [name for name, shape in shapes.items()
                  if len(shape) == 4 and shape[1] == weight.shape[1] and shape[2] * shape[3] > 1]
    if not candidates:
        raise not_a_cam_head(adapter.name, f"no layer outputs a ({weight.shape[1]}, H, W) feature map for the linear layer "
                                           f"{classifier.name!r}")
    probe = np.random.default_rng(0).normal(size=(2, 3, *adapter.config.input_size)).astype(np.float32)
    logits, outputs = adapter.logits_and_activations(probe, candidates)
    logits = np.asarray(logits, np.float64)
    scale = max(float(np.abs(logits).max()), 1e-12)
    for name in reversed(candidates):
        bias = logits - np.asarray(outputs[name], np.float64).mean(axis=(2, 3)) @ weight.T
        if float(np.abs(bias[0] - bias[1]).max()) <= CAM_TOLERANCE * scale:
            return CamHead(name, np.ascontiguousarray(weight, np.float32), bias[0].astype(np.float32), classifier.name)
    raise not_a_cam_head(adapter.name, f"the input of the linear layer {classifier.name!r} is not the global average pool of "
                                       "any layer's feature map")


# -- weights -----------------------------------------------------------------------
def weight_layers_by_shape(weights: dict[str, np.ndarray]) -> list[WeightLayer]:
    """Layers read off a flat name → array mapping: 4-D (and 3-D) arrays are
    convolution kernels (out, in, kh[, kw]), 2-D arrays linear layers
    (out, in); the rest (biases, norms) is not a layer."""
    layers = []
    for name, array in weights.items():
        array = np.asarray(array)
        kind = "conv" if array.ndim in (3, 4) else "linear" if array.ndim == 2 else None
        if kind is not None:
            layers.append(WeightLayer(name, kind, name, tuple(array.shape), read_only(array)))
    return layers


def read_only(array: np.ndarray) -> np.ndarray:
    view = np.asarray(array).view()
    view.flags.writeable = False
    return view


def digest_of_arrays(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes, in name order."""
    hasher = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        hasher.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        hasher.update(array.view(np.uint8).reshape(-1))
    return hasher.hexdigest()
