"""t-SNE of a layer's features over a dataset (van der Maaten & Hinton 2008),
with scikit-learn: PCA to at most ``pca_dims`` dimensions, then a 2-D
embedding; a scatter plot coloured by label and a map of the images drawn
small at their positions.

Per image the pass keeps its feature vector (spatial maps are averaged over
positions), its label and one ``thumb``² thumbnail: memory grows with the
number of images, as the output itself does, by about 4·D + 3·thumb² bytes
per image. ``max_points`` caps it: beyond that many images a uniform sample
is kept (bottom-k of a hash of each image's dataset position and the seed,
so the sample does not depend on batch sizes or on a resumed run).

Quality facts: trustworthiness (how well the 2-D neighbourhoods keep the
neighbours of the PCA'd features) and, with labels, leave-one-out k-nearest-
neighbour accuracy in the embedding and in the features."""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from cnnviz_core import Analysis, AnalysisMethod, AnalysisParams, Capability, InputError, hookimpl, param, plots, render

from cnnviz_plugins.analysis.support.embedding_quality import knn_accuracy, trustworthiness

SHARED_THREADS_FROM = 2000  # points from which t-SNE and PCA use every core


@dataclasses.dataclass
class TsneParams(AnalysisParams):
    layer: str | None = param(None, "layer whose features are embedded (default: the input of the classifier, e.g. the "
                              "global pool); spatial maps are averaged over positions")
    perplexity: float = param(30.0, "t-SNE perplexity (must be below the number of images)", minimum=1.0)
    seed: int = param(0, "random seed of PCA, t-SNE and the sample when max-points cuts")
    max_iter: int = param(1000, "t-SNE iterations", minimum=250)
    pca_dims: int = param(50, "PCA dimensions before t-SNE (fewer when images or features are fewer)", minimum=2)
    neighbors: int = param(5, "k of the trustworthiness and k-nearest-neighbour accuracy facts", minimum=1)
    thumb: int = param(32, "side of the thumbnails kept per image, in pixels", minimum=4)
    canvas: int = param(1200, "largest side of the thumbnail map, in pixels (few images get a smaller map)", minimum=64)
    max_points: int = param(10000, "most images embedded; a uniform sample is kept beyond that", minimum=3)


