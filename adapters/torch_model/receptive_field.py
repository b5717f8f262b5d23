"""Receptive fields of torch models: the geometry traced through one forward
pass (every torch function call is seen, modules or functional code alike,
residual adds included), or measured from input gradients where an op
scrambles the layout."""

from __future__ import annotations

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree

from cnnviz_core.toolkit.hooks import forward_hooks, frozen_parameters
from cnnviz_core.errors import InputError

from cnnviz_core.model_facts import ReceptiveField, Span

from ..geometry import (
    Field,
    adaptive_sources,
    aligned_field,
    input_field,
    lost_field,
    pad_sources,
    resize_sources,
    sources_field,
    window_field,
)

# Positional parameters after the input, to read arguments given either way.
SIGNATURES = {
    "conv2d": ("weight", "bias", "stride", "padding", "dilation", "groups"),
    "max_pool2d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "avg_pool2d": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    "lp_pool2d": ("norm_type", "kernel_size", "stride", "ceil_mode"),
    "pad": ("pad", "mode", "value"),
}
MAX_POOLS = {"max_pool2d", "_max_pool2d", "max_pool2d_with_indices"}
ADAPTIVE_POOLS = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "_adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"}
RESIZES = {"interpolate", "upsample", "upsample_nearest", "upsample_bilinear"}
REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod", "nansum", "nanmean"}
# Outputs that depend on a tensor's shape only, not on its values.
SHAPE_ONLY = {"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like",
              "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "size", "dim", "numel", "shape"}
# Ops along a `dim`: they keep positions unless that dim is spatial.
DIM_OPS = {"softmax": 1, "log_softmax": 1, "softmin": 1, "cumsum": 1, "cumprod": 1, "cummax": 1, "cummin": 1,
           "logcumsumexp": 1, "sort": 1, "argsort": 1}
# Ops that move values between positions even when shapes line up.
MIXING = {"fliplr", "flipud", "rot90", "matmul", "bmm", "mm", "einsum", "baddbmm", "addmm", "linear",
          "bilinear", "gather", "scatter", "scatter_add", "scatter_reduce", "index_select", "take", "take_along_dim",
          "grid_sample", "unfold", "fold", "pixel_shuffle", "pixel_unshuffle", "T", "mT", "H", "mH", "conv1d", "conv3d",
          "rmatmul", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "index_put", "index_put_", "masked_scatter",
          "diff", "repeat_interleave", "topk", "kthvalue", "median", "nanmedian", "mode", "msort", "quantile", "tile",
          "repeat", "view_as_real", "view_as_complex", "stft", "fft_fft2", "fft_rfft2"}


def _op_name(func) -> str:
    name = getattr(func, "__name__", str(func))
    if name == "__get__":  # a property (x.mT, x.data): named by its descriptor
        return getattr(getattr(func, "__self__", None), "__name__", name)
    if name.startswith("__") and name.endswith("__"):  # x[k], x @ y, x += y → getitem, matmul, iadd
        return name[2:-2]
    return name


def _pair(value, default=None) -> tuple[int, int]:
    if value is None:
        value = default
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            value = default
        else:
            return (int(value[0]), int(value[-1])) if len(value) <= 2 else (int(value[-2]), int(value[-1]))
    return (int(value), int(value))


def _bound(name: str, args: tuple, kwargs: dict) -> dict:
    names = ("input",) + SIGNATURES[name]
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


class GeometryTracer(TorchFunctionMode):
    """Records a :class:`Field` for every tensor computed from the input during
    one forward. Tensors are kept alive until the tracer is dropped, so that
    their ids stay unique."""

    def __init__(self, image: tuple[int, int]):
        super().__init__()
        self.image = image
        self.fields: dict[int, Field] = {}
        self._alive: list[torch.Tensor] = []

    def track(self, tensor: torch.Tensor, field: Field) -> None:
        self.fields[id(tensor)] = field
        self._alive.append(tensor)

    def field(self, tensor) -> Field | None:
        return self.fields.get(id(tensor)) if isinstance(tensor, torch.Tensor) else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        traced = [(self.fields[id(t)], tuple(t.shape)) for t in _pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and id(t) in self.fields]
        name = _op_name(func)
        if not traced or name in SHAPE_ONLY:
            return result
        if name == "setitem":  # x[key] = value: in place on x
            target = args[0]
            self.track(target, self._setitem(args, tuple(target.shape)))
            return result
        for output in _pytree.tree_leaves(result):
            if isinstance(output, torch.Tensor):
                self.track(output, self._rule(name, args, kwargs, traced, tuple(output.shape)))
        return result

    # -- rules -------------------------------------------------------------
    def _rule(self, name: str, args: tuple, kwargs: dict, traced, out_shape) -> Field:
        image = self.image
        first = args[0] if args else None
        first_field = self.field(first)
        in_shape = tuple(first.shape) if isinstance(first, torch.Tensor) else ()
        spatial_out = len(out_shape) >= 3 and len(in_shape) >= 3
        if name == "conv2d" and first_field is not None and spatial_out:
            bound = _bound(name, args, kwargs)
            kernel = tuple(bound["weight"].shape[-2:])
            stride, dilation = _pair(bound.get("stride"), 1), _pair(bound.get("dilation"), 1)
            padding = bound.get("padding", 0)
            if isinstance(padding, str):
                # PyTorch's "same" pads (k − 1)·d in total, the smaller half first; "valid" pads nothing
                padding = tuple((d * (k - 1)) // 2 for k, d in zip(kernel, dilation)) if padding == "same" else (0, 0)
            return window_field(first_field, in_shape, out_shape, image, kernel, stride, _pair(padding, 0), dilation)
        if name in MAX_POOLS | {"avg_pool2d"} and first_field is not None and spatial_out:
            bound = _bound("max_pool2d" if name in MAX_POOLS else name, args, kwargs)
            kernel = _pair(bound["kernel_size"])
            stride = _pair(bound.get("stride"), kernel)
            dilation = _pair(bound.get("dilation"), 1)
            return window_field(first_field, in_shape, out_shape, image, kernel, stride, _pair(bound.get("padding"), 0), dilation)
        if name == "lp_pool2d" and first_field is not None and spatial_out:
            bound = _bound(name, args, kwargs)
            kernel = _pair(bound["kernel_size"])
            return window_field(first_field, in_shape, out_shape, image, kernel, _pair(bound.get("stride"), kernel), (0, 0), (1, 1))
        if name in ADAPTIVE_POOLS and first_field is not None and spatial_out:
            return sources_field(first_field, in_shape, out_shape, image, adaptive_sources(out_shape[-2], in_shape[-2]),
                                 adaptive_sources(out_shape[-1], in_shape[-1]))
        if name in RESIZES and first_field is not None and spatial_out:
            return sources_field(first_field, in_shape, out_shape, image, resize_sources(out_shape[-2], in_shape[-2]),
                                 resize_sources(out_shape[-1], in_shape[-1]))
        if name == "pad" and first_field is not None and spatial_out:
            bound = _bound(name, args, kwargs)
            widths = list(bound["pad"]) + [0] * 4  # (left, right, top, bottom, ...): last axis first
            mode = bound.get("mode") or "constant"
            return sources_field(first_field, in_shape, out_shape, image,
                                 pad_sources(out_shape[-2], in_shape[-2], int(widths[2]), mode),
                                 pad_sources(out_shape[-1], in_shape[-1], int(widths[0]), mode))
        if name in MIXING:
            return lost_field(out_shape, image)
        if name in DIM_OPS or name in ("transpose", "swapaxes", "swapdims", "permute", "movedim", "moveaxis", "flip", "roll"):
            if self._moves_spatial(name, args, kwargs, len(in_shape)):
                return lost_field(out_shape, image)
        if name == "getitem" and self._indexes_spatial(args[1], len(in_shape)):
            return lost_field(out_shape, image)
        if name in REDUCTIONS and len(out_shape) >= 3 and self._drops_one_spatial_axis(args, kwargs, len(in_shape)):
            return lost_field(out_shape, image)  # x.mean(3): rows without columns, which a field cannot say
        return aligned_field(traced, out_shape, image, reduction=name in REDUCTIONS or name in ADAPTIVE_POOLS)

    @staticmethod
    def _moves_spatial(name: str, args: tuple, kwargs: dict, ndim: int) -> bool:
        """Whether a dim-wise op works along, or a transpose moves, the last two axes."""
        if ndim < 3:
            return False
        spatial = {ndim - 2, ndim - 1}
        norm = lambda d: int(d) % ndim  # noqa: E731
        if name in DIM_OPS:
            dim = kwargs.get("dim", args[DIM_OPS[name]] if len(args) > DIM_OPS[name] else -1)
            return dim is None or norm(dim) in spatial
        if name == "permute":
            order = kwargs.get("dims", args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple)) else args[1])
            order = [norm(d) for d in order]
            return order[-2:] != [ndim - 2, ndim - 1]
        if name in ("movedim", "moveaxis"):
            return True
        if name in ("flip", "roll"):
            if name == "flip":  # x.flip(1, 2), x.flip((1, 2)), torch.flip(x, dims)
                dims = kwargs.get("dims", args[1] if len(args) == 2 else args[1:])
            else:  # x.roll(shifts, dims)
                dims = kwargs.get("dims", args[2] if len(args) > 2 else None)
            if dims is None:
                return True  # roll without dims shifts the flattened tensor
            dims = [dims] if isinstance(dims, int) else list(dims)
            return any(norm(d) in spatial for d in dims)
        dims = [norm(d) for d in (args[1:3] if len(args) >= 3 else (kwargs.get("dim0"), kwargs.get("dim1")))]
        return dims[0] != dims[1] and bool(set(dims) & spatial)

    @staticmethod
    def _drops_one_spatial_axis(args: tuple, kwargs: dict, ndim: int) -> bool:
        dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
        keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
        if dims is None or keepdim or ndim < 3 or not isinstance(dims, (int, list, tuple)):
            return False
        dims = {int(d) % ndim for d in ([dims] if isinstance(dims, int) else dims)}
        return bool(dims & {ndim - 2, ndim - 1})

    @staticmethod
    def _indexes_spatial(key, ndim: int) -> bool:
        """Whether an index key selects along the last two axes."""
        key = key if isinstance(key, tuple) else (key,)
        if any(k is None for k in key):
            return True
        if isinstance(key[0], torch.Tensor) and key[0].dim() > 1:
            return True
        if Ellipsis in key:
            position = key.index(Ellipsis)
            trailing = key[position + 1:]
            dims = {ndim - len(trailing) + i: k for i, k in enumerate(trailing)}
            dims.update(enumerate(key[:position]))
        else:
            dims = dict(enumerate(key))
        return any(d >= ndim - 2 and not (isinstance(k, slice) and k == slice(None)) for d, k in dims.items())

    def _setitem(self, args: tuple, shape) -> Field:
        target, key, value = args[0], args[1], args[2]
        if self._indexes_spatial(key, len(shape)):
            return lost_field(shape, self.image)
        inputs = [(self.field(t), tuple(t.shape)) for t in (target, value) if self.field(t) is not None]
        return aligned_field(inputs, shape, self.image) if inputs else lost_field(shape, self.image)


