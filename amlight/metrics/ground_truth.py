"""All ground-truth metrics of a batch in one call, for synthetic pairs where the right output is known.

``evaluate`` and ``metrics`` call :func:`ground_truth_scores` on batches of tensors and average the
per-image arrays (with :func:`amlight.metrics.mean_ci95`) over the whole set.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from amlight.metrics.color import class_color_error
from amlight.metrics.images import DEFAULT_IGNORE_INDEX, check_pair
from amlight.metrics.label_recovery import label_recovery_miou
from amlight.metrics.pixel import psnr, ssim

GROUND_TRUTH_METRICS = ("psnr", "ssim", "delta_e", "label_miou")
LABEL_METRICS = ("delta_e", "label_miou")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "delta_e": False, "label_miou": True}


def ground_truth_scores(
    pred: torch.Tensor,
    target: torch.Tensor,
    labels=None,
    num_classes: int | None = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    *,
    metrics: Iterable[str] | None = None,
    delta_e_formula: str = "ciede2000",
    erode: bool = True,
) -> dict[str, np.ndarray]:
    """Per-image scores of ``pred`` against the ground truth ``target``: {name: float64 (N,)}.

    ``metrics`` (default: all of psnr, ssim, delta_e, label_miou when ``labels`` are given, else
    psnr and ssim): see :func:`psnr`, :func:`ssim`, :func:`class_color_error` (``delta_e``, the
    per-image mean over classes) and :func:`label_recovery_miou` (``label_miou``). ``pred``,
    ``target``: float (N, 3, H, W) in [-1, 1]; ``labels``: (N, H, W) layout of the target, needed
    with ``num_classes`` by delta_e and label_miou.
    """
    check_pair(pred, target)
    if metrics is None:
        metrics = GROUND_TRUTH_METRICS if labels is not None else ("psnr", "ssim")
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in GROUND_TRUTH_METRICS]
    if unknown:
        raise ValueError(f"unknown ground-truth metric(s) {', '.join(unknown)}; "
                         f"known: {', '.join(GROUND_TRUTH_METRICS)}")
    needs_labels = [m for m in metrics if m in LABEL_METRICS]
    if needs_labels and (labels is None or num_classes is None):
        raise ValueError(f"{', '.join(needs_labels)} need labels and num_classes")
    scores: dict[str, np.ndarray] = {}
    for name in metrics:
        if name == "psnr":
            scores[name] = psnr(pred, target)
        elif name == "ssim":
            scores[name] = ssim(pred, target)
        elif name == "delta_e":
            scores[name] = class_color_error(pred, target, labels, num_classes, ignore_index,
                                             formula=delta_e_formula, erode=erode).per_image
        elif name == "label_miou":
            scores[name] = label_recovery_miou(pred, labels, target, num_classes, ignore_index, erode=erode)
    return scores
