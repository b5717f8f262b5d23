"""Filter weights as pictures: a convolution layer's kernels as a grid of
tiles (Krizhevsky et al. 2012, Zeiler & Fergus 2013). Reads the weights only,
so it runs on torch parameters and ONNX initializers alike.

Modes: ``rgb`` shows a filter over 3 input channels as one colour tile (the
first layer, whose inputs are the image's R, G, B); ``average`` one grey tile
per filter, the mean over its input channels; ``slices`` one row per filter
and one grey tile per input channel. ``auto`` (default) is ``rgb`` for
3-input filters, ``slices`` for 1×1 kernels (whose average would be a single
grey value) and ``average`` otherwise. A depthwise convolution (one input
channel per filter) shows one tile per channel in every mode.

Each filter is scaled on its own (``--normalize``, see
:func:`cnnviz_plugins.analysis.support.filter_tiles.normalize`); its slices share that scale.
An ONNX export usually folds batch norm into the convolution, so its filters
are the torch filters times γ/σ per output channel: the per-filter scaling
makes the two pictures agree (inverted where γ < 0)."""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnviz_core import Analysis, AnalysisMethod, AnalysisParams, Capability, InputError, hookimpl, param

from cnnviz_plugins.analysis.support import filter_tiles


@dataclasses.dataclass
class FiltersParams(AnalysisParams):
    layer: str | None = param(None, "the convolution to draw (default: the model's first convolution); torch module name, "
                           "or for ONNX the same module path, the node name or the weight initializer's name")
    mode: str = param("auto", "rgb: one colour tile per 3-channel filter; average: one grey tile per filter (mean over "
                              "inputs); slices: one grey tile per filter and input channel; auto: rgb for 3-input filters, "
                              "slices for 1x1 kernels, else average", choices=("auto", "rgb", "average", "slices"))
    normalize: str = param("minmax", "per-filter scaling: minmax uses each filter's full range (the AlexNet figure); "
                                     "symmetric maps 0 to grey and ±max|w| to black/white", choices=("minmax", "symmetric"))
    max_filters: int = param(96, "draw at most this many filters (the first ones)", minimum=1)
    max_inputs: int = param(16, "slices mode: at most this many input channels per filter", minimum=1)
    tile: int = param(48, "tile size in pixels a kernel is enlarged to (nearest-neighbour, whole multiples)", minimum=1)
    columns: int = param(0, "tiles per row (0: a near-square grid; slices mode: one row per filter)", minimum=0)


class Filters(AnalysisMethod):
    """A convolution layer's kernels as an image grid (first layer in RGB)."""

    name = "filters"
    requires = frozenset({Capability.WEIGHTS})
    Params = FiltersParams
    uses_dataset = False
    demo_params = {}  # the first convolution, in RGB

    def setup(self) -> None:
        if self.params.layer:
            self.layer = self.adapter.weight_layer(self.params.layer, "conv")
        else:
            convolutions = [layer for layer in self.adapter.weight_layers() if layer.kind == "conv"]
            if not convolutions:
                raise self.error(f"model {self.adapter.name!r} has no convolution whose weights are stored (initializers)")
            self.layer = convolutions[0]
        if len(self.layer.shape) not in (3, 4):
            raise InputError(f"filters draws 1-D and 2-D convolutions; layer {self.layer.name!r} has kernels of shape "
                             f"{self.layer.shape}")
        self.mode = self._mode(self.layer.shape)

    def _mode(self, shape: tuple[int, ...]) -> str:
        mode, inputs_per_filter = self.params.mode, shape[1]
        if inputs_per_filter == 1 and mode != "rgb":
            return "average"  # depthwise: one slice per filter, one tile per channel
        if mode == "auto":
            if inputs_per_filter == 3:
                return "rgb"
            return "slices" if all(k == 1 for k in shape[2:]) else "average"
        if mode == "rgb" and inputs_per_filter != 3:
            raise InputError(f"filters: --mode rgb needs filters over 3 input channels; layer {self.layer.name!r} has "
                             f"{inputs_per_filter}; use --mode average or slices")
        return mode

    def finish(self) -> Analysis:
        weights = np.array(self.layer.weight, dtype=np.float32)  # a copy: the layer's array is read-only
        kernels = weights if weights.ndim == 4 else weights[:, :, None, :]  # a 1-D kernel as one row
        p = self.params
        shown = kernels[: p.max_filters].astype(np.float64)
        factor = filter_tiles.upscale_factor(kernels.shape[-2:], p.tile)
        normalized = np.stack([filter_tiles.normalize(f, p.normalize) for f in shown])
        if self.mode == "rgb":
            values = np.transpose(normalized, (0, 2, 3, 1))  # (n, kh, kw, 3)
            picture = filter_tiles.grid([filter_tiles.enlarge(v, factor) for v in values], p.columns)
        elif self.mode == "average":
            # the raw weights averaged over the inputs, then scaled: the filter's overall pattern
            values = np.stack([filter_tiles.normalize(f.mean(axis=0), p.normalize) for f in shown])
            picture = filter_tiles.grid([filter_tiles.enlarge(v, factor) for v in values], p.columns)
        else:  # slices: a row per filter, sharing the filter's scale
            values = normalized[:, : p.max_inputs]
            picture = filter_tiles.grid([filter_tiles.enlarge(s, factor) for f in values for s in f], values.shape[1])
        return Analysis(
            arrays={"weights": weights, "tiles": values.astype(np.float32)},
            pictures={"grid": picture},
            facts={
                "layer": self.layer.name, "weight_name": self.layer.weight_name, "shape": list(weights.shape),
                "groups": self.layer.groups, "mode": self.mode, "normalize": p.normalize,
                "filters_shown": int(len(shown)), "inputs_shown": int(values.shape[1]) if self.mode == "slices" else None,
                "tile_pixels": int(factor * max(kernels.shape[-2:])),
            },
        )


@hookimpl
def cnnviz_methods():
    return [Filters]
