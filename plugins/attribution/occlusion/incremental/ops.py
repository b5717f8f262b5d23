"""Which traced operations can be recomputed on a patch of their output, and how.

Two families are exact on a patch:
- *windowed* ops (convolution, max/average pooling): an output pixel reads a
  kernel-sized window of the input. The input is padded explicitly (once, for
  the clean map) so that the op itself runs without implicit padding on any
  crop; average pooling gets a per-pixel divisor correction for the places
  where its own divisor is not the kernel area.
- *pointwise* ops (batch norm in eval mode, activations, element-wise
  arithmetic, channel concatenation): an output pixel reads only the same
  pixel of each input, so the op runs unchanged on crops.

Everything else (global pooling, linear layers, reshapes, upsampling, modules
that cannot be traced) is recomputed on whole maps."""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

try:  # timm's TensorFlow-style 'same' layers pad by the input size
    from timm.layers import BatchNormAct2d, Conv2dSame
    from timm.layers.drop import DropPath
    from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame
except ImportError:  # pragma: no cover - timm is a dependency; stand-ins that match nothing
    BatchNormAct2d = Conv2dSame = DropPath = AvgPool2dSame = MaxPool2dSame = type("Absent", (), {})

try:
    from timm.layers import activations as timm_activations

    TIMM_ACTIVATIONS = tuple(
        getattr(timm_activations, name)
        for name in ("Swish", "Mish", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "HardMish", "GELU", "GELUTanh", "QuickGELU", "PReLU")
        if hasattr(timm_activations, name)
    )
except ImportError:  # pragma: no cover
    TIMM_ACTIVATIONS = ()

ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.PReLU, nn.Identity,
) + TIMM_ACTIVATIONS
DROPOUT_MODULES = (nn.Dropout, nn.Dropout2d, nn.AlphaDropout, DropPath)  # identities in eval mode

POINTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg,
    operator.iadd, operator.isub, operator.imul, operator.itruediv,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.abs, torch.exp, torch.clamp, torch.maximum,
    torch.minimum, torch.relu, torch.relu_, torch.sigmoid, torch.tanh,
    F.relu, F.relu_, F.relu6, F.silu, F.hardswish, F.hardsigmoid, F.gelu, F.leaky_relu, F.hardtanh, F.elu,
    F.sigmoid, F.tanh, F.mish, F.softplus,
}
POINTWISE_METHODS = {
    "add", "sub", "mul", "div", "neg", "abs", "exp", "relu", "sigmoid", "tanh", "clamp", "clamp_min", "clamp_max",
    "add_", "sub_", "mul_", "div_", "relu_", "sigmoid_", "tanh_", "clamp_", "clamp_min_", "contiguous",
}
CHANNEL_DIMS = (1, -3)  # concatenating along channels keeps pixels aligned


@dataclasses.dataclass(frozen=True)
class WindowedOp:
    """A convolution or pooling layer seen as: pad the input explicitly, then run
    ``apply`` with no implicit padding. Per spatial axis (rows, columns)."""

    span: tuple[int, int]  # input pixels one output pixel reads, dilation included: (k - 1) * d + 1
    stride: tuple[int, int]
    pad_before: tuple[int, int]  # top, left
    pad_after: tuple[int, int]  # bottom, right: what the last output window reaches past the input
    pad_value: float
    apply: Callable[[torch.Tensor], torch.Tensor]
    correction: torch.Tensor | None = None  # (1, 1, Ho, Wo): the layer's divisor over the kernel area (avg pooling)

    def padded(self, value: torch.Tensor) -> torch.Tensor:
        (top, left), (bottom, right) = self.pad_before, self.pad_after
        return F.pad(value, (left, right, top, bottom), value=self.pad_value)


