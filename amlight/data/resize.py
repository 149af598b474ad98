"""Bringing an image or a label file to the model's size: images bilinear (antialiased, as the
DataModule does), label maps nearest neighbour (no label value the map does not hold)."""
from __future__ import annotations

import numpy as np
import torch


def resize_image(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, h, w) in [-1, 1]; bilinear with antialiasing, as the DataModule does."""
    from torchvision.transforms.v2 import functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if tuple(tensor.shape[-2:]) != tuple(size):
        tensor = F.resize(tensor, list(size), interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    return tensor.float().div(127.5).sub(1.0)


def resize_labels_nearest(labels: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """int (H, W) -> int64 (h, w), nearest neighbour only (no label value the map does not hold).

    For label files brought to the model's size; the categorical cost's downsampling to attention
    resolutions is :func:`amlight.modules.label_resize.resize_labels` (majority vote)."""
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as F

    tensor = torch.as_tensor(np.ascontiguousarray(labels) if isinstance(labels, np.ndarray) else labels).long()
    if tuple(tensor.shape[-2:]) != tuple(size):
        tensor = F.resize(tv_tensors.Mask(tensor[None]), list(size), interpolation=F.InterpolationMode.NEAREST)
        tensor = tensor.as_subclass(torch.Tensor)[0]
    return tensor
