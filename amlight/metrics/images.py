"""The one image convention of :mod:`amlight.metrics`, and converters to and from it.

Every metric takes images as float tensors in [-1, 1] shaped (N, 3, H, W), RGB (what the generation
pipeline outputs), and label maps as integer arrays or tensors (N, H, W) with an ignore index
(default 255). Images read from disk (uint8 (H, W, 3), :func:`amlight.data.io.load_image`) go
through :func:`images_from_uint8` first. Values outside [-1, 1] are clamped before scoring.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

DEFAULT_IGNORE_INDEX = 255


def images_from_uint8(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 RGB, (H, W, 3), (N, H, W, 3) or a list of equal-size (H, W, 3), to float32 (N, 3, H, W) in [-1, 1]."""
    if isinstance(images, np.ndarray):
        array = images[None] if images.ndim == 3 else images
    else:
        array = np.stack([np.asarray(image) for image in images]) if len(images) else np.zeros((0, 1, 1, 3), np.uint8)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (H, W, 3) or (N, H, W, 3), got shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got dtype {array.dtype}")
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float()
    return tensor / 127.5 - 1.0


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float (N, 3, H, W) in [-1, 1] to uint8 (N, H, W, 3), rounding to the nearest level."""
    unit = images_to_unit(images)
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def images_to_unit(images: torch.Tensor) -> np.ndarray:
    """Float (N, 3, H, W) in [-1, 1] to float64 numpy (N, H, W, 3) in [0, 1] (clamped): what the
    scikit-image metrics read."""
    images = check_images(images)
    unit = (images.detach().to("cpu", torch.float64).clamp(-1.0, 1.0) + 1.0) / 2.0
    return unit.permute(0, 2, 3, 1).numpy()


def check_images(images, name: str = "images") -> torch.Tensor:
    """``images`` as a float tensor (N, 3, H, W); a clear error for anything else (uint8, HWC, 3D)."""
    if isinstance(images, np.ndarray):
        raise TypeError(f"{name}: expected a float tensor (N, 3, H, W) in [-1, 1], got a numpy array "
                        f"{images.dtype} {images.shape}; convert uint8 (H, W, 3) images with images_from_uint8")
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: expected a float tensor (N, 3, H, W) in [-1, 1], got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name}: expected a float tensor in [-1, 1], got dtype {images.dtype}; "
                        "convert uint8 images with images_from_uint8")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: expected shape (N, 3, H, W), got {tuple(images.shape)}")
    return images


def check_pair(pred: torch.Tensor, other: torch.Tensor, other_name: str = "target") -> None:
    """Same number of images and same size, or a ValueError saying which differs."""
    check_images(pred, "pred")
    check_images(other, other_name)
    if pred.shape != other.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but {other_name} has shape {tuple(other.shape)}")


def labels_to_numpy(labels, images: torch.Tensor | None = None) -> np.ndarray:
    """Label maps (N, H, W), tensor or array, as int64 numpy; checked against the images' size."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels: expected shape (N, H, W), got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels: expected integer class indices, got dtype {labels.dtype}")
    if images is not None and (labels.shape[0], *labels.shape[1:]) != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"labels have shape {labels.shape} but the images are "
                         f"{tuple(images.shape)} (N, 3, H, W): one label map per image, same H and W")
    return labels.astype(np.int64, copy=False)