def layer_field(adapter, layer: str) -> tuple[Field | None, tuple[int, ...] | None]:
    """The field of ``layer``'s output when the module returns, and the
    output's shape, from one traced forward of a blank image; the field is
    None if the output is not a tensor computed from the input."""
    module = adapter.get_layer(layer)
    image = tuple(adapter.config.input_size)
    tracer = GeometryTracer(image)
    recorded: dict[str, tuple] = {}

    def make_hook(name):
        def hook(_module, _inputs, output):
            # read now, as an in-place op later must not change it; a module run twice keeps its
            # last call, as the adapter's activations do
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            recorded[name] = (tracer.field(output), shape)

        return hook

    x = torch.zeros((1, 3, *image), device=adapter.device)
    with forward_hooks({layer: module}, make_hook), adapter.session(), torch.no_grad():
        tracer.track(x, input_field(*image))
        with tracer:
            adapter.module(x)
    if layer not in recorded:
        raise InputError(f"layer {layer!r} did not run in the forward pass")
    return recorded[layer]


def layer_output(adapter, layer: str, inputs: torch.Tensor) -> torch.Tensor:
    """``layer``'s output for ``inputs`` (its last call, with its autograd
    graph when grad is on)."""
    module = adapter.get_layer(layer)
    captured = {}

    def make_hook(name):
        def hook(_module, _inputs, output):
            captured[name] = output

        return hook

    with forward_hooks({layer: module}, make_hook):
        adapter.module(inputs)
    if not isinstance(captured.get(layer), torch.Tensor):
        raise InputError(f"layer {layer!r} did not return a tensor in the forward pass")
    layout = adapter.feature_layout(layer)  # a transformer's token layer, measured as its (B, C, h, w) map
    return layout.to_map(captured[layer]) if layout is not None else captured[layer]


