"""Evaluation metrics.

Convention: images are float tensors in [-1, 1] shaped (N, 3, H, W) (what the generation pipeline
outputs; :func:`images_from_uint8` converts files read as uint8 (H, W, 3)); label maps are integer
(N, H, W) arrays or tensors with an ignore index (default 255). Every per-image metric returns a
float64 numpy array (N,), to be averaged with :func:`mean_ci95`.

Ground truth (synthetic pairs): :func:`psnr`, :func:`ssim`, :func:`class_color_error` (ΔE per
class), :func:`label_recovery_miou`, all at once with :func:`ground_truth_scores`.
The paper's metrics (pretrained networks loaded from local folders, never downloaded):
:class:`FIDMetric`, :class:`SelfSimilarityDistance` (Self-sim), :class:`ClipImageSimilarity`
(I_CLIP), :class:`SegmentationMIoU`; a bad weights path raises :class:`MetricWeightsError`.
"""
from amlight.metrics.clip_similarity import ClipImageSimilarity
from amlight.metrics.color import ClassColorError, class_color_error
from amlight.metrics.fid import FIDMetric, fid_score
from amlight.metrics.ground_truth import GROUND_TRUTH_METRICS, HIGHER_IS_BETTER, ground_truth_scores
from amlight.metrics.images import DEFAULT_IGNORE_INDEX, images_from_uint8, images_to_uint8
from amlight.metrics.label_recovery import label_recovery_miou, recover_labels
from amlight.metrics.miou import intersection_and_union, miou, miou_from_counts
from amlight.metrics.pixel import psnr, ssim
from amlight.metrics.pretrained import MetricWeightsError, MissingDependencyError
from amlight.metrics.segmentation import SegmentationMIoU
from amlight.metrics.self_similarity import SelfSimilarityDistance
from amlight.metrics.stats import mean_ci95

__all__ = [
    "DEFAULT_IGNORE_INDEX",
    "GROUND_TRUTH_METRICS",
    "HIGHER_IS_BETTER",
    "ClassColorError",
    "ClipImageSimilarity",
    "FIDMetric",
    "MetricWeightsError",
    "MissingDependencyError",
    "SegmentationMIoU",
    "SelfSimilarityDistance",
    "class_color_error",
    "fid_score",
    "ground_truth_scores",
    "images_from_uint8",
    "images_to_uint8",
    "intersection_and_union",
    "label_recovery_miou",
    "mean_ci95",
    "miou",
    "miou_from_counts",
    "psnr",
    "recover_labels",
    "ssim",
]
