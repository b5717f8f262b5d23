"""Modified backward passes through ReLU-like modules: guided backpropagation
(Springenberg et al. 2015) and the deconvnet rule (Zeiler & Fergus 2014).

Forward values are unchanged. Each ReLU, ReLU6, LeakyReLU and Hardtanh module
(in-place or not) gets a temporary forward whose backward follows the rule;
the original forward is restored on exit, on success and on error.
Nonlinearities that cannot be guided — SiLU/GELU-style modules and functional
activation calls in a model's forward — pass the plain gradient, and a
MethodWarning says what was and was not modified."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnviz_core import MethodWarning

RULES = ("guided", "deconvnet")
GUIDABLE = (nn.ReLU, nn.LeakyReLU, nn.Hardtanh)  # ReLU6 is a Hardtanh
UNGUIDABLE = (nn.SiLU, nn.GELU, nn.Mish, nn.Hardswish, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.PReLU, nn.Tanh)
FUNCTIONAL_ACTIVATIONS = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", torch.Tensor.relu: "relu", torch.Tensor.relu_: "relu",
    F.relu6: "relu6", F.hardtanh: "hardtanh", F.leaky_relu: "leaky_relu",
    F.silu: "silu", F.gelu: "gelu", F.mish: "mish", F.hardswish: "hardswish", F.elu: "elu",
}

_state = threading.local()  # inside one of our guided forwards: not a stray functional call


def _piecewise(module: nn.Module):
    """(forward function, mask of where the local derivative is non-zero, the
    derivative's value below zero) of a guidable module, never in place."""
    if isinstance(module, nn.ReLU):
        return torch.relu, (lambda x: x > 0), 0.0
    if isinstance(module, nn.LeakyReLU):
        slope = module.negative_slope
        return (lambda x: F.leaky_relu(x, slope)), (lambda x: x > 0), slope
    low, high = module.min_val, module.max_val
    return (lambda x: F.hardtanh(x, low, high)), (lambda x: (x > low) & (x < high)), 0.0


class _RuleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, function, active, leak, rule):
        ctx.rule, ctx.leak = rule, leak
        # Only the boolean mask is kept for the backward: a quarter of x's memory.
        ctx.save_for_backward(active(x) if rule == "guided" else x.new_empty(0))
        return function(x)

    @staticmethod
    def backward(ctx, grad_output):
        positive = grad_output > 0
        if ctx.rule == "deconvnet":  # Zeiler–Fergus: ReLU on the backward signal alone
            return torch.where(positive, grad_output, 0.0), None, None, None, None
        (active,) = ctx.saved_tensors  # guided: positive upstream gradient and positive forward input
        guided = torch.where(positive & active, grad_output, 0.0)
        if ctx.leak:
            guided = guided + torch.where(positive & ~active, grad_output * ctx.leak, 0.0)
        return guided, None, None, None, None


def _guided_forward(module: nn.Module, rule: str):
    function, active, leak = _piecewise(module)

    def forward(x):
        _state.depth = getattr(_state, "depth", 0) + 1
        try:
            return _RuleFunction.apply(x, function, active, leak, rule)
        finally:
            _state.depth -= 1

    return forward


def _shielded_forward(module: nn.Module):
    """The module's own forward, marked so its activation call is not counted
    again as a stray functional call (the module is already reported)."""
    original = type(module).forward

    def forward(*args, **kwargs):
        _state.depth = getattr(_state, "depth", 0) + 1
        try:
            return original(module, *args, **kwargs)
        finally:
            _state.depth -= 1

    return forward


class _StrayActivationCounter(TorchFunctionMode):
    """Counts functional activation calls made outside guided modules."""

    def __init__(self):
        super().__init__()
        self.calls: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = FUNCTIONAL_ACTIVATIONS.get(func)
        if name is not None and not getattr(_state, "depth", 0):
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))


@dataclasses.dataclass
class RuleReport:
    rule: str
    modified: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    unguided_modules: dict[str, str] = dataclasses.field(default_factory=dict)  # name → type
    stray_calls: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def message(self, method: str) -> str | None:
        if not self.unguided_modules and not self.stray_calls and self.modified:
            return None
        done = ", ".join(f"{n} {t}" for t, n in sorted(self.modified.items())) or "no module"
        skipped = collections.Counter(self.unguided_modules.values())
        parts = [f"{n} {t} module(s)" for t, n in sorted(skipped.items())]
        parts += [f"{n} functional {f}() call(s)" for f, n in sorted(self.stray_calls.items())]
        examples = ", ".join(list(self.unguided_modules)[:3])
        return (
            f"{method}: the {self.rule} rule was applied to {done}; not modified: {', '.join(parts) or 'none'}"
            f"{' (' + examples + ' …)' if examples else ''} — gradients pass through those unguided, "
            "so the result mixes the rule with the plain gradient"
            + ("" if self.modified else "; with nothing modified this is the plain gradient")
        )


@contextlib.contextmanager
def backward_rule(model: nn.Module, rule: str, method: str):
    """Apply ``rule`` to every ReLU-like module of ``model`` for the duration;
    yield a RuleReport. Warns once, on exit, if anything could not be guided."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}")
    report = RuleReport(rule)
    patched: list[tuple[nn.Module, object]] = []
    counter = _StrayActivationCounter()
    try:
        for name, module in model.named_modules():
            if isinstance(module, GUIDABLE):
                patched.append((module, module.__dict__.get("forward")))
                module.forward = _guided_forward(module, rule)
                report.modified[type(module).__name__] += 1
            elif isinstance(module, UNGUIDABLE):
                patched.append((module, module.__dict__.get("forward")))
                module.forward = _shielded_forward(module)
                report.unguided_modules[name] = type(module).__name__
        with counter:
            yield report
    finally:
        for module, previous in patched:
            if previous is None:
                del module.__dict__["forward"]
            else:
                module.__dict__["forward"] = previous
    report.stray_calls = counter.calls
    message = report.message(method)
    if message:
        warnings.warn(message, MethodWarning, stacklevel=3)
