"""What ``AMPipeline.__call__`` accepts, turned into model-ready tensors at the model's size.

Images: PIL images, uint8 arrays (H, W, 3), float arrays or tensors in [0, 1] ((H, W, 3) arrays,
(3, H, W) tensors, or batches of either), or file paths. Label maps: index or palette-colour images
(PIL or file: decoded with the pipeline's label space exactly as its training data was, through
``amlight.data.io.load_labels``; unknown colours are errors) or integer arrays / tensors of class
indices. Anything at another size than the model's is resized as ``generate`` does (images bilinear
with antialiasing, labels nearest neighbour) with an :class:`InputResizedWarning`.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from amlight.data.resize import resize_image, resize_labels_nearest
from amlight.data.io import load_image, load_labels
from amlight.data.registry import DatasetMetadata


class InputResizedWarning(UserWarning):
    """An input was not at the model's size and was resized to it."""


def as_list(value: Any) -> list:
    """A single item or a list/tuple of items -> a list; batched arrays/tensors (one more dim) are split."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike))


def index_space(num_classes: int, ignore_index: int) -> DatasetMetadata:
    """A label space for index maps only, for pipelines that carry none (colour files need the palette)."""
    return DatasetMetadata("index labels", tuple(str(i) for i in range(num_classes)),
                           tuple((i % 256, 0, 0) for i in range(num_classes)), ignore_index)


def _split_batch(value, ndim_single: int) -> list:
    """An array or tensor with one more dim than a single item -> its items."""
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == ndim_single + 1:
        return list(value)
    return [value]


def image_items(images) -> list:
    items = []
    for value in as_list(images):
        items += _split_batch(value, 3)  # (N, 3, H, W) tensors and (N, H, W, 3) arrays are batches
    return items


def label_items(labels) -> list:
    items = []
    for value in as_list(labels):
        # (N, H, W) index maps are a batch; a uint8 (H, W, 3) array is one colour label image.
        items += [value] if _looks_rgb(value) else _split_batch(value, 2)
    return items


def _looks_rgb(value) -> bool:
    return isinstance(value, np.ndarray) and value.ndim == 3 and value.shape[-1] in (3, 4) and value.dtype == np.uint8


def load_image_item(value, size: tuple[int, int], what: str) -> torch.Tensor:
    """One image -> float (3, H, W) in [-1, 1] at ``size``."""
    from PIL import Image

    if _is_path(value):
        value = load_image(value)
    elif isinstance(value, Image.Image):
        value = np.array(value.convert("RGB"))  # a writable copy (torch warns on read-only arrays)
    if isinstance(value, np.ndarray):
        if value.ndim != 3 or value.shape[-1] not in (3, 4):
            raise ValueError(f"{what}: an image array must be (H, W, 3), got shape {value.shape}")
        value = value[..., :3]
        if value.dtype == np.uint8:
            _note_resize(what, value.shape[:2], size)
            return resize_image(value, size)
        value = torch.from_numpy(np.ascontiguousarray(value)).permute(2, 0, 1)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what}: expected a PIL image, array, tensor or file path, got {type(value).__name__}")
    if value.ndim != 3 or value.shape[0] != 3:
        raise ValueError(f"{what}: an image tensor must be (3, H, W), got shape {tuple(value.shape)}")
    if value.dtype == torch.uint8:
        return load_image_item(value.permute(1, 2, 0).numpy(), size, what)
    value = value.detach().float().cpu()
    low, high = float(value.min()), float(value.max())
    if low < 0 or high > 1:
        raise ValueError(f"{what}: float images must lie in [0, 1] (diffusers' convention), got values in "
                         f"[{low:.3g}, {high:.3g}]; pipe.draw / build_banks take [-1, 1]")
    _note_resize(what, value.shape[-2:], size)
    if tuple(value.shape[-2:]) != tuple(size):
        from torchvision.transforms.v2 import functional as F

        value = F.resize(value, list(size), interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    return value * 2 - 1


def load_label_item(value, size: tuple[int, int], what: str, space, num_classes: int,
                    ignore_index: int) -> torch.Tensor:
    """One label map -> int64 (H, W) at ``size``. ``space``: a PipelineLabelSpace or None (index maps only)."""
    from PIL import Image

    if isinstance(value, np.ndarray) and value.ndim == 3:
        value = Image.fromarray(np.ascontiguousarray(value.astype(np.uint8) if value.dtype == np.uint8 else value))
    if isinstance(value, Image.Image):
        # Through a lossless PNG, so that an image in memory is decoded exactly as the same file would be.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "labels.png"
            value.save(path)
            labels = _read_label_file(path, space, num_classes, ignore_index, what)
    elif _is_path(value):
        labels = _read_label_file(value, space, num_classes, ignore_index, what)
    elif isinstance(value, (np.ndarray, torch.Tensor)):
        labels = torch.as_tensor(np.asarray(value) if isinstance(value, np.ndarray) else value.cpu())
        if labels.ndim != 2 or labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"{what}: label arrays must be integer class indices (H, W), got "
                             f"{labels.dtype} of shape {tuple(labels.shape)}")
        labels = labels.long()
        bad = ((labels < 0) | (labels >= num_classes)) & (labels != ignore_index)
        if bool(bad.any()):
            values = sorted(set(labels[bad].unique().tolist()))[:8]
            raise ValueError(f"{what}: label values {values} are outside the {num_classes} classes "
                             f"(0..{num_classes - 1}, {ignore_index} ignore)")
    else:
        raise TypeError(f"{what}: expected a label image, array, tensor or file path, got {type(value).__name__}")
    labels = torch.as_tensor(labels).long()
    _note_resize(what, labels.shape[-2:], size)
    return resize_labels_nearest(labels, size)


def _read_label_file(path, space, num_classes: int, ignore_index: int, what: str) -> torch.Tensor:
    if space is not None:
        if space.num_classes != num_classes:
            raise ValueError(f"the label space has {space.num_classes} classes, the model {num_classes}")
        return torch.from_numpy(space.load_labels(path))
    # No label space: the file must be an index map (colours mean nothing without a palette).
    return torch.from_numpy(load_labels(path, index_space(num_classes, ignore_index), "index"))


def _note_resize(what: str, shape, size) -> None:
    if tuple(int(v) for v in shape) != tuple(size):
        warnings.warn(f"{what} is {shape[0]}x{shape[1]}, the model draws at {size[0]}x{size[1]}: resized to it "
                      "(images bilinear, labels nearest neighbour)", InputResizedWarning, stacklevel=4)


def to_output(images: torch.Tensor, output_type: str):
    """Images in [-1, 1] (N, 3, H, W) -> what diffusers users expect of ``output_type``."""
    from amlight.utils.visualize import to_uint8

    if output_type == "pt":
        return ((images.float().clamp(-1, 1) + 1) / 2).cpu()
    if output_type == "np":
        return ((images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "pil":
        from PIL import Image

        # The same bytes as the PNGs ``generate`` writes (amlight.utils.visualize.to_uint8).
        return [Image.fromarray(a) for a in to_uint8(images).permute(0, 2, 3, 1).numpy()]
    raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")


def per_item(values: Sequence, n: int, what: str) -> list:
    if len(values) == n:
        return list(values)
    if len(values) == 1:
        return list(values) * n
    raise ValueError(f"{len(values)} {what} for {n} targets: give one, or one per target")
