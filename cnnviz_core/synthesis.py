"""Synthesis methods make images instead of maps (class model visualization,
DeepDream, inversion, style transfer, adversarial and fooling images).

The base owns the pipeline: parameter checks, batching of the items through the
scheduler (out-of-memory halves the batch), per-item seeding so a result does
not depend on how items were batched, a progress bar over optimization steps,
the best image so far kept on disk while the run goes, and the result.
A method implements :meth:`SynthesisMethod.synthesize` for one batch of items.

Images handed to and returned by a method are pixels in [0, 1], shape
(b, 3, H, W); :meth:`to_model` maps them into the model's normalized space.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, ClassVar

import numpy as np

from .errors import InputError
from .method import Method, MethodParams, param
from .progress import Progress
from .results_synthesis import SynthesisResult
from .targets import Target


@dataclasses.dataclass
class SynthesisParams(MethodParams):
    seed: int = param(0, "random seed: the same seed gives the same images")


@dataclasses.dataclass
class Synthesis:
    """What ``synthesize`` returns for one batch of b items."""

    images: np.ndarray  # (b, 3, H, W) in [0, 1]
    history: dict[str, np.ndarray]  # curve name -> (b, steps); "objective" is the one optimized
    classes: np.ndarray | None = None  # (b,) the model's top-1 class on the final image
    scores: np.ndarray | None = None  # (b,) its softmax probability
    pictures: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # more (b, 3, H, W) [0, 1] renderings
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # per-item arrays, first axis b
    records: list[dict[str, Any]] | None = None  # per-item facts for the JSON record (JSON-able)


class BestImages:
    """Keeps each item's best image so far, and hands it to a sink (the CLI
    writes it to disk) at most every ``interval`` seconds, so an interrupted
    run loses nothing but the last few seconds."""

    def __init__(self, higher_is_better: bool, sink: Callable[[int, np.ndarray, float, int], None] | None, interval: float = 2.0):
        self.higher_is_better = higher_is_better
        self.sink = sink
        self.interval = interval
        self.best: dict[int, tuple[float, np.ndarray, int]] = {}
        self._pending: set[int] = set()
        self._last_flush = time.perf_counter()

    def offer(self, indices: range, images: np.ndarray, objective: np.ndarray, step: int) -> None:
        for index, image, value in zip(indices, images, np.asarray(objective, dtype=np.float64)):
            if not np.isfinite(value):
                continue
            known = self.best.get(index)
            better = known is None or (value > known[0] if self.higher_is_better else value < known[0])
            if better:
                self.best[index] = (float(value), np.array(image, dtype=np.float32, copy=True), step)
                self._pending.add(index)
        if self.sink is not None and time.perf_counter() - self._last_flush >= self.interval:
            self.flush()

    def flush(self) -> None:
        if self.sink is None:
            self._pending.clear()
            return
        for index in sorted(self._pending):
            value, image, step = self.best[index]
            self.sink(index, image, value, step)
        self._pending.clear()
        self._last_flush = time.perf_counter()


class SynthesisMethod(Method):
    """Makes images by optimization or search.

    ``needs_image``: True when each item starts from an input image (DeepDream,
    inversion, adversarial, style transfer's content); False when items are
    made from targets alone (class model, fooling images).
    ``higher_is_better``: the direction of the "objective" history curve, used
    to keep the best image so far.
    """

    kind = "synthesis"
    Params = SynthesisParams
    needs_image: ClassVar[bool] = False
    higher_is_better: ClassVar[bool] = True
    batch_hint = 8

    def __init__(self, adapter, params=None, scheduler=None):
        super().__init__(adapter, params, scheduler)
        self._best: BestImages | None = None
        self._progress: Progress | None = None
        self._offset = 0  # the current batch's first item, within the run
        self._done_before = 0  # steps finished before the current batch, for the progress bar
        self._batch_items = 1  # items in the current batch

    # -- what a method implements ------------------------------------------
    def setup(self) -> None:
        """Checks and preparation done once before any batch; errors raised
        here leave nothing written."""

    def check_targets(self, targets: list[Target]) -> None:
        """Refuse targets this method cannot make, before any work."""

    def steps_per_item(self) -> int:
        """Optimization steps (or generations) per item, for the progress bar."""
        return int(getattr(self.params, "steps", 1))

    def synthesize(self, images: np.ndarray | None, targets: list[Target]) -> Synthesis:
        """One batch: ``images`` (b, 3, H, W) in [0, 1] for methods that need
        them, else None; one target per item."""
        raise NotImplementedError

    # -- helpers for methods -------------------------------------------------
    def to_model(self, pixels):
        """[0, 1] pixels (torch tensor or numpy) → the model's normalized input."""
        mean, std = self.adapter.config.mean, self.adapter.config.std
        if isinstance(pixels, np.ndarray):
            return ((pixels - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]).astype(np.float32)
        import torch

        mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device)[:, None, None]
        std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device)[:, None, None]
        return (pixels - mean_t) / std_t

    def item_seeds(self, count: int) -> list[int]:
        """One seed per item of the current batch, derived from the run's seed
        and the item's position in the run: batching never changes a result."""
        return [int(np.random.SeedSequence([int(self.params.seed), self._offset + i]).generate_state(1)[0]) for i in range(count)]

    def generators(self, count: int, device: str = "cpu"):
        """Torch random generators, one per item of the current batch."""
        import torch

        out = []
        for seed in self.item_seeds(count):
            generator = torch.Generator(device=device)
            generator.manual_seed(seed)
            out.append(generator)
        return out

    def rngs(self, count: int) -> list[np.random.Generator]:
        """Numpy random generators, one per item of the current batch."""
        return [np.random.default_rng(seed) for seed in self.item_seeds(count)]

    def step_done(self, step: int, images=None, objective=None) -> None:
        """Report progress after an optimization step; with ``images`` ([0, 1],
        (b, 3, H, W), numpy or torch) and ``objective`` (b,), the best image so
        far is kept (and written to disk by the CLI)."""
        if images is not None and objective is not None and self._best is not None:
            if hasattr(images, "detach"):
                images = images.detach().float().cpu().numpy()
            if hasattr(objective, "detach"):
                objective = objective.detach().float().cpu().numpy()
            self._best.offer(range(self._offset, self._offset + len(images)), images, objective, step)
        if self._progress is not None:  # every item of the batch took this step
            self._progress.set(self._done_before + (step + 1) * self._batch_items)

    # -- the pipeline --------------------------------------------------------
    def check_images(self, images: np.ndarray | None) -> None:
        if not self.needs_image:
            return
        if images is None or len(images) == 0:
            raise InputError(f"{self.name} starts from an input image: give --image FILE (or inputs=...)")

    def run(
        self,
        images: np.ndarray | None,
        targets: list[Target],
        names: list[str],
        keep_best: Callable[[int, np.ndarray, float, int], None] | None = None,
    ) -> SynthesisResult:
        """``images``: (B, 3, H, W) pixels in [0, 1] (or None); one target and
        one name per item. ``keep_best(index, image, objective, step)`` is
        called with each item's best image so far while the run goes."""
        count = len(names)
        self.check_images(images)
        if images is not None:
            check_pixels(images, self.adapter.config.input_size, self.name)
        self._best = BestImages(self.higher_is_better, keep_best)
        steps = max(1, self.steps_per_item())
        self._progress = Progress(count * steps, self.name, enabled=self.scheduler.progress)
        self._done_before = 0

        def work(start: int, stop: int) -> Synthesis:
            self._offset, self._done_before, self._batch_items = start, start * steps, stop - start
            part = self.synthesize(None if images is None else images[start:stop], targets[start:stop])
            check_synthesis(part, stop - start, self.name)
            self._best.offer(range(start, stop), part.images, _final_objective(part), steps)
            return part

        try:
            with self.adapter.session():
                self.setup()
                self.check_targets(targets)
                parts = self.scheduler.map_batches(work, count, self.batch_size(), desc=self.name)
        finally:
            self._best.flush()
            self._progress.close()
        return self._result(parts, targets, names, images)

    def _result(self, parts: list[Synthesis], targets, names, images) -> SynthesisResult:
        def stack(getter):
            values = [getter(p) for p in parts]
            return None if values[0] is None else np.concatenate(values)

        records: list[dict[str, Any]] = []
        for part in parts:
            records.extend(part.records or [{} for _ in range(len(part.images))])
        return SynthesisResult(
            method=self.name,
            model=self.adapter.describe(),
            params=dataclasses.asdict(self.params),
            targets=list(targets),
            names=list(names),
            labels=self.adapter.labels,
            images=np.concatenate([p.images for p in parts]).astype(np.float32, copy=False),
            history={k: np.concatenate([p.history[k] for p in parts]) for k in parts[0].history},
            classes=stack(lambda p: p.classes),
            scores=stack(lambda p: p.scores),
            pictures={k: np.concatenate([p.pictures[k] for p in parts]) for k in parts[0].pictures},
            extras={k: np.concatenate([p.extras[k] for p in parts]) for k in parts[0].extras},
            records=records,
            inputs=images,
            higher_is_better=self.higher_is_better,
            metadata=dict(self.metadata),
        )


