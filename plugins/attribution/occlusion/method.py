"""Occlusion (Zeiler & Fergus 2013) as a cnnviz plugin: forward passes only, so
it runs on every adapter, ONNX included.

A pixel's value is the mean, over the windows covering it, of
score(x) − score(x with the window set to the baseline); the per-position grid
is kept in ``extras["grid"]``. The windows of an image go through the model in
batches built in one reused buffer. On a torch model the forward passes run on
the faster of eager torch and onnxruntime (an ONNX copy exported once and
cached on disk), or through incremental inference, decided by the median of
short timed rounds of real batches on each and remembered on disk for the
next run; see ``backends.py``, ``runtime.py`` and ``decision_cache.py``."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from typing import TYPE_CHECKING

import numpy as np

from cnnviz_core import Attribution, AttributionMethod, AttributionParams, Capability, InputError, hookimpl, param
from cnnviz_core import resolve_classes, select_scores

from cnnviz_plugins.attribution.occlusion.fill import make_fill, parse_baseline
from cnnviz_plugins.attribution.occlusion.geometry import WindowGrid, format_pair, parse_pair, spread_to_pixels, window_starts
from cnnviz_plugins.attribution.occlusion.refine import CoarseToFine
from cnnviz_plugins.attribution.occlusion.runtime import RuntimeChoice, incremental_class

if TYPE_CHECKING:  # annotations only; torch loads where a function runs on a model
    import torch

__all__ = ["Occlusion", "OcclusionParams", "cnnviz_methods", "window_starts"]

# Occluded copies per pass to start from; a large enough job tunes it on its
# first real batches (4..64 on a CPU): the best size moved with the load in
# benchmarks/bench_occlusion.py (16 idle, 32-64 with the cores shared), within
# 5-15% of each other for torch and onnxruntime on lite0, resnet18 and vgg16.
CPU_BATCH = 16
GPU_BATCH = 64
MEMO_BYTES = 256 * 2**20  # logits kept per image, so that a repeated image with another target costs nothing


@dataclasses.dataclass
class OcclusionParams(AttributionParams):
    window: int | str = param(16, "window size in input pixels: N for a square or HxW (height x width, e.g. 16x24)")
    stride: int | str = param(8, "step between window positions: N or HxW; a last window flush with the far edge is always added")
    baseline: float | str = param(
        0.0, "what a window is set to: a number in the model's normalized input space (0 = the dataset mean), "
        "'mean' (each image's per-channel mean) or 'blur' (the pixels of a Gaussian-blurred copy of the image)")
    blur_sigma: float = param(10.0, "standard deviation, in input pixels, of the Gaussian used by --baseline blur", minimum=0.1)
    runtime: str = param(
        "auto", "where a torch model's forward passes run: auto (the faster of torch and onnxruntime: the median of short "
        "timed rounds, remembered on disk for later runs; the ONNX copy is exported once and cached in $CNNVIZ_CACHE or "
        "~/.cache/cnnviz), torch, or onnx",
        choices=("auto", "torch", "onnx"))
    incremental: str = param(
        "auto", "incremental inference (Krypton), torch models only: auto (used when timed faster), on, or off",
        choices=("auto", "on", "off"))
    refine: float | None = param(
        None, "adaptive coarse-to-fine: occlude every second position first, then exactly only inside this fraction "
        "(0 < F <= 1) of coarse cells with the largest score drop; elsewhere the grid is interpolated (default: off, exact)")
    batch_size: int | None = param(
        None, f"occluded copies per forward pass (default: from {CPU_BATCH} on a CPU, {GPU_BATCH} on a GPU, tuned on the first "
        "batches of a large job; a size given here is kept); halved on out-of-memory", minimum=1)


@dataclasses.dataclass
class ImageWork:
    """One image's state: its tensors and every logit row computed for it."""

    image: torch.Tensor  # (3, H, W) on the model's device
    fill: torch.Tensor  # (3, H, W)
    logits: np.ndarray  # (windows, classes); rows valid where known
    known: np.ndarray  # (windows,) bool
    clean: np.ndarray | None = None  # (classes,)

    @property
    def nbytes(self) -> int:
        return self.logits.nbytes


