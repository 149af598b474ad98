"""Datasets by name, in the spirit of detectron2's DatasetCatalog/MetadataCatalog.

A dataset is registered once, with its metadata (class names, colours, ignore label) and a builder
that turns a root folder and a split into a :class:`SceneSource`. Everything downstream (the
DataModule, ``data check``, retrieval) asks the registry by name, so adding a dataset is one file
with one :func:`register_dataset` call, imported from ``amlight/data/datasets/__init__.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class DatasetMetadata:
    """What a label index means: class names, their colours (RGB), and the label that is ignored."""

    name: str
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore_index: int = 255

    def __post_init__(self):
        if len(self.class_names) != len(self.colors):
            raise ValueError(
                f"dataset {self.name!r}: {len(self.class_names)} class names but {len(self.colors)} colours"
            )
        if 0 <= self.ignore_index < len(self.class_names):
            raise ValueError(
                f"dataset {self.name!r}: ignore_index {self.ignore_index} collides with class "
                f"{self.class_names[self.ignore_index]!r}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def palette(self) -> np.ndarray:
        """(num_classes, 3) uint8 array of class colours."""
        return np.asarray(self.colors, dtype=np.uint8).reshape(-1, 3)

    def colorize(self, labels: np.ndarray, ignore_color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
        """Label indices (H, W) to an RGB uint8 image (H, W, 3); ignore and unknown labels get ignore_color."""
        labels = np.asarray(labels)
        lut = np.tile(np.asarray(ignore_color, dtype=np.uint8), (256, 1))
        lut[: self.num_classes] = self.palette()
        return lut[np.clip(labels, 0, 255).astype(np.int64)]


@dataclass(frozen=True)
class Scene:
    """One image/label pair on disk."""

    name: str
    image_path: Path
    label_path: Path


class SceneSource(Protocol):
    """What a dataset builder returns: an ordered list of scenes plus how to decode them."""

    metadata: DatasetMetadata
    scenes: Sequence[Scene]

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 (H, W, 3), labels int64 (H, W)) of scene ``index``; clear errors on bad files."""
        ...


Builder = Callable[..., SceneSource]


@dataclass
class DatasetEntry:
    name: str
    builder: Builder
    metadata: DatasetMetadata | None  # None: read from the dataset folder (the `folder` format)
    description: str = ""
    default_root: str | None = None
    extra: dict = field(default_factory=dict)


class UnknownDatasetError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(
    name: str,
    builder: Builder,
    metadata: DatasetMetadata | None = None,
    description: str = "",
    default_root: str | None = None,
) -> DatasetEntry:
    """Register a dataset under ``name``. Registering a name twice is an error (it hides a typo)."""
    if name in _REGISTRY:
        raise ValueError(f"dataset {name!r} is already registered")
    entry = DatasetEntry(name, builder, metadata, description, default_root)
    _REGISTRY[name] = entry
    return entry


def registered_datasets() -> list[str]:
    _ensure_builtin_datasets()
    return sorted(_REGISTRY)


def get_dataset_entry(name: str) -> DatasetEntry:
    _ensure_builtin_datasets()
    if name not in _REGISTRY:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; registered datasets: {', '.join(sorted(_REGISTRY))}. "
            "A folder with images/, labels/ and classes.yaml works as dataset 'folder' "
            "(or pass the folder path itself)."
        )
    return _REGISTRY[name]


def build_dataset(name_or_dir: str, root: str | Path | None = None, split: str = "train", **kwargs) -> SceneSource:
    """Build a dataset by registered name, or from a folder path (the `folder` format)."""
    _ensure_builtin_datasets()
    if name_or_dir not in _REGISTRY and Path(name_or_dir).is_dir():
        root, name_or_dir = name_or_dir, "folder"
    entry = get_dataset_entry(name_or_dir)
    root = root if root is not None else entry.default_root
    if root is None:
        raise ValueError(f"dataset {entry.name!r} needs a root folder (pass root=...)")
    return entry.builder(root=Path(root), split=split, **kwargs)


def _ensure_builtin_datasets() -> None:
    # The built-in datasets register themselves on import; importing here keeps the registry
    # complete whichever module a user imports first.
    from amlight.data import datasets  # noqa: F401
