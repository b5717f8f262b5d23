"""Exact incremental occlusion: Krypton's incremental inference (Nakandala,
Kumar & Papakonstantinou, SIGMOD 2019) on a torch.fx trace of the model.

Every node's output for the clean image is kept once. An occluding window
changes only a box of each feature map; that box is propagated node by node
(a convolution or pooling grows it by its kernel's reach and divides it by its
stride, element-wise ops keep it, element-wise ops on several maps take the
union) and only the changed patch is recomputed, from the clean map around it,
for a whole batch of windows at once. At the first node that cannot be
computed on a patch (global pooling, a linear layer, an op it does not know) or
once the box covers more than ``full_above`` of the map, the patched maps are
rebuilt whole and the rest of the model runs on them as usual."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from cnnviz_core import InputError, MethodError
from cnnviz_plugins.attribution.occlusion.incremental.graph import METHOD, Graph, trace
from cnnviz_plugins.attribution.occlusion.incremental.regions import Region, box_rows, boxes_region, halo, paste_rows, through_window, union

FULL_ABOVE = 0.75  # recompute whole maps once a window's box covers more than this share of one (FLOPs fall up to here; overheads are small)
BATCH_SIZE = 64  # windows per batch
DESCRIBED_WINDOW = (16, 16)


@dataclasses.dataclass(frozen=True)
class _State:
    """How one node's output is held for a batch of windows."""

    mode: str  # "clean": as for the clean image; "patch": a box per window; "full": whole maps
    region: Region | None = None


CLEAN, FULL = _State("clean"), _State("full")


