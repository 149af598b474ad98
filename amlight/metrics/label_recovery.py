"""Label recovery mIoU: a structure score that needs no trained segmenter.

The ground-truth image tells what colour each class has in this scene. Every pixel of the output is
given the class whose ground-truth colour is nearest, and the recovered label map is compared with
the layout by mIoU. A high score means the output draws each region in the right place *and* in a
colour that tells it apart from the other classes of the scene; it does not judge texture or detail,
and two classes whose ground-truth colours are alike cannot be told apart even in a perfect output.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.color import rgb2lab

from amlight.metrics.color import class_means, class_pixel_mask
from amlight.metrics.images import DEFAULT_IGNORE_INDEX, check_pair, images_to_unit, labels_to_numpy
from amlight.metrics.miou import miou


def recover_labels(pred: torch.Tensor, labels, reference_image: torch.Tensor, num_classes: int,
                   ignore_index: int = DEFAULT_IGNORE_INDEX, erode: bool = True) -> np.ndarray:
    """(N, H, W) int64: each pixel of ``pred`` labelled with the class present in ``labels[n]`` whose
    mean Lab colour in ``reference_image[n]`` is nearest (Euclidean distance in Lab, i.e. CIE76).

    Class means are Lab centroids of the class's pixels in the reference (eroded by one pixel when
    ``erode`` and the region survives it). Pixels where ``labels`` is ignored come back as ``ignore_index``;
    ties go to the lower class index. Images without any labelled pixel come back all ``ignore_index``.
    """
    check_pair(pred, reference_image, "reference_image")
    labels = labels_to_numpy(labels, pred)
    pred_lab = rgb2lab(images_to_unit(pred), channel_axis=-1)
    ref_lab = rgb2lab(images_to_unit(reference_image), channel_axis=-1)
    recovered = np.full(labels.shape, ignore_index, dtype=np.int64)
    for n in range(len(labels)):
        present, use = class_pixel_mask(labels[n], num_classes, ignore_index, erode)
        classes = np.flatnonzero(present)
        if classes.size == 0:
            continue
        centers = class_means(ref_lab[n], labels[n], use, num_classes)[classes]  # (K, 3)
        pixels = pred_lab[n].reshape(-1, 3)
        # squared distances by expansion: (P, K) without a (P, K, 3) intermediate
        dist = (pixels ** 2).sum(1, keepdims=True) - 2.0 * pixels @ centers.T + (centers ** 2).sum(1)[None]
        nearest = classes[np.argmin(dist, axis=1)].reshape(labels[n].shape)
        valid = (labels[n] >= 0) & (labels[n] < num_classes) & (labels[n] != ignore_index)
        recovered[n] = np.where(valid, nearest, ignore_index)
    return recovered


def label_recovery_miou(pred: torch.Tensor, labels, reference_image: torch.Tensor, num_classes: int,
                        ignore_index: int = DEFAULT_IGNORE_INDEX, erode: bool = True) -> np.ndarray:
    """Per-image mIoU (N,) of :func:`recover_labels` against ``labels``, over the classes present in
    ``labels[n]``; 1 when every region of ``pred`` has (nearest to) its own class's ground-truth colour.

    ``pred``, ``reference_image``: float (N, 3, H, W) in [-1, 1]; ``labels``: (N, H, W) layout of both.
    An image with a single class scores 1 whatever it looks like; NaN without labelled pixels.
    """
    recovered = recover_labels(pred, labels, reference_image, num_classes, ignore_index, erode)
    return miou(recovered, labels_to_numpy(labels), num_classes, ignore_index)
