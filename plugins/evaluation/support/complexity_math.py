"""How concentrated an attribution map is: the Gini index (sparseness,
Chalasani et al. 2020) and the entropy of the fractional contributions
(complexity, Bhatt et al. 2020). Both read ``|map|`` over all pixels.

Choices:

- Gini: ``G = Σ_k (2k − n − 1) a_(k) / ((n − 1) Σ_k a_(k))`` over the n
  values sorted ascending (Hurley and Rickard's index, the one Chalasani et
  al. use, times ``n / (n − 1)``), so that a one-hot map scores exactly 1 and
  a uniform map exactly 0 — Quantus's ``Sparseness`` omits that factor and
  gives ``1 − 1/n`` to a one-hot map. Values are divided by their maximum
  first: the index is scale-free, and the two extremes then come out exact in
  floating point.
- Entropy: ``−Σ p_i log p_i`` with ``p_i = |a_i| / Σ_j |a_j|``, natural log,
  ``0 log 0 = 0``: 0 for a one-hot map, ``log n`` for a uniform one.
- A map that is zero everywhere explains nothing and spreads it evenly:
  sparseness 0, complexity ``log n`` (the uniform map's values).
"""

from __future__ import annotations

import numpy as np


def _magnitudes(values: np.ndarray) -> np.ndarray:
    magnitudes = np.abs(np.asarray(values, dtype=np.float64)).ravel()
    if not np.isfinite(magnitudes).all():
        raise ValueError("the map holds NaN or infinite values")
    return magnitudes


def gini(values: np.ndarray) -> float:
    """Sparseness of one map in [0, 1]: 1 for one-hot, 0 for uniform."""
    a = _magnitudes(values)
    n = a.size
    peak = a.max() if n else 0.0
    if n < 2 or peak == 0.0:
        return 0.0
    a = np.sort(a / peak)
    k = np.arange(1, n + 1, dtype=np.float64)
    total = a.sum()
    return float((2.0 * np.dot(k, a) - (n + 1) * total) / ((n - 1) * total))


def entropy(values: np.ndarray) -> float:
    """Complexity of one map: the entropy of its fractional contributions."""
    a = _magnitudes(values)
    total = a.sum()
    if total == 0.0:
        return float(np.log(a.size))
    p = a[a > 0] / total
    return float(-(p * np.log(p)).sum()) + 0.0  # no negative zero for a one-hot map