def _as_rows(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N*h*w, C): a view when the maps are channels-last."""
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


def _as_maps(rows: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """(N*h*w, C) -> (N, C, h, w), channels-last."""
    return rows.view(n, h, w, rows.shape[1]).permute(0, 3, 1, 2)


class IncrementalOcclusion:
    """Logits of a model on many occluded copies of one image, recomputing per
    window only the part of each feature map the window changes."""

    def __init__(self, graph: Graph, input_shape: tuple[int, int, int, int], full_above: float, batch_size: int):
        self.graph = graph
        self.input_shape = tuple(input_shape)
        self.full_above = full_above
        self.batch_size = batch_size
        self.plain = not graph.safe  # run the module itself on the occluded images
        self._modes = [m.training for m in graph.module.modules()]  # what the analysis assumed
        self._last_use = {node: max((graph.position[u] for u in node.users), default=-1) for node in graph.nodes}
        self._image: torch.Tensor | None = None
        self._fill: torch.Tensor | None = None
        self._clean: dict[fx.Node, Any] = {}
        self._rows_cache: dict[Any, Any] = {}
        self._fill_rows: torch.Tensor | None = None

    # -- construction --------------------------------------------------------------
    @classmethod
    def build(cls, module: nn.Module, input_shape: tuple[int, int, int, int], *, full_above: float = FULL_ABOVE,
              batch_size: int = BATCH_SIZE) -> "IncrementalOcclusion":
        """Trace the model once for inputs of shape (1, 3, H, W). Raises
        MethodError("occlusion", reason) if the model cannot be traced at all."""
        if len(input_shape) != 4 or input_shape[0] != 1:
            raise InputError(f"{METHOD}: input_shape must be (1, channels, height, width), got {tuple(input_shape)}")
        if not 0 < full_above <= 1:
            raise InputError(f"{METHOD}: full_above must lie in (0, 1], got {full_above}")
        graph = Graph(module, *trace(module))
        parameter = next(module.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
        probe = torch.randn(input_shape, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
        probe = probe.contiguous(memory_format=torch.channels_last)
        reference = graph.analyze(probe.clone())
        if not isinstance(reference, torch.Tensor) or reference.dim() != 2 or reference.shape[0] != 1:
            raise MethodError(METHOD, f"incremental occlusion needs a model returning (batch, classes) logits; "
                                      f"{type(module).__name__} returns {getattr(reference, 'shape', type(reference).__name__)}")
        engine = cls(graph, input_shape, full_above, batch_size)
        if not engine.plain:
            engine._verify(probe, reference)
        return engine

    def _verify(self, probe: torch.Tensor, reference: torch.Tensor) -> None:
        """On the probe image: the interpreter must give the model's output, and
        each patch-computable node must give its own output when computed as a
        patch covering the whole map; a node that does not is recomputed whole."""
        with torch.inference_mode():
            self._prepare(probe[0], probe[0])
            if not _close(self._clean[self.graph.output_node()], reference):
                self.plain = True
                return
            for node in self.graph.nodes:
                info = self.graph.info[node]
                if info.kind not in ("windowed", "pointwise"):
                    continue
                height, width = info.shape[-2:]
                whole = Region(np.zeros(1, np.int64), np.zeros(1, np.int64), height, width, height, width)
                plan = {a: CLEAN for a in info.inputs}
                try:
                    got = self._patch(node, plan, {}, whole, 1, {})
                except Exception:  # noqa: BLE001 - an op that refuses a crop is recomputed whole
                    got = None
                if got is None or got.shape != info.shape or not _close(got, self._clean[node]):
                    info.kind = "other"
        self._forget()

    # -- the clean image -------------------------------------------------------------
    def _forget(self) -> None:
        self._image = self._fill = self._fill_rows = None
        self._clean, self._rows_cache = {}, {}

    def _prepare(self, image: torch.Tensor, fill: torch.Tensor) -> None:
        """Clean activations of this image (kept while the same image comes back)."""
        if self._image is None or not torch.equal(image, self._image):
            self._forget()
            x = image[None].contiguous(memory_format=torch.channels_last)
            self._clean = self.graph.run(x)
            self._image = image.clone()
        if self._fill is None or not torch.equal(fill, self._fill):
            self._fill = fill.clone()
            self._fill_rows = _as_rows(fill[None].contiguous(memory_format=torch.channels_last))

    def _rows(self, node: fx.Node) -> torch.Tensor:
        if node not in self._rows_cache:
            self._rows_cache[node] = _as_rows(self._clean[node])
        return self._rows_cache[node]

    def _padded_rows(self, node: fx.Node, op) -> tuple[torch.Tensor, int]:
        key = (node, op.pad_before, op.pad_after, op.pad_value)
        if key not in self._rows_cache:
            padded = op.padded(self._clean[node])
            self._rows_cache[key] = (_as_rows(padded), padded.shape[-1])
        return self._rows_cache[key]

    # -- planning --------------------------------------------------------------------
    def _plan(self, boxes: np.ndarray) -> dict[fx.Node, _State]:
        """Each node's state for windows that share one size."""
        height, width = self.input_shape[-2:]
        plan: dict[fx.Node, _State] = {}
        for node in self.graph.nodes:
            info = self.graph.info[node]
            if info.kind == "constant":
                plan[node] = CLEAN
            elif info.kind == "input":
                plan[node] = _State("patch", boxes_region(boxes, height, width))
            elif info.kind == "output":
                continue
            else:
                states = [plan[a] for a in info.inputs]
                if all(s is CLEAN for s in states):
                    # values other than tensors (sizes, tuples) may hold the batch size: recomputed
                    plan[node] = CLEAN if info.shape is not None else FULL
                elif info.kind == "other" or any(s is FULL for s in states):
                    plan[node] = FULL
                else:
                    if info.kind == "windowed":
                        region = through_window(states[0].region, info.op, info.shape[-2:])
                    else:
                        region = union([s.region for s in states if s.mode == "patch"])
                    if region is None:
                        plan[node] = CLEAN  # no window reaches this map
                    elif region.fraction >= 1 or region.fraction > self.full_above:
                        plan[node] = FULL
                    else:
                        plan[node] = _State("patch", region)
        return plan

    # -- running -------------------------------------------------------------------------
    def _run(self, plan: dict[fx.Node, _State], start: int, stop: int) -> torch.Tensor:
        n = stop - start
        live: dict[fx.Node, Any] = {}
        regions = {node: s.region.take(start, stop) for node, s in plan.items() if s.mode == "patch"}
        result = None
        for index, node in enumerate(self.graph.nodes):
            info = self.graph.info[node]
            if info.kind == "input":
                region = regions[node]
                rows = box_rows(region.y, region.x, region.h, region.w, region.width, self._fill_rows.device)
                live[node] = _as_maps(self._fill_rows.index_select(0, rows), n, region.h, region.w)
            elif info.kind == "output":
                result = self._materialize(node.args[0], plan, live, regions, n, copy=False)
            elif plan[node].mode == "patch":
                live[node] = self._patch(node, plan, live, regions[node], n, regions)
            elif plan[node] is FULL:
                live[node] = self._full(node, plan, live, regions, n)
            for arg in node.all_input_nodes:
                if self._last_use[arg] == index:
                    live.pop(arg, None)
        return result

    def _patch(self, node, plan, live, region: Region, n: int, regions: dict) -> torch.Tensor:
        """Recompute one node on each window's box of its output."""
        info = self.graph.info[node]
        if info.kind == "windowed":
            op = info.op
            (arg,) = info.inputs
            top, left, h, w = halo(region, op)
            source, row_length = self._padded_rows(arg, op)
            rows = source.index_select(0, box_rows(top, left, h, w, row_length, source.device))
            if plan[arg].mode == "patch":
                own = regions[arg]
                dest, pick = paste_rows(own.y + op.pad_before[0], own.x + op.pad_before[1], own.h, own.w, top, left, h, w, rows.device)
                self._paste(rows, dest, pick, live[arg])
            out = op.apply(_as_maps(rows, n, h, w))
            if op.correction is not None:
                correction = _as_rows(op.correction.to(out.device, out.dtype))
                factor = correction.index_select(0, box_rows(region.y, region.x, region.h, region.w, region.width, out.device))
                out = out * _as_maps(factor, n, region.h, region.w)
            return out

        def operand(arg):
            if arg in info.inputs:
                return self._crop(arg, plan, live, regions, region, n)
            return self._clean[arg]

        args, kwargs = self.graph.arguments(node, operand)
        return self.graph.call(node, args, kwargs)

    def _crop(self, arg, plan, live, regions, region: Region, n: int) -> torch.Tensor:
        """One input of a pointwise op on the output's boxes: its own patch when
        the boxes agree, else the clean map's boxes with its patch pasted in."""
        if plan[arg].mode == "patch" and regions[arg].same_as(region):
            return live[arg]
        source = self._rows(arg)
        rows = source.index_select(0, box_rows(region.y, region.x, region.h, region.w, region.width, source.device))
        if plan[arg].mode == "patch":
            own = regions[arg]
            dest, pick = paste_rows(own.y, own.x, own.h, own.w, region.y, region.x, region.h, region.w, rows.device)
            self._paste(rows, dest, pick, live[arg])
        return _as_maps(rows, n, region.h, region.w)

    @staticmethod
    def _paste(rows: torch.Tensor, dest: torch.Tensor, pick: torch.Tensor | None, patch: torch.Tensor) -> None:
        patch_rows = _as_rows(patch)
        rows.index_copy_(0, dest, patch_rows if pick is None else patch_rows.index_select(0, pick))

    def _full(self, node, plan, live, regions, n: int):
        info = self.graph.info[node]

        def operand(arg):
            if arg in info.inputs:
                return self._materialize(arg, plan, live, regions, n, copy=info.mutates)
            return self._clean[arg]

        args, kwargs = self.graph.arguments(node, operand)
        return self.graph.call(node, args, kwargs)

    def _materialize(self, arg, plan, live, regions, n: int, copy: bool):
        """A node's value for the whole batch: the clean map with each window's
        patch written in (or the clean value repeated, or the full value)."""
        state = plan.get(arg, FULL)
        if state is FULL:
            return live[arg]
        value = self._clean[arg]
        if state is CLEAN:
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == 1:
                value = value.expand(n, *value.shape[1:])
                return value.clone(memory_format=torch.channels_last if value.dim() == 4 else torch.preserve_format) if copy else value
            return value
        own = regions[arg]
        height, width = value.shape[-2:]
        source = self._rows(arg)
        rows = source.unsqueeze(0).expand(n, *source.shape).reshape(-1, source.shape[1])
        dest, pick = paste_rows(own.y, own.x, own.h, own.w, np.zeros(n, np.int64), np.zeros(n, np.int64), height, width, rows.device)
        self._paste(rows, dest, pick, live[arg])
        return _as_maps(rows, n, height, width)

    def _plain(self, image: torch.Tensor, boxes: np.ndarray, fill: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The model itself on the occluded images (graphs whose in-place ops
        make patches unsafe)."""
        outputs = []
        for start in range(0, len(boxes), batch_size):
            chunk = boxes[start : start + batch_size]
            batch = image[None].repeat(len(chunk), 1, 1, 1)
            for k, (y0, y1, x0, x1) in enumerate(chunk):
                batch[k, :, y0:y1, x0:x1] = fill[:, y0:y1, x0:x1]
            outputs.append(self.graph.module(batch.contiguous(memory_format=torch.channels_last)))
        return torch.cat(outputs)

    # -- public ----------------------------------------------------------------------------
    def occluded_logits(self, image: torch.Tensor, boxes: list[tuple[int, int, int, int]], fill: torch.Tensor,
                        batch_size: int | None = None) -> torch.Tensor:
        """image (3, H, W) normalized input; boxes (y0, y1, x0, x1) half-open; fill
        (3, H, W): the values the window region takes. Returns (len(boxes),
        num_classes): the logits of the model on each occluded image."""
        image, fill, boxes = self._checked(image, fill, boxes)
        batch_size = batch_size or self.batch_size
        with torch.inference_mode():
            if self.plain:
                return self._plain(image, boxes, fill, batch_size)
            if [m.training for m in self.graph.module.modules()] != self._modes:
                raise MethodError(METHOD, "the model's train/eval mode changed since IncrementalOcclusion.build: "
                                          "build it again in the mode it runs in (eval)")
            self._prepare(image, fill)
            classes = self._clean[self.graph.output_node()].shape[1]
            out = torch.empty(len(boxes), classes, dtype=image.dtype, device=image.device)
            sizes = np.stack([boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]], axis=1)
            for size in np.unique(sizes, axis=0):  # windows of one size stack into one batch
                members = np.flatnonzero((sizes == size).all(axis=1))
                plan = self._plan(boxes[members])
                for start in range(0, len(members), batch_size):
                    stop = min(start + batch_size, len(members))
                    out[torch.from_numpy(members[start:stop]).to(out.device)] = self._run(plan, start, stop)
            return out

    def _checked(self, image, fill, boxes) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        expected = tuple(self.input_shape[1:])
        for name, value in (("image", image), ("fill", fill)):
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
                raise InputError(f"{METHOD}: {name} must be a tensor of shape {expected}, got {getattr(value, 'shape', type(value).__name__)}")
        parameter = next(self.graph.module.parameters(), None)
        device = parameter.device if parameter is not None else image.device
        dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else image.dtype
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        height, width = expected[-2:]
        bad = (boxes[:, 0] < 0) | (boxes[:, 1] > height) | (boxes[:, 0] >= boxes[:, 1]) | (boxes[:, 2] < 0) | (boxes[:, 3] > width) | (boxes[:, 2] >= boxes[:, 3])
        if bad.any():
            raise InputError(f"{METHOD}: box {tuple(boxes[np.argmax(bad)])} is not a non-empty (y0, y1, x0, x1) inside the {height}x{width} image")
        return image.to(device, dtype), fill.to(device, dtype), boxes

    def estimated_flop_fraction(self, window: tuple[int, int]) -> float:
        """Multiply-adds of incremental occlusion over those of full forward
        passes, for windows of this size (averaged over up to 8 x 8 positions)."""
        height, width = self.input_shape[-2:]
        wh, ww = min(int(window[0]), height), min(int(window[1]), width)
        total = sum(info.flops for info in self.graph.info.values())
        if self.plain or total == 0:
            return 1.0
        ys = np.unique(np.linspace(0, height - wh, num=min(8, height - wh + 1)).round().astype(np.int64))
        xs = np.unique(np.linspace(0, width - ww, num=min(8, width - ww + 1)).round().astype(np.int64))
        y, x = np.meshgrid(ys, xs, indexing="ij")
        boxes = np.stack([y.ravel(), y.ravel() + wh, x.ravel(), x.ravel() + ww], axis=1)
        plan = self._plan(boxes)
        spent = 0.0
        for node, state in plan.items():
            flops = self.graph.info[node].flops
            spent += flops if state is FULL else flops * state.region.fraction if state.mode == "patch" else 0.0
        return spent / total

    def describe(self) -> dict:
        """What runs incrementally: the patch-computed ops reached before any op that
        forces whole maps, the first such op, and the estimated cost fraction."""
        blocked: set[fx.Node] = set()
        incremental, fallback = 0, []
        for node in self.graph.nodes:
            info = self.graph.info[node]
            if info.kind in ("constant", "input", "output"):
                continue
            if self.plain or info.kind == "other":
                fallback.append(self.graph.name(node))
                blocked.add(node)
            elif any(a in blocked for a in info.inputs):
                blocked.add(node)
            else:
                incremental += 1
        return {
            "incremental_ops": incremental,
            "full_from": (self.graph.name(self.graph.input_node) if self.plain else (fallback[0] if fallback else None)),
            "fallback_ops": fallback,
            "estimated_flop_fraction": self.estimated_flop_fraction(DESCRIBED_WINDOW),
            "window": DESCRIBED_WINDOW,
            "full_above": self.full_above,
        }


def _close(got, expected) -> bool:
    if not isinstance(got, torch.Tensor) or not isinstance(expected, torch.Tensor) or got.shape != expected.shape:
        return False
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return bool(torch.allclose(got.float(), expected.float(), rtol=1e-4, atol=1e-5 * max(scale, 1.0)))