class Occlusion(AttributionMethod):
    """Occlusion: the score drop when a sliding window is set to a baseline, per pixel; an image repeated with other targets reuses its passes.

    Several classes of one image: give the image once per class with one
    target each (``run("occlusion", m, [img, img], target=[281, 285])``, or
    ``--image cat.png cat.png --target 281 285``); identical inputs share
    their forward passes, so each extra class costs no extra pass.
    """

    name = "occlusion"
    requires = frozenset({Capability.FORWARD})
    Params = OcclusionParams
    batch_hint = CPU_BATCH
    demo_params = {"window": 32, "stride": 16}

    @classmethod
    def check_params(cls, params) -> None:
        # normalized in place, so the JSON record holds numbers, not the CLI's text
        params.window = format_pair(parse_pair(params.window, "window"))
        params.stride = format_pair(parse_pair(params.stride, "stride"))
        params.baseline = parse_baseline(params.baseline)
        if params.refine is not None and not 0 < params.refine <= 1:
            raise InputError(f"occlusion: --refine must be a fraction in (0, 1], got {params.refine}")
        if params.incremental == "on" and params.runtime == "onnx":
            raise InputError("occlusion: --incremental on runs in torch; it cannot be combined with --runtime onnx")

    def batch_size(self) -> int:
        return 1  # images one at a time (files written as each finishes); their windows are batched

    # -- set-up ------------------------------------------------------------------
    def setup(self) -> None:
        p = self.params
        self.window, self.stride = parse_pair(p.window, "window"), parse_pair(p.stride, "stride")
        self._check_window(self.adapter.config.input_size)
        forward_batch = p.batch_size or (GPU_BATCH if str(self.adapter.device).startswith("cuda") else CPU_BATCH)
        self._grids: dict[tuple[int, int], WindowGrid] = {}
        self._memo: collections.OrderedDict[bytes, ImageWork] = collections.OrderedDict()
        self._counts = {"windows_requested": 0, "windows_evaluated": 0}
        self.metadata.clear()
        self.choice = RuntimeChoice(self.adapter, p, self.window, forward_batch, self.metadata, incremental_class)

    def _check_window(self, size) -> None:
        height, width = size
        if self.window[0] > height or self.window[1] > width:
            raise InputError(
                f"occlusion: --window {format_pair(self.window)} is larger than the input ({height}x{width}); "
                "give a window of at most the input size (HxW)"
            )

    # -- running windows -----------------------------------------------------------
    def _run_windows(self, work: ImageWork, grid: WindowGrid, flat: np.ndarray) -> None:
        """Compute the logits of the windows ``flat`` not yet known for this image."""
        missing = flat[~work.known[flat]]
        self._counts["windows_requested"] += len(flat)
        self._counts["windows_evaluated"] += len(missing)
        if not len(missing):
            return
        boxes = grid.boxes(missing)
        probed = self.choice.settle(work.image, boxes, work.fill)
        done = len(probed)
        if done:
            work.logits[missing[:done]] = np.stack([probed[i] for i in range(done)])
            work.known[missing[:done]] = True
        name = self.choice.chosen
        runner = self.choice.runner(name)

        def batch(start: int, stop: int) -> np.ndarray:
            return runner.occluded_logits(work.image, boxes[done + start : done + stop], work.fill)

        parts = self.scheduler.map_batches(batch, len(missing) - done, runner.batch_size, desc=f"occlusion {name}")
        if parts:
            work.logits[missing[done:]] = np.concatenate(parts)
            work.known[missing[done:]] = True

    def _clean_logits(self, work: ImageWork) -> np.ndarray:
        if work.clean is None:
            work.clean = self.choice.runner().clean_logits(work.image[None])[0]
        return work.clean

    # -- per image -------------------------------------------------------------
    def _grid(self, size: tuple[int, int]) -> WindowGrid:
        if size not in self._grids:
            self._check_window(size)
            self._grids[size] = WindowGrid.build(size, self.window, self.stride)
            self.metadata["windows"] = {"window": list(self.window), "stride": list(self.stride),
                                        "grid": list(self._grids[size].shape), "per_image": int(np.prod(self._grids[size].shape))}
        return self._grids[size]

    def _work(self, image: np.ndarray, grid: WindowGrid) -> ImageWork:
        """The image's state, shared by identical inputs (a repeated image with
        another target reuses every logit already computed)."""
        import torch

        key = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=20).digest() + repr(image.shape).encode()
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(self.adapter.device)
        windows = int(np.prod(grid.shape))
        work = ImageWork(tensor, make_fill(tensor, self.params.baseline, self.params.blur_sigma),
                         np.zeros((windows, self.adapter.num_classes), np.float32), np.zeros(windows, bool))
        while self._memo and sum(w.nbytes for w in self._memo.values()) + work.nbytes > MEMO_BYTES:
            self._memo.popitem(last=False)
        self._memo[key] = work
        return work

    def _drops(self, work: ImageWork, flat: np.ndarray, cls: int) -> tuple[np.ndarray, float]:
        """score(x) − score(x occluded) of the windows ``flat`` for one class,
        and score(x)."""
        clean = select_scores(self._clean_logits(work)[None], np.array([cls]), self.params.score)[0]
        occluded = select_scores(work.logits[flat], np.full(len(flat), cls), self.params.score)
        return (np.float64(clean) - occluded.astype(np.float64)), float(clean)

    def attribute(self, inputs: np.ndarray, targets) -> Attribution:
        maps, grids, evaluated, classes, scores = [], [], [], [], []
        for image, target in zip(inputs, targets):
            grid = self._grid(tuple(image.shape[-2:]))
            work = self._work(image, grid)
            everything = np.arange(int(np.prod(grid.shape)))
            if self.params.refine is None:
                self._run_windows(work, grid, everything)
            else:
                plan = CoarseToFine(grid, self.params.refine)
                self._run_windows(work, grid, plan.coarse_flat)
            cls = int(resolve_classes([target], self._clean_logits(work)[None])[0])
            if self.params.refine is None:
                values, clean = self._drops(work, everything, cls)
                exact = np.ones(grid.shape, bool)
            else:
                values, clean, exact = self._refine(work, grid, plan, cls)
            grid_values = values.reshape(grid.shape)
            maps.append(spread_to_pixels(grid_values, grid))
            grids.append(grid_values.astype(np.float32))
            evaluated.append(exact)
            classes.append(cls)
            scores.append(clean)
        self.metadata["windows"].update(self._counts)
        extras = {"grid": np.stack(grids), "grid_y": np.tile(grid.ys, (len(inputs), 1)),
                  "grid_x": np.tile(grid.xs, (len(inputs), 1))}
        if self.params.refine is not None:
            extras["evaluated"] = np.stack(evaluated)
        return Attribution(maps=np.stack(maps), classes=np.asarray(classes, np.int64),
                           scores=np.asarray(scores, np.float32), extras=extras)

    def _refine(self, work: ImageWork, grid: WindowGrid, plan: CoarseToFine, cls: int):
        """Coarse drops → interpolated grid → exact windows in the top cells.
        Returns the grid's values (flat), the clean score and which were exact."""
        coarse_values, clean = self._drops(work, plan.coarse_flat, cls)
        estimate = plan.estimate(coarse_values.reshape(len(plan.rows), len(plan.cols))).reshape(-1)
        refined, chosen, cells = plan.refined_flat(coarse_values.reshape(len(plan.rows), len(plan.cols)))
        self._run_windows(work, grid, refined)
        values = estimate.copy()
        exact_flat = np.concatenate([plan.coarse_flat, refined])
        values[exact_flat], _ = self._drops(work, exact_flat, cls)
        gap = np.abs(estimate[refined] - values[refined]) if len(refined) else np.zeros(0)
        exact = np.zeros(grid.shape, bool)
        exact.reshape(-1)[exact_flat] = True
        self.metadata.setdefault("refine", []).append({
            "fraction": self.params.refine,
            "cells_refined": chosen, "cells": cells,
            "windows_exact": int(exact.sum()), "windows": int(exact.size),
            "exact_fraction": round(float(exact.mean()), 4),
            "interpolation_error_on_refined_windows": {
                "max": float(gap.max()) if len(gap) else 0.0, "mean": float(gap.mean()) if len(gap) else 0.0,
                "windows_compared": int(len(gap)),
                "what": "|coarse interpolation - exact score drop| on the windows re-run exactly (those with the "
                        "largest coarse drops); the windows left interpolated have no exact value, their error is not measured",
            },
        })
        return values, clean, exact


@hookimpl
def cnnviz_methods():
    return [Occlusion]
