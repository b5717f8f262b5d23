"""What an activation-maximizing method maximizes, per item: a class logit, a
channel's mean activation over positions (``layer:channel``), one unit
(``layer:channel@y,x``) — the toolkit's score selection — or a whole layer
(DeepDream's ``--layer``: the mean of squares).

The forward pass stops as soon as every layer a batch needs has run, when no
item needs the logits (the toolkit's :func:`read_layers`): amplifying a
mid-level layer costs that layer's share of the network, not the whole of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnviz_core import InputError, Target, TargetError
from cnnviz_core.toolkit import class_scores, neuron_score, read_layers

if TYPE_CHECKING:  # annotations only; torch loads where a function runs on a model
    import torch


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
    import torch

    modules = {name: adapter.get_layer(name) for name in sorted(layers)}
    x = inputs.contiguous(memory_format=torch.channels_last)  # faster NHWC convolutions, as the adapter feeds
    logits, outputs = read_layers(adapter.module, x, modules, stop_early=not need_logits)
    missing = sorted(set(modules) - set(outputs))
    if missing:
        raise InputError(f"layer(s) {', '.join(missing)} did not run in the forward pass; pick another layer")
    for name, output in outputs.items():
        if not isinstance(output, torch.Tensor):
            raise InputError(f"layer {name!r} returns {type(output).__name__}, not a tensor; pick another layer")
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
    import torch

    values = []
    for i, target in enumerate(targets):
        if target.kind == "class":
            values.append(class_scores(logits[i : i + 1], [target.class_index])[0])
        elif target.kind == "neuron":
            values.append(neuron_score(outputs[target.layer][i], target, (reference_shapes or {}).get(target.layer)))
        elif target.kind == "top1" and whole_layer is not None:
            values.append(outputs[whole_layer][i].float().pow(2).mean())
        else:
            raise TargetError(f"no objective for target {target.describe()}")
    return torch.stack(values).float()
