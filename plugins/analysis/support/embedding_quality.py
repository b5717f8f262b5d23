"""How faithful a 2-D embedding is: trustworthiness (Venna & Kaski 2001, as
scikit-learn defines it) computed in blocks of rows so memory stays linear in
the number of points, and leave-one-out k-nearest-neighbour accuracy."""

from __future__ import annotations

import numpy as np

BLOCK_ELEMENTS = 4_000_000  # distances held at once (32 MB of float64)


def trustworthiness(features: np.ndarray, embedding: np.ndarray, k: int) -> float:
    """1 − 2 / (n k (2n − 3k − 1)) · Σ_i Σ_{j ∈ U_k(i)} (r(i, j) − k): U_k(i)
    are i's k nearest neighbours in the embedding that are not among its k
    nearest in the features, r(i, j) j's rank among i's neighbours in the
    features (1 = nearest). scikit-learn's ``trustworthiness`` builds n × n
    matrices (1.6 GB at 10,000 points); this holds a block of rows at a time.
    At tied distances the rank is the best among the tied."""
    from sklearn.neighbors import NearestNeighbors

    n = len(features)
    if not 1 <= k < n / 2:
        raise ValueError(f"trustworthiness needs 1 <= k < n / 2, got k={k}, n={n}")
    near = NearestNeighbors(n_neighbors=k).fit(embedding).kneighbors(return_distance=False)  # self excluded
    features = np.asarray(features, np.float64)
    squares = (features ** 2).sum(axis=1)
    block = max(1, BLOCK_ELEMENTS // n)
    penalty = 0.0
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        distances = squares[rows, None] + squares[None, :] - 2 * features[rows] @ features.T  # squared: same order
        distances[np.arange(len(rows)), rows] = np.inf  # a point is not its own neighbour
        chosen = np.take_along_axis(distances, near[rows], axis=1)  # (b, k)
        ranks = np.stack([(distances < chosen[:, [j]]).sum(axis=1) for j in range(k)], axis=1) + 1
        penalty += float(np.clip(ranks - k, 0, None).sum())
    return 1.0 - penalty * 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0))


def knn_accuracy(points: np.ndarray, labels: np.ndarray, k: int) -> float | None:
    """Leave-one-out k-nearest-neighbour accuracy among the labelled points
    (majority vote; a tie goes to the label of the nearest tied neighbour);
    None with too few labelled points."""
    from sklearn.neighbors import NearestNeighbors

    chosen = labels >= 0
    points, labels = points[chosen], labels[chosen]
    if len(points) <= k:
        return None
    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
    right = 0
    for i, row in enumerate(neighbours):
        others = [j for j in row if j != i][:k]  # self is usually first, but duplicates may come before it
        votes = labels[others]
        counts = np.bincount(votes)
        tied = np.flatnonzero(counts == counts.max())
        predicted = next(v for v in votes if v in tied)  # votes are ordered nearest first
        right += int(predicted == labels[i])
    return right / len(points)
