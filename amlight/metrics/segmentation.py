"""Segmentation mIoU: a pretrained semantic segmenter labels the output, scored against the layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from amlight.metrics.images import DEFAULT_IGNORE_INDEX, check_images, labels_to_numpy
from amlight.metrics.miou import classes_present, intersection_and_union, miou_from_counts
from amlight.metrics.pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MetricWeightsError,
    load_model,
    read_model_config,
    read_preprocess,
    resolve_device,
)

_EXPECTED = ("a semantic segmentation model folder saved with save_pretrained (AutoModelForSemanticSegmentation, "
             "e.g. nvidia/segformer-b5-finetuned-cityscapes-1024-1024) whose class indices are the dataset's")


class SegmentationMIoU:
    """Per-image mIoU of a segmenter's prediction on the output against the target labels.

    ``model_path``: a local folder loadable with ``AutoModelForSemanticSegmentation`` (SegFormer,
    UperNet, ...), trained on the same label space as the dataset (its output channel k must be the
    dataset's class k, e.g. Cityscapes train ids). The output is resized as preprocessor_config.json
    says (unchanged size if none is saved) and normalised with its mean/std (ImageNet's by default);
    the logits are resized bilinearly to the label size and arg-maxed. mIoU per image is averaged over
    the classes present in the labels (:func:`amlight.metrics.miou.miou`); the running totals give the
    dataset-level mIoU (:meth:`dataset_miou`, IoU from summed intersections and unions).
    """

    def __init__(self, model_path: str | Path, num_classes: int | None = None,
                 ignore_index: int = DEFAULT_IGNORE_INDEX, *, device: str | torch.device | None = None,
                 batch_size: int = 4):
        folder, _config = read_model_config(model_path, "segmentation mIoU", _EXPECTED)
        from transformers import AutoModelForSemanticSegmentation

        self.model = load_model(AutoModelForSemanticSegmentation.from_pretrained, folder,
                                "a semantic segmentation model", _EXPECTED)
        model_classes = int(self.model.config.num_labels)
        if num_classes is not None and model_classes != num_classes:
            raise MetricWeightsError(folder, f"the segmenter predicts {model_classes} classes but the dataset has "
                                             f"{num_classes}", _EXPECTED)
        self.num_classes = model_classes if num_classes is None else num_classes
        self.ignore_index = ignore_index
        self.preprocess = read_preprocess(folder, None, IMAGENET_MEAN, IMAGENET_STD, crop=False)
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.batch_size = int(batch_size)
        self.intersection = np.zeros(self.num_classes, dtype=np.int64)
        self.union = np.zeros(self.num_classes, dtype=np.int64)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
        """(N, H, W) int64 predicted classes at ``size`` (default: the images' size)."""
        images = check_images(images)
        size = tuple(images.shape[-2:]) if size is None else tuple(size)
        out = []
        for start in range(0, len(images), self.batch_size):
            x = self.preprocess(images[start:start + self.batch_size], self.device)
            logits = self.model(pixel_values=x).logits
            logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
            out.append(logits.argmax(dim=1).cpu())
        return torch.cat(out).numpy().astype(np.int64) if out else np.zeros((0, *size), np.int64)

    def __call__(self, pred: torch.Tensor, labels) -> np.ndarray:
        """Per-image mIoU (N,) of the segmenter's labels of ``pred`` (float (N, 3, H, W) in [-1, 1])
        against ``labels`` (N, H', W'); also adds to the dataset-level totals."""
        labels = labels_to_numpy(labels)
        if len(labels) != len(pred):
            raise ValueError(f"{len(pred)} images but {len(labels)} label maps")
        predicted = self.predict(pred, labels.shape[-2:])
        inter, union = intersection_and_union(predicted, labels, self.num_classes, self.ignore_index)
        self.intersection += inter.sum(axis=0)
        self.union += union.sum(axis=0)
        return miou_from_counts(inter, union, classes_present(labels, self.num_classes, self.ignore_index))

    def dataset_miou(self) -> float:
        """mIoU from the intersections and unions summed over every image scored so far (classes that
        never appeared in labels or predictions are left out)."""
        return float(miou_from_counts(self.intersection, self.union))

    def reset(self) -> None:
        self.intersection[:] = 0
        self.union[:] = 0