def _final_objective(part: Synthesis) -> np.ndarray:
    curve = part.history.get("objective")
    if curve is None or curve.size == 0:
        return np.zeros(len(part.images))
    return np.asarray(curve)[:, -1]


def check_pixels(images: np.ndarray, input_size: tuple[int, int], method: str) -> None:
    """Synthesis inputs are (B, 3, H, W) pixels in [0, 1] at the model's size."""
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"{method}: images must be (B, 3, H, W) pixels in [0, 1], got shape {getattr(images, 'shape', None)}")
    if tuple(images.shape[-2:]) != tuple(input_size):
        raise InputError(f"{method}: images must be {input_size[0]}x{input_size[1]} (the model's input size), got {images.shape[-2]}x{images.shape[-1]}")
    if not np.isfinite(images).all() or images.min() < 0.0 or images.max() > 1.0:
        raise InputError(
            f"{method}: image pixels must lie in [0, 1] (got {float(np.nanmin(images)):.3g} to {float(np.nanmax(images)):.3g}); "
            "give image files, PIL images, or arrays scaled to [0, 1]"
        )


def check_synthesis(part: Synthesis, count: int, method: str) -> None:
    """A method's output is checked here so a plugin bug is named, not hidden."""
    from .errors import MethodError

    if part.images.shape[0] != count or part.images.ndim != 4:
        raise MethodError(method, f"returned images of shape {part.images.shape} for {count} items")
    if "objective" not in part.history:
        raise MethodError(method, "returned no 'objective' history")