def measured_field(adapter, layer: str, seeds=(0, 1), chunk: int = 16) -> ReceptiveField:
    """Receptive fields measured from gradients: for each row y of the layer,
    the input rows where the gradient of (a random positive mix of) that
    row's units is nonzero; likewise for columns. Random inputs, two seeds:
    a unit switched off by a ReLU on one input is on for another."""
    height, width = adapter.config.input_size
    with adapter.session(), torch.no_grad():
        probe = layer_output(adapter, layer, torch.zeros((1, 3, height, width), device=adapter.device))
    if probe.dim() != 4:
        raise InputError(f"layer {layer!r} outputs shape {tuple(probe.shape)}; a receptive field needs a (B, C, H, W) map")
    channels, h, w = probe.shape[1:]
    tables = {"rows": np.zeros((h, height), bool), "cols": np.zeros((w, width), bool)}
    with frozen_parameters(adapter.module), adapter.session(), torch.enable_grad():
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            base = torch.randn((1, 3, height, width), generator=generator)
            mix = torch.rand(channels, generator=generator) + 0.5
            for axis, count in (("rows", h), ("cols", w)):
                for start in range(0, count, chunk):
                    positions = torch.arange(start, min(start + chunk, count))
                    inputs = base.repeat(len(positions), 1, 1, 1).to(adapter.device).requires_grad_(True)
                    output = layer_output(adapter, layer, inputs)
                    rows = torch.arange(len(positions))
                    picked = output[rows, :, positions, :] if axis == "rows" else output[rows, :, :, positions]
                    objective = (picked * mix.to(output.device)[None, :, None]).sum()
                    (gradient,) = torch.autograd.grad(objective, inputs)
                    support = (gradient.abs().sum(dim=1) > 0).cpu().numpy()  # (b, H, W)
                    tables[axis][positions.numpy()] |= support.any(axis=2) if axis == "rows" else support.any(axis=1)
    return ReceptiveField(Span.from_support(tables["rows"]), Span.from_support(tables["cols"]), "gradient", tuple(probe.shape))
