"""PSNR and SSIM against a ground-truth image (synthetic pairs, where the right answer is known).

Both work on the images scaled to [0, 1] (``data_range=1``), per image, with scikit-image.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from amlight.metrics.images import check_pair, images_to_unit

# Wang et al. (2004): an 11x11 Gaussian window of sigma 1.5, population statistics.
SSIM_SIGMA = 1.5
SSIM_MIN_SIZE = 11


def psnr(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Peak signal-to-noise ratio per image, in dB: ``10 log10(1 / MSE)`` with both images in [0, 1]
    (the MSE over all pixels and the three channels). Identical images give ``inf``.

    ``pred``, ``target``: float (N, 3, H, W) in [-1, 1] (clamped). Returns float64 (N,).
    """
    check_pair(pred, target)
    p, t = images_to_unit(pred), images_to_unit(target)
    with np.errstate(divide="ignore"):
        return np.array([peak_signal_noise_ratio(t[i], p[i], data_range=1.0) for i in range(len(p))], dtype=np.float64)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Structural similarity per image (1 for identical images), the mean SSIM map of
    :func:`skimage.metrics.structural_similarity` averaged over the three RGB channels, with the
    original paper's settings: Gaussian window sigma 1.5 (11x11), population covariance,
    ``data_range=1`` on images in [0, 1].

    ``pred``, ``target``: float (N, 3, H, W) in [-1, 1] (clamped), at least 11x11. Returns float64 (N,).
    """
    check_pair(pred, target)
    height, width = pred.shape[-2:]
    if min(height, width) < SSIM_MIN_SIZE:
        raise ValueError(f"ssim needs images of at least {SSIM_MIN_SIZE}x{SSIM_MIN_SIZE} pixels (its Gaussian "
                         f"window), got {width}x{height} (WxH)")
    p, t = images_to_unit(pred), images_to_unit(target)
    return np.array([
        structural_similarity(t[i], p[i], data_range=1.0, channel_axis=-1, gaussian_weights=True,
                              sigma=SSIM_SIGMA, use_sample_covariance=False)
        for i in range(len(p))
    ], dtype=np.float64)