def sample_priority(indices: np.ndarray, seed: int) -> np.ndarray:
    """A fixed pseudo-random uint64 per dataset position (splitmix64): the
    ``max_points`` smallest form the sample."""
    with np.errstate(over="ignore"):
        z = indices.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class Tsne(AnalysisMethod):
    """t-SNE: a 2-D map of a layer's features over a dataset, coloured by label, with a thumbnail map."""

    name = "tsne"
    requires = frozenset({Capability.ACTIVATIONS})
    Params = TsneParams
    batch_hint = 32
    state_attributes = ("chunks", "total")
    demo_params = {"max_iter": 1000}  # the demo's 224 photo crops: the default perplexity, run to convergence

    @classmethod
    def check_params(cls, params) -> None:
        if params.thumb > params.canvas:
            raise InputError(f"tsne: --thumb {params.thumb} is larger than --canvas {params.canvas}")

    def setup(self) -> None:
        self.layer = self.params.layer or self.adapter.classifier_input_layer() or self.adapter.default_layer()
        self.adapter.check_layer(self.layer)
        length = self.dataset.length if self.dataset is not None else None
        if length is not None:
            self._check_count(min(length, self.params.max_points))
        # per batch: (features, labels, dataset positions, names, thumbnails, priorities); compacted when over the cap
        self.chunks: list[tuple] = []
        self.total = 0  # images seen, kept or not

    def _check_count(self, count: int) -> None:
        if count < 3:
            raise InputError(f"tsne: {count} image(s) are too few; t-SNE needs at least 3 images")
        if count <= self.params.perplexity:
            raise InputError(f"tsne: {count} images are too few for perplexity {self.params.perplexity:g}; t-SNE needs more "
                             f"images than the perplexity: add images or lower --perplexity (e.g. {max(1.0, count / 4):g})")

    def layers_needed(self) -> list[str]:
        return [self.layer]

    def consume(self, batch, activations, logits) -> None:
        values = activations[self.layer]
        features = values.mean(axis=(2, 3)) if values.ndim == 4 else values.reshape(len(values), -1)
        side = self.params.thumb
        thumbs = np.stack([np.asarray(Image.fromarray(render.image_to_uint8(p)).resize((side, side), Image.Resampling.BILINEAR))
                           for p in batch.pixels])
        self.chunks.append((features.astype(np.float32), batch.labels.copy(), batch.indices.copy(), list(batch.names), thumbs,
                            sample_priority(batch.indices, self.params.seed)))
        self.total += len(features)
        if sum(len(c[0]) for c in self.chunks) > 2 * self.params.max_points:
            self.chunks = [self._collected()]

    def merge(self, state) -> None:
        """Another worker's images (other dataset positions) added to these.
        The sample and the order of the embedded points come from the
        positions alone (see :meth:`_collected`), so the collected features
        are those of one pass over all images, whatever the merge order."""
        self.chunks.extend(tuple(chunk) for chunk in state["chunks"])
        self.total += int(state["total"])
        if sum(len(c[0]) for c in self.chunks) > 2 * self.params.max_points:
            self.chunks = [self._collected()]

    def _collected(self) -> tuple:
        """All kept images as one chunk: the ``max_points`` of lowest priority, in dataset order."""
        fields = list(zip(*self.chunks))  # per field, its part from each batch
        features, labels, indices, thumbs, priority = (np.concatenate(fields[i]) for i in (0, 1, 2, 4, 5))
        names = [name for part in fields[3] for name in part]
        keep = np.argsort(priority, kind="stable")[: self.params.max_points]
        keep = keep[np.argsort(indices[keep], kind="stable")]
        return features[keep], labels[keep], indices[keep], [names[i] for i in keep], thumbs[keep], priority[keep]

    def finish(self) -> Analysis:
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        features, labels, indices, names, thumbs, _ = self._collected()
        count = len(features)
        self._check_count(count)
        if features.shape[1] < 2:  # PCA-initialized 2-D t-SNE needs at least two feature dimensions
            raise InputError(f"tsne: layer {self.layer!r} gives {features.shape[1]} feature per image; t-SNE needs at "
                             "least 2: choose a layer with more channels (--layer)")
        dims = min(self.params.pca_dims, count, features.shape[1])
        pca = PCA(n_components=dims, random_state=self.params.seed)
        tsne = TSNE(n_components=2, perplexity=self.params.perplexity, max_iter=self.params.max_iter, init="pca",
                    learning_rate="auto", random_state=self.params.seed)
        # Below a few thousand points each t-SNE iteration is too short to share: a second thread only
        # adds synchronisation (measured 13x slower for 360 points on a busy 2-core machine). The
        # result does not depend on the thread count.
        with threadpool_limits(1 if count < SHARED_THREADS_FROM else None):
            reduced = pca.fit_transform(features)  # float32: half the memory of float64 at 10,000 points
            coordinates = tsne.fit_transform(reduced).astype(np.float32)
        k = max(1, min(self.params.neighbors, (count - 1) // 2))  # trustworthiness needs k < n / 2
        labelled = bool((labels >= 0).any())
        facts = {
            "layer": self.layer, "points": count, "sampled": count < self.total,
            "feature_dims": int(features.shape[1]), "pca_dims": dims,
            "pca_explained_variance": float(pca.explained_variance_ratio_.sum()),
            "perplexity": self.params.perplexity, "kl_divergence": float(tsne.kl_divergence_), "neighbors": k,
            "trustworthiness": trustworthiness(reduced, coordinates, k),
            "knn_accuracy": knn_accuracy(coordinates, labels, k) if labelled else None,
            "knn_accuracy_features": knn_accuracy(reduced, labels, k) if labelled else None,
        }
        class_names = self.dataset.class_names if self.dataset is not None else None
        scatter = plots.scatter_plot(coordinates, labels if labelled else None, class_names,
                                     title=f"t-SNE of {self.layer} ({count} images)")
        return Analysis(
            arrays={"coordinates": coordinates, "labels": labels, "indices": indices, "names": np.array(names, dtype=str)},
            pictures={"scatter": scatter, "thumbnails": self._thumbnail_map(coordinates, thumbs)},
            facts=facts,
        )

    def _thumbnail_map(self, coordinates: np.ndarray, thumbs: np.ndarray) -> np.ndarray:
        """Each image drawn at its t-SNE position on a white canvas (later images
        on top); the canvas is about three thumbnails per √N, so a few images
        are not lost on a wide page."""
        side = self.params.thumb
        size = int(min(self.params.canvas, max(8 * side, np.ceil(3 * side * np.sqrt(len(thumbs))))))
        canvas = np.full((size, size, 3), 255, np.uint8)
        low, high = coordinates.min(axis=0), coordinates.max(axis=0)
        unit = (coordinates - low) / np.maximum(high - low, 1e-12)
        unit[:, 1] = 1 - unit[:, 1]  # y up, as in the scatter plot
        corners = np.round(unit * (size - side)).astype(int)  # (x, y) of each thumbnail's top-left corner
        for (x, y), thumb in zip(corners, thumbs):
            canvas[y : y + side, x : x + side] = thumb
        return canvas


@hookimpl
def cnnviz_methods():
    return [Tsne]
