"""The categorical matching cost C: which exemplar positions share the class of each target position."""
from __future__ import annotations

import torch

from amlight.modules.label_resize import resize_labels


def categorical_cost(
    target_labels: torch.Tensor,
    exemplar_labels: torch.Tensor,
    size: tuple[int, int],
    ignore_index: int = 255,
) -> torch.Tensor:
    """C[b, q, k] = target class at q == exemplar class at k, for q, k in row-major order at ``size``.

    Rows are target positions and columns exemplar positions: the same orientation as the attention
    logits Q_target K_exemplar^T (the public reference code builds it transposed). Labels are resized
    label-preservingly; an ignore label matches nothing, not even another ignore label.

    target_labels: (B, H, W); exemplar_labels: (B, H', W') with the same B. Returns bool (B, h*w, h*w).
    """
    if target_labels.shape[0] != exemplar_labels.shape[0]:
        raise ValueError(
            f"target and exemplar label batches differ: {target_labels.shape[0]} vs {exemplar_labels.shape[0]}"
        )
    t = resize_labels(target_labels, size, ignore_index).flatten(1)
    e = resize_labels(exemplar_labels, size, ignore_index).flatten(1)
    same = t[:, :, None] == e[:, None, :]
    return same & (t != ignore_index)[:, :, None]
