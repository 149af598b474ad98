"""Datasets by name, in the spirit of detectron2's DatasetCatalog/MetadataCatalog.

A dataset is registered once, with its metadata (class names, colours, ignore label) and a builder
that turns a root folder and a split into a :class:`SceneSource`. Everything downstream (the
DataModule, ``data check``, retrieval) asks the registry by name, so adding a dataset is one file
with one :func:`register_dataset` call.

Where registrations come from: the built-in datasets register on ``import amlight.data`` (its
``__init__`` imports :mod:`amlight.data.datasets`; this module imports none of them, so there is no
import circle); a dataset in the user's own module is named ``"my_pkg.my_module:NAME"`` (the module
is imported on first use and must register NAME); an installed package can declare entry points in the
group ``amlight.datasets`` (``NAME = my_pkg.my_module``, loaded when NAME is first asked for).
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

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
ENTRY_POINT_GROUP = "amlight.datasets"
# "package.module:NAME": a dataset registered by the user's own module (a folder path never matches:
# no slashes, and the part before the colon is a dotted Python name).
_MODULE_SPEC = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[^:/\\]+$")


def register_dataset(
    name: str,
    builder: Builder,
    metadata: DatasetMetadata | None = None,
    description: str = "",
    default_root: str | None = None,
    splits: Callable[[Path], Sequence[str]] | None = None,
    unreadable_splits: Callable[[Path], Mapping[str, str]] | None = None,
) -> DatasetEntry:
    """Register a dataset under ``name``. Registering a name twice is an error (it hides a typo).

    ``splits(root)``, if given, lists the splits present on disk (``data check`` checks each one).
    ``unreadable_splits(root)``, if given, maps the splits present on disk that this dataset does not
    read (an official test split without labels, coarse-only splits) to why; ``data check`` says so.
    """
    if name in _REGISTRY:
        raise ValueError(f"dataset {name!r} is already registered")
    entry = DatasetEntry(name, builder, metadata, description, default_root)
    if splits is not None:
        entry.extra["splits"] = splits
    if unreadable_splits is not None:
        entry.extra["unreadable_splits"] = unreadable_splits
    _REGISTRY[name] = entry
    return entry


def is_module_spec(name: str) -> bool:
    """Whether ``name`` has the form ``package.module:NAME`` (a dataset from the user's own module)."""
    return bool(_MODULE_SPEC.match(str(name)))


def _entry_points() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def registered_datasets() -> list[str]:
    """Names registered so far plus those that installed packages declare as entry points."""
    return sorted(set(_REGISTRY) | set(_entry_points()))


def get_dataset_entry(name: str) -> DatasetEntry:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if is_module_spec(name):
        return _entry_from_module(name)
    entry_point = _entry_points().get(name)
    if entry_point is not None:
        return _entry_from_entry_point(entry_point)
    raise UnknownDatasetError(
        f"unknown dataset {name!r}; registered datasets: {', '.join(registered_datasets())}. "
        "A folder with images/, labels/ and classes.yaml works as dataset 'folder' "
        "(or pass the folder path itself); a dataset registered in your own module is named "
        "'my_pkg.my_module:NAME'."
    )


def _entry_from_module(spec: str) -> DatasetEntry:
    module_name, _, name = spec.partition(":")
    before = set(_REGISTRY)
    try:
        importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownDatasetError(
            f"dataset {spec!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}). "
            "Install its package or put the folder that holds it on PYTHONPATH"
        ) from None
    if name not in _REGISTRY:
        added = sorted(set(_REGISTRY) - before)
        raise UnknownDatasetError(
            f"dataset {spec!r}: module {module_name!r} registered no dataset {name!r} "
            f"({'it registered ' + ', '.join(added) if added else 'it registered none'}). Call "
            f"amlight.data.registry.register_dataset({name!r}, builder, metadata=...) at the module's top level"
        )
    return _REGISTRY[name]


def _entry_from_entry_point(entry_point) -> DatasetEntry:
    # The entry point's value is a module that registers the dataset on import, or a function doing it.
    where = f"entry point {entry_point.name} = {entry_point.value} (group {ENTRY_POINT_GROUP})"
    try:
        loaded = entry_point.load()
    except ImportError as exc:
        raise UnknownDatasetError(f"dataset {entry_point.name!r}: {where} cannot be loaded "
                                  f"({type(exc).__name__}: {exc})") from None
    if entry_point.name not in _REGISTRY and callable(loaded):
        loaded()
    if entry_point.name not in _REGISTRY:
        raise UnknownDatasetError(f"dataset {entry_point.name!r}: {where} did not register it")
    return _REGISTRY[entry_point.name]


def is_folder_path(name_or_dir: str | Path) -> bool:
    """Whether ``name_or_dir`` names a folder rather than a dataset: a registered name (or
    ``package.module:NAME``) wins over a folder of the same name in the working directory."""
    name = str(name_or_dir)
    return name not in _REGISTRY and not is_module_spec(name) and Path(name).is_dir() and (
        name not in _entry_points())


class DatasetRootConflict(ValueError):
    """``dataset`` is a folder path and ``root`` another folder dataset: which one to read is unclear."""


def _same_folder(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def resolve_dataset(name_or_dir: str, root: str | Path | None = None,
                    flag: str = "--data.init_args.root") -> tuple[DatasetEntry, Path, str | None]:
    """(entry, root folder, note) that ``dataset`` and ``root`` mean together.

    A registered name is read from ``root`` (default: its registered default root). A folder path is a
    `folder` dataset read from that path: ``root`` only locates a *named* dataset, so a root that is a
    registered dataset's default root (``data/synthetic``, left in the quickstart config) or no folder
    dataset at all is set aside, and ``note`` says so. When ``root`` is another folder dataset of the
    user's (it holds ``classes.yaml``), the two name different data: :class:`DatasetRootConflict`,
    naming both.
    """
    name = str(name_or_dir)
    if not is_folder_path(name):
        entry = get_dataset_entry(name)
        chosen = root if root is not None else entry.default_root
        if chosen is None:
            raise ValueError(f"dataset {entry.name!r} needs a root folder ({flag} DIR)")
        return entry, Path(chosen), None
    entry, folder = get_dataset_entry("folder"), Path(name)
    if root is None or str(root) == "" or _same_folder(root, folder):
        return entry, folder, None
    default_roots = {e.name: e.default_root for e in _REGISTRY.values() if e.default_root}
    owner = next((n for n, r in default_roots.items() if _same_folder(root, r)), None)
    if owner is None and (Path(root) / "classes.yaml").is_file():
        raise DatasetRootConflict(
            f"dataset {name!r} is a folder dataset and root {str(root)!r} is another one: a folder given as the "
            f"dataset is read from its own path, so it is unclear which to read. Drop root ({flag} null) to read "
            f"{name}, or set the dataset to 'folder' to read {root}"
        )
    whose = f" (the {owner} dataset's default root)" if owner else ""
    return entry, folder, (f"reading the folder dataset {name}; root {root}{whose} is not used: root only says where "
                           f"a named dataset lives ({flag} null silences this)")


def build_dataset(name_or_dir: str, root: str | Path | None = None, split: str = "train", **kwargs) -> SceneSource:
    """Build a dataset by registered name (or ``package.module:NAME``), or from a folder path (the
    `folder` format, read from that path; see :func:`resolve_dataset`)."""
    entry, folder, _ = resolve_dataset(name_or_dir, root, flag="root=")
    return entry.builder(root=folder, split=split, **kwargs)
