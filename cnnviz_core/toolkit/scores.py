"""Score selection on torch tensors: the differentiable value a method explains
or maximizes, per input, for each kind of target (see ``cnnviz_core.targets``).

- a class: its logit, or its softmax probability with ``score="prob"``;
- ``layer:channel``: the channel's mean over the spatial positions of the
  layer's output (the same value whatever the input size);
- ``layer:channel@y,x``: that single unit;
- callable, multilabel, region (Seg-Grad-CAM) and detection targets, scored
  from the model's whole output: :func:`explained_scores`, which takes every
  kind and is what the toolkit's gradient methods call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from cnnviz_core import Target, TargetError, resolve_classes

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


# -- targets scored from the model's whole output ------------------------------------------------


def explained_scores(
    outputs,
    targets: Sequence[Target],
    score: str = "logit",
    layer_outputs: Mapping[str, torch.Tensor] | None = None,
    input_size: Sequence[int] | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """(b,) the differentiable score of each input's target, and (b,) the
    class explained (-1 for neuron and callable targets), from ``outputs``,
    what the model returned for the batch. Every target kind of
    ``cnnviz_core.targets`` in one call:

    - class / top1: the logit (or softmax probability, ``score="prob"``) of
      (B, classes) logits;
    - neuron: :func:`neuron_score` of ``layer_outputs[layer][i]``;
    - callable: ``function(outputs)[i]``, the function called once per batch;
    - multilabel: sigmoid of the label's logit (``score`` does not apply);
    - region: :func:`region_score` of a segmentation output (B, K, h, w), or a
      dict holding it under ``"out"`` (torchvision's FCN, DeepLabV3);
    - detection: :func:`detection_score` of a detector's detections.

    ``input_size`` (H, W): the size of the input that boxes and masks are given
    in; a segmentation output of another size has them scaled to it."""
    import torch

    classes = resolve_explained_classes(outputs, targets)
    values = []
    called: dict[int, torch.Tensor] = {}
    for i, target in enumerate(targets):
        kind = target.kind
        if kind in ("class", "top1"):
            values.append(class_scores(_logits(outputs, target)[i : i + 1], classes[i : i + 1], score)[0])
        elif kind == "neuron":
            if layer_outputs is None or target.layer not in layer_outputs:
                raise TargetError(f"neuron target {target.describe()}: layer {target.layer!r} was not captured in the forward pass")
            values.append(neuron_score(layer_outputs[target.layer][i], target))
        elif kind == "multilabel":
            values.append(torch.sigmoid(_logits(outputs, target)[i, target.class_index].float()))
        elif kind == "callable":
            key = id(target.function)
            if key not in called:
                called[key] = _called(target, outputs, len(targets))
            values.append(called[key][i])
        elif kind == "region":
            values.append(region_score(segmentation_logits(outputs)[i], target, input_size))
        elif kind == "detection":
            values.append(detection_score(detections_of(outputs, i), target))
        else:
            raise TargetError(f"unknown target kind {kind!r}")
    return torch.stack(values), classes


def resolve_explained_classes(outputs, targets: Sequence[Target]) -> np.ndarray:
    """(b,) the class each target explains: top-1 taken from the logits, -1
    for neuron and callable targets."""
    classes = np.full(len(targets), -1, dtype=np.int64)
    for i, target in enumerate(targets):
        if target.kind == "top1":
            classes[i] = int(_logits(outputs, target)[i].detach().float().argmax())
        elif target.class_index is not None:
            classes[i] = target.class_index
    return classes


def _logits(outputs, target: Target) -> torch.Tensor:
    import torch

    if isinstance(outputs, torch.Tensor) and outputs.dim() == 2:
        return outputs
    shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
    raise TargetError(
        f"target {target.describe()} needs (B, classes) logits but the model returns {shape}: give a "
        "region:CLASS[@x0,y0,x1,y1] target for a segmentation map, a detection:CLASS@x0,y0,x1,y1 target for a "
        "detector, or a callable target=lambda outputs: ... returning one score per input"
    )


def _called(target: Target, outputs, batch: int) -> torch.Tensor:
    import torch

    values = target.function(outputs)
    if not isinstance(values, torch.Tensor):
        raise TargetError(f"target {target.describe()} returned {type(values).__name__}: it must return a torch tensor "
                          f"of shape ({batch},), one score per input, computed from the outputs (so gradients flow)")
    if tuple(values.shape) != (batch,):
        raise TargetError(f"target {target.describe()} returned shape {tuple(values.shape)}: it must return one score per "
                          f"input, shape ({batch},) (reduce each input's outputs to one number, e.g. outputs[:, k])")
    return values.float()


def segmentation_logits(outputs) -> torch.Tensor:
    """(B, K, h, w) class logits from a segmentation model's output: the tensor
    itself, or the ``"out"`` entry of a dict (torchvision's FCN / DeepLabV3)."""
    import torch

    if isinstance(outputs, Mapping) and "out" in outputs:
        outputs = outputs["out"]
    if isinstance(outputs, torch.Tensor) and outputs.dim() == 4:
        return outputs
    shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
    raise TargetError(f"a region target needs a segmentation output (B, classes, h, w) (or a dict with it under 'out'); "
                      f"the model returns {shape}")


def region_mask(target: Target, size: Sequence[int], input_size: Sequence[int] | None) -> np.ndarray:
    """(h, w) booleans: the positions of an (h, w) output map that ``target``'s
    box or mask covers. A box (in input pixels) keeps the positions whose
    centres fall inside it once the map is stretched over the input; a mask of
    the input's size is resized (nearest) to the map's."""
    height, width = int(size[0]), int(size[1])
    full = tuple(int(v) for v in input_size[-2:]) if input_size is not None else (height, width)
    if target.mask is not None:
        mask = target.mask
        if mask.shape == (height, width):
            return mask
        if mask.shape != full:
            raise TargetError(f"region mask of shape {mask.shape} fits neither the input ({full[0]}x{full[1]}) nor the "
                              f"model's {height}x{width} output")
        rows = np.minimum((np.arange(height) + 0.5) * full[0] / height, full[0] - 1).astype(int)
        cols = np.minimum((np.arange(width) + 0.5) * full[1] / width, full[1] - 1).astype(int)
        mask = mask[np.ix_(rows, cols)]
    elif target.box is None:
        return np.ones((height, width), dtype=bool)
    else:
        x0, y0, x1, y1 = target.box
        ys = (np.arange(height) + 0.5) * full[0] / height
        xs = (np.arange(width) + 0.5) * full[1] / width
        mask = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    if not mask.any():
        raise TargetError(f"target {target.describe()} covers no position of the model's {height}x{width} output "
                          f"(input {full[0]}x{full[1]}): give a larger box or mask")
    return mask


def region_score(segmentation: torch.Tensor, target: Target, input_size: Sequence[int] | None = None) -> torch.Tensor:
    """Seg-Grad-CAM's score (Vinogradova et al. 2020): the sum of the class's
    logits over the region, from one input's (K, h, w) output."""
    import torch

    classes = segmentation.shape[0]
    if target.class_index >= classes:
        raise TargetError(f"region target class {target.class_index} is out of range: the output has {classes} classes")
    mask = region_mask(target, segmentation.shape[-2:], input_size)
    weights = torch.from_numpy(mask.astype(np.float32)).to(segmentation.device)  # a copy: masks are read-only
    return (segmentation[target.class_index].float() * weights).sum()


def detections_of(outputs, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(boxes (n, 4), scores (n,), labels (n,)) of input ``index``: from a
    list of torchvision-style dicts, or from a (B, N, 6) tensor of rows
    (x0, y0, x1, y1, score, label) (``cnnviz_adapters.DetectionModel``)."""
    import torch

    if isinstance(outputs, (list, tuple)) and outputs and isinstance(outputs[index], Mapping):
        found = outputs[index]
        if all(key in found for key in ("boxes", "scores", "labels")):
            return found["boxes"], found["scores"], found["labels"]
    if isinstance(outputs, torch.Tensor) and outputs.dim() == 3 and outputs.shape[-1] == 6:
        rows = outputs[index]
        return rows[:, :4], rows[:, 4], rows[:, 5].round().long()
    shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
    raise TargetError(f"a detection target needs a detector's detections (a list of dicts with boxes, scores and labels, "
                      f"or (B, N, 6) rows from cnnviz_adapters.DetectionModel); the model returns {shape}")


def box_iou(boxes: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """(n,) IoU of each (x0, y0, x1, y1) row of ``boxes`` with ``box``; differentiable."""
    import torch

    top_left = torch.maximum(boxes[:, :2], box[:2])
    bottom_right = torch.minimum(boxes[:, 2:], box[2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    areas = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)
    union = areas + (box[2:] - box[:2]).prod() - inter
    return inter / union.clamp(min=1e-12)


def detection_score(detections: tuple[torch.Tensor, torch.Tensor, torch.Tensor], target: Target) -> torch.Tensor:
    """The best-matching detection's IoU(detection, target box) × its score,
    over the detections labelled with the target's class; 0 (still in the
    graph, so its gradient is zero) when there is none."""
    import torch

    boxes, scores, labels = detections
    box = torch.as_tensor(target.box, dtype=torch.float32, device=boxes.device)
    same = labels == target.class_index
    if not bool(same.any()):
        return scores.float().sum() * 0.0
    matched = box_iou(boxes[same].float(), box) * scores[same].float()
    return matched.max()
