"""Small datasets: a validation slice held out of train when a dataset has no val split, and how many
training batches a split gives.

Shared by the DataModule (which acts on it) and ``data check`` (which tells the user beforehand), so
both count the same way. Light: no torch, no Lightning.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

from amlight.data.registry import DatasetMetadata, Scene

DEFAULT_VAL_HOLDOUT = 0.1  # share of train held out when there is no val split


def holdout_count(num_train: int, fraction: float) -> int:
    """Scenes held out for validation: ceil(fraction * N), at least 1 and leaving at least 1 to train on
    (0 when fraction is 0 or there are fewer than 2 scenes)."""
    if fraction <= 0 or num_train < 2:
        return 0
    return min(num_train - 1, max(1, math.ceil(fraction * num_train)))


def holdout_indices(num_train: int, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices), both sorted; the same for the same N, fraction and seed."""
    held = set(random.Random(seed).sample(range(num_train), holdout_count(num_train, fraction)))
    return [i for i in range(num_train) if i not in held], sorted(held)


def train_batches(num_pairs: int, batch_size: int, drop_last: bool = True) -> int:
    """Batches per epoch of a training loader over ``num_pairs`` items."""
    return num_pairs // batch_size if drop_last else math.ceil(num_pairs / batch_size)


class SourceSubset:
    """Some scenes of a scene source, in the source's order: a SceneSource itself."""

    def __init__(self, source, indices: Sequence[int]):
        self.source, self.indices = source, list(indices)
        self.scenes: list[Scene] = [source.scenes[i] for i in self.indices]

    @property
    def metadata(self) -> DatasetMetadata:
        return self.source.metadata

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"SourceSubset({self.source!r}, {len(self)} scenes)"

    def load(self, index: int):
        return self.source.load(self.indices[index])


def split_off_holdout(source, fraction: float, seed: int = 0) -> tuple[SourceSubset, SourceSubset]:
    """(train part, held-out part) of a source; see :func:`holdout_indices`."""
    train, held = holdout_indices(len(source), fraction, seed)
    return SourceSubset(source, train), SourceSubset(source, held)
