"""Global magnitude pruning (Han et al. 2015, "Learning both Weights and
Connections"; 2016, "Deep Compression"): one threshold on |w| over every
pruned weight, so a sparsity s removes the s·N smallest weights of the model,
wherever they lie; and the per-layer statistics shown beside it."""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnviz_core import InputError


def parse_sparsities(text: str) -> np.ndarray:
    """``"0,10,50%,95"`` → sorted unique percentages in [0, 100], with 0 (the
    unpruned model, the reference of the agreement) always included."""
    values = []
    for part in str(text).replace(";", ",").split(","):
        part = part.strip().rstrip("%").strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise InputError(f"pruning: --sparsities takes percentages separated by commas (e.g. 0,50,90), got {text!r}") from None
        if not 0 <= value <= 100:
            raise InputError(f"pruning: a sparsity is a percentage in [0, 100], got {value:g}")
        values.append(value)
    return np.unique(np.asarray([0.0, *values]))


@dataclasses.dataclass(frozen=True)
class Cut:
    """What one sparsity prunes: every weight with |w| < ``threshold``, and of
    those with |w| == ``threshold`` the first ``ties[l]`` of layer l (in layer
    order, then flat order) — so exactly ``count`` weights go, as if all |w|
    were sorted once with ties kept in place. ``threshold`` is the largest
    magnitude pruned."""

    count: int
    threshold: float
    ties: tuple[int, ...]

    def mask(self, magnitudes: np.ndarray, layer: int) -> np.ndarray:
        """Which weights of layer ``layer`` (given as |w|) this cut prunes."""
        if self.count == 0:
            return np.zeros(magnitudes.shape, bool)
        pruned = np.ascontiguousarray(magnitudes < self.threshold)  # so the flat view below writes through
        if self.ties[layer]:
            tied = np.flatnonzero(magnitudes == self.threshold)[: self.ties[layer]]
            pruned.reshape(-1)[tied] = True
        return pruned


def global_cuts(weights: list[np.ndarray], sparsities: np.ndarray) -> list[Cut]:
    """One global magnitude cut per sparsity (percent) over all ``weights``:
    the k smallest |w| of the whole model, k = round(s · N). O(N) per cut (a
    partial sort), no full ranking kept."""
    magnitudes = [np.abs(np.asarray(w, dtype=np.float32)).ravel() for w in weights]
    flat = np.concatenate(magnitudes)
    counts = np.rint(np.asarray(sparsities, dtype=np.float64) / 100.0 * flat.size).astype(np.int64)
    kths = sorted({int(k) - 1 for k in counts if k > 0})
    ordered = np.partition(flat, kths) if kths else flat
    cuts = []
    for count in counts:
        if count == 0:
            cuts.append(Cut(0, 0.0, (0,) * len(weights)))
            continue
        threshold = ordered[count - 1]
        missing = int(count) - int(np.count_nonzero(flat < threshold))  # ties at the threshold still to prune
        ties = []
        for m in magnitudes:
            taken = min(missing, int(np.count_nonzero(m == threshold)))
            ties.append(taken)
            missing -= taken
        cuts.append(Cut(int(count), float(threshold), tuple(ties)))
    return cuts


def layer_sparsity(weights: list[np.ndarray], cuts: list[Cut]) -> np.ndarray:
    """(sparsities, layers): the fraction of each layer a cut prunes."""
    magnitudes = [np.abs(np.asarray(w, dtype=np.float32)) for w in weights]
    return np.asarray([[cut.mask(m, i).mean() if m.size else 0.0 for i, m in enumerate(magnitudes)] for cut in cuts])


def prune(weight: np.ndarray, cut: Cut, layer: int) -> np.ndarray:
    """The weight with the entries ``cut`` removes set to zero."""
    return np.where(cut.mask(np.abs(weight.astype(np.float32)), layer), np.zeros((), weight.dtype), weight)


@dataclasses.dataclass
class LayerStats:
    name: str
    count: int
    std: float
    threshold: float  # |w| below this is "near zero"
    fraction_below: float
    histogram: np.ndarray  # (bins,) counts
    edges: np.ndarray  # (bins + 1,) symmetric around 0

    @classmethod
    def of(cls, name: str, weight: np.ndarray, threshold: float, scale: str, bins: int) -> "LayerStats":
        w = np.asarray(weight, dtype=np.float64).ravel()
        std = float(w.std())
        limit = threshold * std if scale == "std" else threshold
        peak = float(np.abs(w).max(initial=0.0)) or 1.0
        counts, edges = np.histogram(w, bins=bins, range=(-peak, peak))
        return cls(name, int(w.size), std, float(limit), float(np.mean(np.abs(w) < limit)), counts, edges)

    def fact(self) -> dict:
        return {"name": self.name, "count": self.count, "fraction_below": self.fraction_below, "std": self.std,
                "threshold": self.threshold}