def _pair(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def _same_before(size: int, kernel: int, stride: int, dilation: int) -> int:
    """timm's dynamic 'SAME' padding: the total split with the smaller half first."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2


def _pads(module: nn.Module, kernel, stride, dilation, in_hw) -> tuple[int, int] | None:
    """Top and left padding of a windowed module, or None when it pads otherwise."""
    if isinstance(module, (Conv2dSame, MaxPool2dSame, AvgPool2dSame)):
        # AvgPool2dSame pads without dilation
        dil = (1, 1) if isinstance(module, AvgPool2dSame) else dilation
        return tuple(_same_before(in_hw[i], kernel[i], stride[i], dil[i]) for i in range(2))
    padding = module.padding
    if padding == "valid":
        return (0, 0)
    if padding == "same":  # torch: the odd pixel goes after
        return tuple((dilation[i] * (kernel[i] - 1)) // 2 for i in range(2))
    return _pair(padding)


def windowed_op(module: nn.Module, in_shape: torch.Size, out_shape: torch.Size) -> WindowedOp | None:
    """The patch recipe of a convolution or pooling module, or None if it is not one
    this engine reproduces exactly (other padding modes, returned indices, ...)."""
    in_hw, out_hw = tuple(in_shape[-2:]), tuple(out_shape[-2:])
    kind = type(module)
    if kind in (nn.Conv2d, Conv2dSame):
        if module.padding_mode != "zeros":
            return None
        kernel, stride, dilation = _pair(module.kernel_size), _pair(module.stride), _pair(module.dilation)

        def apply(x, m=module):
            return F.conv2d(x, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)

        pad_value = 0.0
    elif kind in (nn.MaxPool2d, MaxPool2dSame):
        if module.return_indices:
            return None
        kernel, dilation = _pair(module.kernel_size), _pair(module.dilation)
        stride = _pair(module.stride if module.stride is not None else module.kernel_size)

        def apply(x, k=kernel, s=stride, d=dilation):
            return F.max_pool2d(x, k, s, 0, d)

        pad_value = -math.inf
    elif kind in (nn.AvgPool2d, AvgPool2dSame):
        kernel, dilation = _pair(module.kernel_size), (1, 1)
        stride = _pair(module.stride if module.stride is not None else module.kernel_size)

        def apply(x, k=kernel, s=stride):
            return F.avg_pool2d(x, k, s, 0, False, True)

        pad_value = 0.0
    elif kind in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
        # a fixed window only when the map divides evenly (e.g. 7x7 -> 7x7)
        if any(size % out for size, out in zip(in_hw, out_hw)) or getattr(module, "return_indices", False):
            return None
        kernel = stride = tuple(size // out for size, out in zip(in_hw, out_hw))
        dilation = (1, 1)
        average = kind is nn.AdaptiveAvgPool2d

        def apply(x, k=kernel, average=average):
            return F.avg_pool2d(x, k, k) if average else F.max_pool2d(x, k, k)

        return WindowedOp(kernel, stride, (0, 0), (0, 0), 0.0, apply)
    else:
        return None
    before = _pads(module, kernel, stride, dilation, in_hw)
    if before is None:
        return None
    span = tuple((kernel[i] - 1) * dilation[i] + 1 for i in range(2))
    # what the last output window needs past the input (ceil_mode, asymmetric 'same')
    after = tuple(max(0, (out_hw[i] - 1) * stride[i] + span[i] - in_hw[i] - before[i]) for i in range(2))
    op = WindowedOp(span, stride, before, after, pad_value, apply)
    if kind in (nn.AvgPool2d, AvgPool2dSame):
        op = dataclasses.replace(op, correction=_divisor_correction(module, op, in_hw))
    return op


def _divisor_correction(module: nn.Module, op: WindowedOp, in_hw) -> torch.Tensor | None:
    """Average pooling divides by the kernel area on our explicitly padded input;
    the layer may divide by fewer (count_include_pad=False, ceil_mode, a divisor
    override). On ones both count the same real pixels, so their ratio is the
    per-pixel factor that turns ours into the layer's."""
    ones = torch.ones(1, 1, *in_hw, dtype=torch.float64)
    with torch.no_grad():
        factor = module(ones) / op.apply(op.padded(ones))
    if torch.allclose(factor, torch.ones_like(factor), rtol=0, atol=1e-12):
        return None
    return factor.float()


def is_pointwise_module(module: nn.Module) -> bool:
    if isinstance(module, DROPOUT_MODULES):
        return not module.training
    if type(module) in (nn.BatchNorm2d, BatchNormAct2d):
        # eval mode with running statistics: a per-channel affine map
        fixed = not module.training and module.running_mean is not None and module.running_var is not None
        if type(module) is BatchNormAct2d:
            return fixed and is_pointwise_module(module.act) and is_pointwise_module(module.drop)
        return fixed
    return isinstance(module, ACTIVATION_MODULES)


def is_pointwise_node(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Each output pixel depends on the same pixel of the inputs only (shapes are
    checked separately, on the traced values)."""
    if node.op == "call_module":
        return is_pointwise_module(modules[node.target])
    if node.op == "call_function":
        if node.target in (torch.cat, torch.concat):
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            return dim in CHANNEL_DIMS
        if node.target is F.batch_norm:  # eval mode with running statistics only
            args = dict(zip(("input", "running_mean", "running_var", "weight", "bias", "training"), node.args)) | dict(node.kwargs)
            return args.get("training", False) is False and args.get("running_mean") is not None
        if node.target is F.dropout:
            return node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True) is False
        return node.target in POINTWISE_FUNCTIONS
    if node.op == "call_method":
        return node.target in POINTWISE_METHODS
    return False
