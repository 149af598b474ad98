"""The applications of docs/method.md#part-9-applications as label-map operations; generation itself is unchanged.

- One-to-one mapping: the user links a region of the exemplar to a region of the target (this car
  to that car). Both regions get a fresh label that no class and no other link has, in *match
  labels* that only the categorical cost reads; structure guidance keeps the true classes. The cost
  then links the two regions only to each other, and the rest of each class only to the rest.
  (Only the cost-reading modes, ``hard_mask`` and ``adapter``, can honour a link.)
- Segmentation-based editing: change a label map (paint a region with a class) and regenerate
  with the original image as its own exemplar.
- Translation: the target's labels come from another image's label map; nothing to add here
  beyond drawing that label map (see ``amlight generate --target-images``).

Python, on a loaded pipeline (``pipe = AMPipeline.from_checkpoints(stage1, adapter)``)::

    # one-to-one: exemplar car mask -> target car mask
    t_match, x_match = link_regions(target, exemplar_labels, [(x_car, t_car)], pipe.num_classes)
    pipe.generate(ex_img[None], exemplar_labels[None], target[None], attention="adapter",
                  target_match_labels=t_match[None], exemplar_match_labels=x_match[None])
    # editing: paint a car (class 7) onto the road, regenerate from the original image
    edited = paint_region(labels, 7, box_mask(labels.shape, (4, 20, 12, 28)))
    pipe.generate(image[None], labels[None], edited[None])
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

Mask = torch.Tensor | np.ndarray


def _as_labels(labels) -> torch.Tensor:
    labels = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(labels))
    if labels.ndim != 2:
        raise ValueError(f"expected one label map (H, W), got shape {tuple(labels.shape)}")
    return labels.long()


def _as_mask(mask, shape: tuple[int, int], what: str) -> torch.Tensor:
    mask = torch.as_tensor(np.ascontiguousarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):  # an RGB(A) mask image: any non-black pixel
        mask = mask[..., :3].amax(dim=-1)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{what} has size {tuple(mask.shape)} but its label map is {tuple(shape)}")
    mask = mask.bool()
    if not bool(mask.any()):
        raise ValueError(f"{what} is empty: it selects no pixel")
    return mask


def link_regions(
    target_labels,
    exemplar_labels,
    links: Sequence[tuple[Mask, Mask]],
    num_classes: int,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match labels for a one-to-one mapping: ``(target_match_labels, exemplar_match_labels)``.

    ``links``: ``(exemplar_mask, target_mask)`` pairs of boolean (H, W) masks. Link ``i`` relabels
    both its regions to ``num_classes + i`` (skipping ``ignore_index``), a label nothing else has.
    Later links win where masks overlap.
    """
    target, exemplar = _as_labels(target_labels).clone(), _as_labels(exemplar_labels).clone()
    if not links:
        raise ValueError("link_regions needs at least one (exemplar_mask, target_mask) link")
    label = num_classes
    for i, (ex_mask, tgt_mask) in enumerate(links):
        if label == ignore_index:
            label += 1
        x = _as_mask(ex_mask, exemplar.shape, f"link {i}: exemplar mask")
        t = _as_mask(tgt_mask, target.shape, f"link {i}: target mask")
        exemplar[x] = label
        target[t] = label
        label += 1
    return target, exemplar


def paint_region(labels, cls: int, mask: Mask, num_classes: int | None = None) -> torch.Tensor:
    """A copy of ``labels`` (H, W) with the pixels of ``mask`` set to class ``cls``."""
    labels = _as_labels(labels)
    if num_classes is not None and not 0 <= cls < num_classes:
        raise ValueError(f"class {cls} is outside the model's classes 0..{num_classes - 1}")
    edited = labels.clone()
    edited[_as_mask(mask, labels.shape, "paint mask")] = int(cls)
    return edited


def box_mask(shape: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    """A boolean (H, W) mask of the pixel box ``(x0, y0, x1, y1)``, x1/y1 exclusive, clipped to the image."""
    height, width = int(shape[0]), int(shape[1])
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {tuple(box)} is empty: it must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0")
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[max(y0, 0):min(y1, height), max(x0, 0):min(x1, width)] = True
    if not bool(mask.any()):
        raise ValueError(f"box {tuple(box)} lies outside the {width}x{height} image")
    return mask


def instance_mask(instances, instance_id: int, what: str = "instance map") -> torch.Tensor:
    """The (H, W) mask of one id in an instance-id map (e.g. Cityscapes' *_instanceIds.png)."""
    instances = torch.as_tensor(np.ascontiguousarray(instances) if not isinstance(instances, torch.Tensor) else instances)
    if instances.ndim == 3:
        instances = instances[..., 0]
    mask = instances == int(instance_id)
    if not bool(mask.any()):
        present = torch.unique(instances).tolist()[:20]
        raise ValueError(f"{what} has no instance {instance_id}; ids present: {present}")
    return mask
