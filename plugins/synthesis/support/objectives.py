"""What an activation-maximizing method maximizes, per item: a class logit, a
channel's mean activation (``layer:channel``), one unit (``layer:channel@y,x``),
or a whole layer (DeepDream's ``--layer``: the mean of squares).

The forward pass stops as soon as every layer a batch needs has run, when no
item needs the logits: amplifying a mid-level layer costs that layer's share
of the network, not the whole of it."""

from __future__ import annotations

import torch

from cnnviz_core.errors import InputError, TargetError
from cnnviz_core.targets import Target
from cnnviz_core.toolkit.hooks import forward_hooks


class _LayersDone(Exception):
    """Raised from a hook to end a forward pass early (never leaves this module)."""


def check_neuron_targets(adapter, targets: list[Target]) -> None:
    """Layer names, channels and positions of neuron targets, checked against
    the layers' output shapes at the model's input size."""
    neurons = [t for t in targets if t.kind == "neuron"]
    if not neurons:
        return
    for target in neurons:
        adapter.check_layer(target.layer)
    shapes = adapter.layer_shapes(sorted({t.layer for t in neurons}))
    for target in neurons:
        shape = shapes.get(target.layer)
        if shape is None or len(shape) < 2:
            raise TargetError(f"layer {target.layer!r} has no channel dimension (output {shape}); pick another layer")
        if target.channel >= shape[1]:
            raise TargetError(f"layer {target.layer!r} has {shape[1]} channels (0..{shape[1] - 1}); channel {target.channel} is out of range")
        if target.position is not None:
            if len(shape) != 4:
                raise TargetError(f"layer {target.layer!r} has no spatial map (output {shape}); drop @y,x")
            y, x = target.position
            if not (y < shape[2] and x < shape[3]):
                raise TargetError(f"position {y},{x} is outside layer {target.layer!r}'s {shape[2]}x{shape[3]} map")


def layers_needed(targets: list[Target], whole_layer: str | None = None) -> set[str]:
    """The layers whose outputs a batch's objectives read; ``whole_layer`` is
    what a top-1 target means for methods that amplify a whole layer."""
    names = {t.layer for t in targets if t.kind == "neuron"}
    if whole_layer is not None and any(t.kind == "top1" for t in targets):
        names.add(whole_layer)
    return names


def forward(adapter, inputs: torch.Tensor, layers: set[str], need_logits: bool) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """One forward of the (normalized) inputs, keeping the named layers'
    outputs in the autograd graph. Without ``need_logits`` it stops once the
    last of those layers has run and returns no logits."""
    modules = {name: adapter.get_layer(name) for name in layers}
    outputs: dict[str, torch.Tensor] = {}

    def make_hook(name):
        def hook(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise InputError(f"layer {name!r} returns {type(output).__name__}, not a tensor; pick another layer")
            outputs[name] = output
            if not need_logits and len(outputs) == len(modules):
                raise _LayersDone
            # the rest of the forward gets a copy: an in-place op after the
            # layer (ReLU(inplace=True)) must not change what the objective reads
            return output.clone()

        return hook

    x = inputs.contiguous(memory_format=torch.channels_last)  # faster NHWC convolutions, as the adapter feeds
    logits = None
    with forward_hooks(modules, make_hook):
        try:
            logits = adapter.module(x)
        except _LayersDone:
            pass
    missing = sorted(set(modules) - set(outputs))
    if missing:
        raise InputError(f"layer(s) {', '.join(missing)} did not run in the forward pass; pick another layer")
    return logits, outputs


def objective_values(
    targets: list[Target],
    logits: torch.Tensor | None,
    outputs: dict[str, torch.Tensor],
    whole_layer: str | None = None,
    reference_shapes: dict[str, tuple[int, ...]] | None = None,
) -> torch.Tensor:
    """Per item (b,): class → its logit; ``layer:channel`` → the channel's mean
    activation; ``layer:channel@y,x`` → that unit; top-1 with ``whole_layer`` →
    the mean of squares of that layer's whole output (DeepDream). When the
    image is smaller than the model's input size (DeepDream's octaves),
    ``reference_shapes`` (the layers' shapes at full size) rescale positions
    to the smaller map."""
    values = []
    for i, target in enumerate(targets):
        if target.kind == "class":
            values.append(logits[i, target.class_index])
        elif target.kind == "neuron":
            unit = outputs[target.layer][i, target.channel]
            if target.position is None:
                values.append(unit.mean())
            else:
                y, x = _scaled_position(target.position, unit.shape, (reference_shapes or {}).get(target.layer))
                values.append(unit[y, x])
        elif target.kind == "top1" and whole_layer is not None:
            values.append(outputs[whole_layer][i].float().pow(2).mean())
        else:
            raise TargetError(f"no objective for target {target.describe()}")
    return torch.stack(values).float()


def _scaled_position(position: tuple[int, int], shape, reference) -> tuple[int, int]:
    if reference is None or tuple(reference[-2:]) == tuple(shape[-2:]):
        return position
    height, width = shape[-2:]
    return (min(int(position[0] * height / reference[-2]), height - 1), min(int(position[1] * width / reference[-1]), width - 1))
