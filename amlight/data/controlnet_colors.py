"""Label maps drawn as conditioning images for a segmentation ControlNet.

Public segmentation ControlNets for SD 1.5 (e.g. ``lllyasviel/control_v11p_sd15_seg``) learned to read
label maps painted in the ADE20K palette, so a dataset's class indices must be drawn in ADE20K colours,
not in the dataset's own palette. A *ControlNet colour map* says which ADE20K class (or which
[r, g, b]) each dataset class is drawn as:

* ``ade20k``: its own palette (identity).
* ``cityscapes``, ``bdd100k``: shipped maps, ``amlight/data/controlnet_colors/<name>.yaml``.
* any dataset (a ``folder`` dataset above all): a ``controlnet_colors:`` key in its ``classes.yaml``,
  class name -> ADE20K class name or [r, g, b]::

      controlnet_colors:
        sky: sky
        tree: tree
        lane marking: [255, 255, 255]

The map is a (256, 3) uint8 lookup table indexed by label value; the ignore label and every value
that is no class are black, which no ADE20K class uses.
"""
from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Mapping

import numpy as np
import yaml

from amlight.data.datasets import ade20k
from amlight.data.io import DataFileError
from amlight.data.registry import DatasetMetadata, get_dataset_entry

KEY = "controlnet_colors"
SHIPPED_DIR = "controlnet_colors"  # package data folder inside amlight.data
_ADE20K_COLOR = dict(zip(ade20k.CLASS_NAMES, ade20k.COLORS))
_KIND = "controlnet colours"


def shipped_map_names() -> list[str]:
    """Datasets with a colour map shipped in the package (besides ade20k, which needs none)."""
    folder = resources.files("amlight.data") / SHIPPED_DIR
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def controlnet_color_map(
    dataset_name_or_metadata: str | DatasetMetadata,
    classes_yaml_mapping: Mapping | None = None,
    source: str | Path | None = None,
) -> np.ndarray:
    """The (256, 3) uint8 lookup that draws ``dataset``'s label values in ADE20K colours.

    ``classes_yaml_mapping`` is a dataset's already-loaded ``classes.yaml``; its ``controlnet_colors``
    key, when present, wins over any shipped map. ``source`` is the file it came from, named in errors.
    Raises :class:`DataFileError` (one line: file, class, dataset) for a class the map lacks, an entry
    that is no class, or an ADE20K name that does not exist.
    """
    metadata = _metadata(dataset_name_or_metadata)
    if classes_yaml_mapping is not None and KEY in classes_yaml_mapping:
        where = str(source or "classes.yaml")
        return _lookup(metadata, _parse(classes_yaml_mapping[KEY], metadata, where))
    if metadata.class_names == ade20k.CLASS_NAMES:
        # Identity: ADE20K labels (and a folder with its class list) are drawn in their own palette.
        return _lookup(metadata, [_ADE20K_COLOR[n] for n in metadata.class_names])
    if metadata.name in shipped_map_names():
        shipped = resources.files("amlight.data") / SHIPPED_DIR / f"{metadata.name}.yaml"
        data = yaml.safe_load(shipped.read_text(encoding="utf-8"))
        colors = _parse(data.get(KEY) if isinstance(data, dict) else None, metadata, str(shipped))
        return _lookup(metadata, colors)
    raise DataFileError(
        str(source or "classes.yaml"),
        f"dataset {metadata.name!r} has no ControlNet colour map",
        f"Add a '{KEY}:' mapping (class name -> ADE20K class name or [r, g, b]) to its classes.yaml; "
        f"maps ship for ade20k, {', '.join(shipped_map_names())}",
        kind=_KIND,
    )


def render_condition(labels, lookup: np.ndarray) -> np.ndarray:
    """Label indices (H, W) (or any shape) to an RGB uint8 image (H, W, 3) through ``lookup``.

    Values outside 0..255 can only be an ignore label (the loaders reject unknown classes), so they
    are drawn black like the ignore entry of the lookup.
    """
    labels = np.asarray(labels)
    lookup = np.asarray(lookup)
    if lookup.shape != (256, 3) or lookup.dtype != np.uint8:
        raise ValueError(f"lookup must be a (256, 3) uint8 array, got {lookup.shape} {lookup.dtype}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must hold integer class indices, got dtype {labels.dtype}")
    inside = (labels >= 0) & (labels <= 255)
    image = lookup[np.where(inside, labels, 0).astype(np.int64)]
    image[~inside] = 0
    return image


def _metadata(dataset: str | DatasetMetadata) -> DatasetMetadata:
    if isinstance(dataset, DatasetMetadata):
        return dataset
    metadata = get_dataset_entry(dataset).metadata  # unknown names: the registry's error lists known ones
    if metadata is None:  # the `folder` format: classes come from the dataset's own classes.yaml
        raise ValueError(f"dataset {dataset!r} reads its classes from its folder: pass the DatasetMetadata "
                         "loaded from its classes.yaml (amlight.data.datasets.folder.load_classes_yaml)")
    return metadata


def _parse(entries, metadata: DatasetMetadata, where: str) -> list[tuple[int, int, int]]:
    """One RGB colour per class of ``metadata``, in class order, from a class name -> value mapping."""

    def bad(problem: str, fix: str = "") -> DataFileError:
        return DataFileError(where, f"{KEY}: {problem}", fix, kind=_KIND)

    if not isinstance(entries, dict):
        raise bad("must be a mapping class name -> ADE20K class name or [r, g, b]")
    entries = {str(k): v for k, v in entries.items()}
    extra = sorted(set(entries) - set(metadata.class_names))
    if extra:
        raise bad(f"{extra[0]!r} is not a class of dataset {metadata.name!r}{_guess(extra[0], metadata.class_names)}",
                  f"Its classes: {', '.join(metadata.class_names)}")
    colors = []
    for name in metadata.class_names:
        if name not in entries:
            raise bad(f"class {name!r} of dataset {metadata.name!r} has no colour",
                      "Map every class to an ADE20K class name or an [r, g, b] colour")
        value = entries[name]
        if isinstance(value, str):
            if value not in _ADE20K_COLOR:  # exact names only: a near miss would draw the wrong class
                raise bad(f"class {name!r} maps to {value!r}, which is no ADE20K class"
                          f"{_guess(value, ade20k.CLASS_NAMES)}", "Names as in amlight/data/datasets/ade20k.py")
            colors.append(_ADE20K_COLOR[value])
        elif (isinstance(value, (list, tuple)) and len(value) == 3
              and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
            colors.append(tuple(int(v) for v in value))
        else:
            raise bad(f"class {name!r} maps to {value!r}", "Give an ADE20K class name or [r, g, b] with integers 0..255")
    return colors


def _guess(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _lookup(metadata: DatasetMetadata, colors) -> np.ndarray:
    if metadata.num_classes > 256:
        raise ValueError(f"dataset {metadata.name!r} has {metadata.num_classes} classes; a lookup holds 256")
    table = np.zeros((256, 3), dtype=np.uint8)  # ignore label and unused values: black
    table[: metadata.num_classes] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    return table
