"""Image parameterizations for feature visualization (Olah, Mordvintsev &
Schubert, Distill 2017, "Feature Visualization"): what the optimizer changes,
and how that becomes a (b, 3, H, W) picture in [0, 1].

- :class:`PlainImage`: the pixels themselves, in the model's normalized space
  (zero = the dataset mean), as in Simonyan et al. 2014;
- :class:`ReadableImage`: a spectral (FFT) parameterization whose frequencies
  are scaled like a natural image's 1/f spectrum, colours decorrelated with a
  fixed 3x3 matrix, and a sigmoid onto [0, 1]. Plain gradient ascent on pixels
  is dominated by high frequencies (the gradient of a CNN is noisy); in this
  basis a step moves low and high frequencies alike, so images come out readable.

Each item's initial values are drawn from its own generator, so a batch gives
the same images as the items made one at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only; torch loads where a function runs on a model
    import torch

# Colour decorrelation. Natural images' RGB values are strongly correlated (most
# variance lies along "brightness"). Let Σ = U Λ Uᵀ be the covariance of ImageNet
# RGB pixels (values in [0, 1]); its eigen-decomposition was published with the
# PCA colour augmentation of Krizhevsky et al. 2012 (the numbers below are the
# ones fb.resnet.torch uses). Σ^½-style mixing rgb = U Λ^½ z turns independent,
# equal-variance channels z into colours with ImageNet's correlations; dividing
# by √λ_max gives the strongest colour direction unit gain, so a step in z is
# never larger than the same step on plain pixels.
_IMAGENET_RGB_EIGENVALUES = np.array([0.2175, 0.0188, 0.0045])
_IMAGENET_RGB_EIGENVECTORS = np.array(  # columns: unit eigenvectors, rows: R, G, B
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ]
)


def colour_mixing_matrix() -> np.ndarray:
    """rgb = M @ z for decorrelated channels z: M = U Λ^½ / √λ_max."""
    vectors = _IMAGENET_RGB_EIGENVECTORS / np.linalg.norm(_IMAGENET_RGB_EIGENVECTORS, axis=0)  # exact unit length (4 decimals published)
    sqrt_eigen = np.sqrt(_IMAGENET_RGB_EIGENVALUES)
    return (vectors * sqrt_eigen[None, :] / sqrt_eigen.max()).astype(np.float32)


def spectrum_scale(height: int, width: int) -> torch.Tensor:
    """Per-frequency amplitude of the real FFT grid, (H, W // 2 + 1): 1/f like a
    natural image's spectrum (f in cycles per pixel, floored at the lowest
    frequency the image holds so the DC term stays finite), normalized so that
    a spectrum of independent unit-variance coefficients gives pixels of unit
    variance (the sum of squared amplitudes over the full grid equals H·W)."""
    import torch

    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    frequency = torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / max(height, width))
    scale = 1.0 / frequency
    # The rfft grid holds each column but the first (and the Nyquist one, for
    # even widths) twice over in the full spectrum.
    weights = torch.full((1, scale.shape[1]), 2.0, dtype=torch.float64)
    weights[0, 0] = 1.0
    if width % 2 == 0:
        weights[0, -1] = 1.0
    mean_square = (scale**2 * weights).sum() / (height * width)
    return (scale / mean_square.sqrt()).float()


def _normal(shape: tuple[int, ...], generators: list[torch.Generator], std: float, device) -> torch.Tensor:
    """One (1, *shape) draw per item from its own generator, stacked."""
    import torch

    draws = [torch.randn(shape, generator=g, dtype=torch.float32) * std for g in generators]
    return torch.stack(draws).to(device)


class PlainImage:
    """The image itself in the model's normalized space, starting at zero (the
    dataset mean). ``clamp_`` projects it back onto displayable pixels."""

    def __init__(self, count: int, size: tuple[int, int], mean, std, device):
        import torch

        self.mean = torch.tensor(mean, dtype=torch.float32, device=device)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32, device=device)[:, None, None]
        self.tensor = torch.zeros((count, 3, *size), dtype=torch.float32, device=device, requires_grad=True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.tensor]

    def pixels(self) -> torch.Tensor:
        return self.tensor * self.std + self.mean

    def clamp_(self) -> None:
        import torch

        low, high = (0.0 - self.mean) / self.std, (1.0 - self.mean) / self.std
        with torch.no_grad():
            self.tensor.copy_(torch.maximum(torch.minimum(self.tensor, high), low))


class ReadableImage:
    """Spectral and/or colour-decorrelated parameters → sigmoid → [0, 1]."""

    def __init__(
        self,
        count: int,
        size: tuple[int, int],
        generators: list[torch.Generator],
        device,
        fft: bool = True,
        decorrelate: bool = True,
        init_std: float = 0.01,
    ):
        import torch

        self.size = size
        self.fft = fft
        height, width = size
        shape = (3, height, width // 2 + 1, 2) if fft else (3, height, width)
        # Small random values: the picture starts a faint grey noise (sigmoid(0) = 0.5).
        self.tensor = _normal(shape, generators, init_std, device).requires_grad_(True)
        self.scale = spectrum_scale(height, width).to(device) if fft else None
        self.mixing = torch.from_numpy(colour_mixing_matrix()).to(device) if decorrelate else None

    def parameters(self) -> list[torch.Tensor]:
        return [self.tensor]

    def pixels(self) -> torch.Tensor:
        import torch

        values = self.tensor
        if self.fft:
            spectrum = torch.view_as_complex(values) * self.scale
            values = torch.fft.irfft2(spectrum, s=self.size, norm="ortho")
        if self.mixing is not None:
            values = torch.einsum("ck,bkhw->bchw", self.mixing, values)
        return torch.sigmoid(values)

    def clamp_(self) -> None:
        """The sigmoid keeps pixels in [0, 1] already."""
