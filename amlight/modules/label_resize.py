"""Label-preserving resizing of label-index maps.

Labels are categories, not intensities: they are never blended. Downsampling by an integer factor
takes the majority class of each block (ties go to the lower class index, deterministically);
any other size change takes the nearest pixel. Either way every output value is a value of the input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_labels(labels: torch.Tensor, size: tuple[int, int], ignore_index: int = 255) -> torch.Tensor:
    """(B, H, W) integer labels -> (B, h, w) with the same dtype."""
    if labels.ndim != 3:
        raise ValueError(f"labels must be (B, H, W), got shape {tuple(labels.shape)}")
    h, w = int(size[0]), int(size[1])
    H, W = labels.shape[-2:]
    if (H, W) == (h, w):
        return labels
    if H % h == 0 and W % w == 0 and H >= h and W >= w:
        return _majority_downsample(labels, H // h, W // w, ignore_index)
    return F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest-exact")[:, 0].to(labels.dtype)


def _majority_downsample(labels: torch.Tensor, fh: int, fw: int, ignore_index: int) -> torch.Tensor:
    B, H, W = labels.shape
    # Map labels to dense ids so the one-hot is only as wide as the classes that occur.
    values, dense = torch.unique(labels, return_inverse=True)
    onehot = F.one_hot(dense.long(), num_classes=values.numel()).permute(0, 3, 1, 2).float()
    counts = F.avg_pool2d(onehot, kernel_size=(fh, fw), stride=(fh, fw))
    # A block that is partly ignore and partly class k takes k: ignore only wins when alone.
    is_ignore = values == ignore_index
    if bool(is_ignore.any()) and values.numel() > 1:
        counts[:, is_ignore] = counts[:, is_ignore] * 1e-3
    return values[counts.argmax(dim=1)].to(labels.dtype)
