"""Per-class colour error: does each region of the output have the colour it has in the ground truth?

For every class present in the target layout, the mean colour of that class's region is taken in
the output and in the ground-truth image, both means go to CIE Lab (D65) and their colour
difference (CIEDE2000 by default, or CIE76) is the class's error. An image's score is the
unweighted mean over its classes, so a small object counts as much as the sky.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from skimage.color import deltaE_cie76, deltaE_ciede2000, rgb2lab

from amlight.metrics.images import DEFAULT_IGNORE_INDEX, check_pair, images_to_unit, labels_to_numpy

DELTA_E_FORMULAS = {"ciede2000": deltaE_ciede2000, "de76": deltaE_cie76}


class ClassColorError(NamedTuple):
    """``per_image`` (N,): mean ΔE over the classes present in each image (NaN if none);
    ``per_class`` (N, num_classes): each class's ΔE, NaN where the class is absent."""

    per_image: np.ndarray
    per_class: np.ndarray


def srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    """sRGB values in [0, 1] to linear light (IEC 61966-2-1)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] to sRGB values (IEC 61966-2-1); the inverse of :func:`srgb_to_linear`."""
    linear = np.clip(np.asarray(linear, dtype=np.float64), 0.0, 1.0)
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)


def interior_mask(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose 3x3 neighbourhood all has their label, i.e. each class region eroded
    by one pixel (8-connected); the image border does not count as a boundary."""
    padded = np.pad(labels, 1, mode="edge")
    height, width = labels.shape
    inside = np.ones(labels.shape, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            if dy == 1 and dx == 1:
                continue
            inside &= padded[dy:dy + height, dx:dx + width] == labels
    return inside


def class_pixel_mask(labels: np.ndarray, num_classes: int, ignore_index: int,
                     erode: bool) -> tuple[np.ndarray, np.ndarray]:
    """(present (num_classes,) bool, use (H, W) bool): the classes present in ``labels`` and the pixels
    that represent them. With ``erode``, a class is represented by its region eroded by one pixel when
    that leaves any pixel, by its whole region otherwise (thin or tiny regions)."""
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    counts = np.bincount(labels[valid], minlength=num_classes)[:num_classes]
    present = counts > 0
    if not erode:
        return present, valid
    inside = interior_mask(labels) & valid
    inside_counts = np.bincount(labels[inside], minlength=num_classes)[:num_classes]
    survives = inside_counts > 0
    safe = np.where(valid, labels, 0)
    use = valid & (inside | ~survives[safe])
    return present, use


def class_means(values: np.ndarray, labels: np.ndarray, use: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, C) mean of ``values`` (H, W, C) over each class's pixels in ``use``; NaN rows for
    classes without pixels."""
    ids = labels[use]
    counts = np.bincount(ids, minlength=num_classes)[:num_classes].astype(np.float64)
    picked = values[use]
    sums = np.stack([np.bincount(ids, weights=picked[:, c], minlength=num_classes)[:num_classes]
                     for c in range(values.shape[-1])], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def class_color_error(
    pred: torch.Tensor,
    target: torch.Tensor,
    labels,
    num_classes: int,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    formula: str = "ciede2000",
    erode: bool = True,
) -> ClassColorError:
    """ΔE between each class region's mean colour in ``pred`` and in ``target`` (the ground truth).

    For image n and every class c present in ``labels[n]`` (ignore pixels excluded): the pixels of c
    (eroded by one pixel when ``erode`` and the region survives it, so boundary blur does not
    dominate) are averaged in *linear* RGB in each image (the colour the region has when seen from
    afar), each mean is converted back to sRGB and then to CIE Lab (D65, :func:`skimage.color.rgb2lab`),
    and the two Lab colours are compared with ``formula``: "ciede2000" (CIEDE2000, default) or
    "de76" (Euclidean distance in Lab). The per-image value is the unweighted mean over classes.

    ``pred``, ``target``: float (N, 3, H, W) in [-1, 1]; ``labels``: (N, H, W) class indices of the
    target layout. Returns :class:`ClassColorError` (per_image (N,), per_class (N, num_classes)).
    """
    if formula not in DELTA_E_FORMULAS:
        raise ValueError(f"formula must be one of {', '.join(DELTA_E_FORMULAS)}, got {formula!r}")
    check_pair(pred, target)
    labels = labels_to_numpy(labels, pred)
    delta = DELTA_E_FORMULAS[formula]
    p_lin, t_lin = srgb_to_linear(images_to_unit(pred)), srgb_to_linear(images_to_unit(target))
    per_class = np.full((len(labels), num_classes), np.nan)
    for n in range(len(labels)):
        present, use = class_pixel_mask(labels[n], num_classes, ignore_index, erode)
        if not present.any():
            continue
        lab_p = rgb2lab(linear_to_srgb(class_means(p_lin[n], labels[n], use, num_classes)[present]))
        lab_t = rgb2lab(linear_to_srgb(class_means(t_lin[n], labels[n], use, num_classes)[present]))
        per_class[n, present] = delta(lab_t, lab_p)
    return ClassColorError(_nanmean_rows(per_class), per_class)


def _nanmean_rows(table: np.ndarray) -> np.ndarray:
    counts = np.sum(~np.isnan(table), axis=1)
    sums = np.nansum(table, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
