"""Turning tensors into images people can look at: label colouring, grids, atomic PNG writes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from amlight.utils.atomic_write import atomic_write
from amlight.data.registry import DatasetMetadata


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> uint8 (B, 3, H, W)."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def fallback_palette(num_colors: int = 256) -> np.ndarray:
    """Distinct, deterministic colours for label maps without a dataset palette."""
    rng = np.random.default_rng(12345)
    return rng.integers(40, 256, size=(num_colors, 3), dtype=np.uint8)


def colorize(labels: torch.Tensor, metadata: DatasetMetadata | None = None) -> torch.Tensor:
    """(B, H, W) labels -> uint8 (B, 3, H, W) colour maps (ignore is black)."""
    lab = labels.detach().cpu().numpy()
    if metadata is not None:
        rgb = metadata.colorize(lab)
    else:
        palette = fallback_palette()
        palette[255] = 0
        rgb = palette[np.clip(lab, 0, 255)]
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()


def column_grid(columns: list[torch.Tensor], pad: int = 2, upscale: int = 1) -> torch.Tensor:
    """Rows of samples, one column per tensor (each uint8 (B, 3, H, W)) -> uint8 (3, H', W')."""
    rows = columns[0].shape[0]
    h, w = columns[0].shape[-2:]
    cols = len(columns)
    grid = torch.full((3, pad + rows * (h + pad), pad + cols * (w + pad)), 255, dtype=torch.uint8)
    for c, col in enumerate(columns):
        if col.shape[-2:] != (h, w):
            col = torch.nn.functional.interpolate(col.float(), size=(h, w), mode="nearest").to(torch.uint8)
        for r in range(rows):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[:, y : y + h, x : x + w] = col[r]
    if upscale > 1:
        grid = grid.repeat_interleave(upscale, 1).repeat_interleave(upscale, 2)
    return grid


def save_png(image: torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """Write a uint8 (3, H, W) tensor or (H, W, 3) array as PNG, atomically (no half-written files)."""
    array = image.permute(1, 2, 0).cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
