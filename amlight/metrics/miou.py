"""Mean intersection-over-union of predicted label maps against reference label maps."""
from __future__ import annotations

import numpy as np

from amlight.metrics.images import DEFAULT_IGNORE_INDEX, labels_to_numpy


def intersection_and_union(pred_labels, labels, num_classes: int,
                           ignore_index: int = DEFAULT_IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray]:
    """Per image and class, the pixel counts of intersection and union, each (N, num_classes) int64.

    Pixels whose reference label is ``ignore_index`` (or outside 0..num_classes-1) are left out; a
    predicted value outside the classes counts as wrong for the reference class. Summing both over
    images and dividing gives the dataset-level IoU (:func:`miou_from_counts`).
    """
    pred_labels, labels = labels_to_numpy(pred_labels), labels_to_numpy(labels)
    if pred_labels.shape != labels.shape:
        raise ValueError(f"predicted labels have shape {pred_labels.shape} but reference labels {labels.shape}")
    inter = np.zeros((len(labels), num_classes), dtype=np.int64)
    union = np.zeros_like(inter)
    for n in range(len(labels)):
        valid = (labels[n] >= 0) & (labels[n] < num_classes) & (labels[n] != ignore_index)
        truth = labels[n][valid]
        guess = pred_labels[n][valid]
        guess = np.where((guess >= 0) & (guess < num_classes), guess, num_classes)  # out of range: its own bin
        confusion = np.bincount(truth * (num_classes + 1) + guess,
                                minlength=num_classes * (num_classes + 1)).reshape(num_classes, num_classes + 1)
        hits = np.diag(confusion[:, :num_classes])
        inter[n] = hits
        union[n] = confusion.sum(axis=1) + confusion[:, :num_classes].sum(axis=0) - hits
    return inter, union


def miou_from_counts(intersection: np.ndarray, union: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
    """Mean IoU over the last axis, counting the classes in ``present`` (default: union > 0); NaN when none."""
    intersection, union = np.asarray(intersection, np.float64), np.asarray(union, np.float64)
    present = union > 0 if present is None else np.asarray(present, bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, intersection / np.where(union > 0, union, 1), 0.0)
        count = present.sum(axis=-1)
        return np.where(count > 0, iou.sum(axis=-1) / np.maximum(count, 1), np.nan)


def miou(pred_labels, labels, num_classes: int, ignore_index: int = DEFAULT_IGNORE_INDEX) -> np.ndarray:
    """Per-image mean IoU (N,), averaged over the classes present in the *reference* ``labels`` of that
    image (a class only predicted adds no term, but its false positives lower the IoU of the classes
    whose pixels it took). NaN for an image whose labels are all ignored.

    ``pred_labels``, ``labels``: integer (N, H, W), numpy or torch.
    """
    inter, union = intersection_and_union(pred_labels, labels, num_classes, ignore_index)
    return miou_from_counts(inter, union, classes_present(labels, num_classes, ignore_index))


def classes_present(labels, num_classes: int, ignore_index: int = DEFAULT_IGNORE_INDEX) -> np.ndarray:
    """(N, num_classes) bool: which classes have at least one pixel in each label map."""
    labels = labels_to_numpy(labels)
    present = np.zeros((len(labels), num_classes), dtype=bool)
    for n in range(len(labels)):
        valid = (labels[n] >= 0) & (labels[n] < num_classes) & (labels[n] != ignore_index)
        present[n] = np.bincount(labels[n][valid], minlength=num_classes)[:num_classes] > 0
    return present
