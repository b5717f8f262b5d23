"""Score selection on torch tensors: the differentiable value a method explains
or maximizes, per input, for each kind of target (see ``cnnviz_core.targets``).

- a class: its logit, or its softmax probability with ``score="prob"``;
- ``layer:channel``: the channel's mean over the spatial positions of the
  layer's output (the same value whatever the input size);
- ``layer:channel@y,x``: that single unit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from cnnviz_core import Target, resolve_classes

if TYPE_CHECKING:  # torch loads when a score is taken
    import torch


def class_scores(logits: torch.Tensor, classes: np.ndarray, score: str = "logit") -> torch.Tensor:
    """(b,) the explained score per input, differentiable: the logit of
    ``classes[i]`` for input i, or its softmax probability (``score="prob"``)."""
    import torch

    index = torch.as_tensor(classes, device=logits.device).view(-1, 1)
    values = logits.float().softmax(dim=1) if score == "prob" else logits.float()
    return values.gather(1, index).squeeze(1)


def neuron_score(output: torch.Tensor, target: Target, full_size: Sequence[int] | None = None) -> torch.Tensor:
    """A neuron target's value (a 0-d tensor) from one input's layer output
    ``output`` (C, ...): the channel's mean over positions, or the unit at
    ``@y,x``. ``full_size``, the map's (h, w) at the model's input size, maps
    the position onto a smaller or larger map (an image at another scale)."""
    channel = output[target.channel]
    if target.position is None:
        return channel.float().mean()
    y, x = target.position
    if full_size is not None and tuple(full_size[-2:]) != tuple(channel.shape[-2:]):
        height, width = channel.shape[-2:]
        y = min(int(y * height / full_size[-2]), height - 1)
        x = min(int(x * width / full_size[-1]), width - 1)
    return channel[y, x].float()


def target_scores(
    targets: Sequence[Target],
    logits: torch.Tensor | None,
    outputs: Mapping[str, torch.Tensor],
    classes: np.ndarray | None = None,
    score: str = "logit",
) -> torch.Tensor:
    """(b,) one score per input: :func:`class_scores` for class and top-1
    targets and :func:`neuron_score` of ``outputs[layer][i]`` for neuron
    targets. ``classes``: the class explained per input (neuron rows ignored);
    by default resolved from ``targets`` and ``logits``."""
    import torch

    class_rows = [i for i, t in enumerate(targets) if t.kind != "neuron"]
    by_class = None
    if class_rows:
        if classes is None:
            classes = np.zeros(len(targets), dtype=np.int64)
            rows_logits = logits.detach()[class_rows].float().cpu().numpy()
            classes[class_rows] = resolve_classes([targets[i] for i in class_rows], rows_logits)
        by_class = class_scores(logits, np.maximum(np.asarray(classes), 0), score)
    values = [
        neuron_score(outputs[t.layer][i], t) if t.kind == "neuron" else by_class[i]
        for i, t in enumerate(targets)
    ]
    return torch.stack(values)
