"""The ``folder`` dataset format, and :class:`FolderSource`, the scene source the other datasets build.

Layout on disk::

    ROOT/classes.yaml                  names, colors, optional ignore_index / label_format / unknown_colors
    ROOT/<split>/images/*.png|jpg|jpeg
    ROOT/<split>/labels/*.png          same stem (and sub-folder) as the image

or, without splits, ``ROOT/images/`` + ``ROOT/labels/``. In that flat layout every split name reads
the same files, so a quick experiment needs no train/val split on disk (validate on held-out data
before trusting the numbers). Sub-folders inside images/ are allowed; the label must sit at the
same relative path in labels/.

``classes.yaml`` (the one file amlight reads besides the images and labels)::

    names: [sky, tree, road]           # required: class names, in class-index order (alias: classes)
    colors: [[70, 130, 180], [107, 142, 35], [128, 64, 128]]
                                       # one [r, g, b] per name, in the same order; required for colour
                                       # labels, optional for index labels (a default palette is used)
    ignore_index: 255                  # optional, default 255: the label value that is not trained on
    label_format: auto                 # optional: auto | index | color (default auto)
    unknown_colors: error              # optional: error | ignore (values no class has)
    ignore_color: [0, 0, 0]            # optional: the colour of ignored pixels in colour-format labels
    name: my_streets                   # optional, default: the folder's name

Index labels (single-channel PNGs whose pixel values are class ids 0, 1, 2, ...) need only the names::

    names: [sky, tree, road]

Colour labels (RGB PNGs) need the colours, one per name in the same order.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import yaml

from amlight.data.io import (
    LABEL_FORMATS,
    UNKNOWN_COLOR_POLICIES,
    DataFileError,
    check_pair,
    load_image,
    load_labels,
    raise_if_unpaired,
)
from amlight.data.registry import DatasetMetadata, Scene, register_dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LABEL_SUFFIXES = (".png",)
CLASSES_FILE = "classes.yaml"
# controlnet_colors: read by amlight.data.controlnet_colors (the label map as a segmentation ControlNet sees it).
_CLASSES_KEYS = {"name", "names", "colors", "ignore_index", "label_format", "unknown_colors", "ignore_color",
                 "controlnet_colors"}
# Other spellings a first guess is likely to use, and the key each one means.
_CLASSES_ALIASES = {"classes": "names"}
_CLASSES_EXAMPLE = ("e.g. `names: [sky, tree]` for index labels (pixel values 0, 1, ...), plus "
                    "`colors: [[70, 130, 180], [107, 142, 35]]` for colour labels")


class FolderSource:
    """Image/label pairs on disk plus how to decode their labels; the SceneSource every built-in dataset returns.

    ``problems`` lists the (file, message) pairs found while pairing files when the source was
    built with ``strict=False`` (``data check`` does that to report every problem at once).
    """

    def __init__(
        self,
        scenes: Sequence[Scene],
        metadata: DatasetMetadata,
        label_format: str = "auto",
        unknown_colors: str = "error",
        id_map: Mapping[int, int] | Sequence[int] | np.ndarray | None = None,
        *,
        ignore_colors: Sequence[Sequence[int]] = (),
        problems: Iterable[DataFileError] = (),
    ):
        if label_format not in LABEL_FORMATS:
            raise ValueError(f"label_format must be one of {', '.join(LABEL_FORMATS)}, got {label_format!r}")
        if unknown_colors not in UNKNOWN_COLOR_POLICIES:
            raise ValueError(
                f"unknown_colors must be one of {', '.join(UNKNOWN_COLOR_POLICIES)}, got {unknown_colors!r}"
            )
        self.scenes = list(scenes)
        self.metadata = metadata
        self.label_format = label_format
        self.unknown_colors = unknown_colors
        self.id_map = id_map
        self.ignore_colors = tuple(tuple(int(v) for v in c) for c in ignore_colors)
        self.problems: list[DataFileError] = list(problems)

    def __len__(self) -> int:
        return len(self.scenes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.metadata.name!r}, {len(self)} scenes)"

    def load_image(self, index: int) -> np.ndarray:
        return load_image(self.scenes[index].image_path)

    def load_labels(self, index: int) -> np.ndarray:
        return self.read_label_file(self.scenes[index].label_path)

    def read_label_file(self, path: str | Path) -> np.ndarray:
        """Decode any label file (a pairs file's, a flag's) exactly as this source decodes its own."""
        return load_labels(
            path,
            self.metadata,
            label_format=self.label_format,
            unknown_colors=self.unknown_colors,
            id_map=self.id_map,
            ignore_colors=self.ignore_colors,
        )

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        scene = self.scenes[index]
        image = self.load_image(index)
        labels = self.load_labels(index)
        check_pair(image, labels, scene.image_path, scene.label_path)
        return image, labels

    def diagnose(self, index: int) -> tuple[np.ndarray | None, list[DataFileError]]:
        """Load scene ``index`` collecting every problem (image and label) instead of raising the first.

        Returns the labels when they could be decoded (None otherwise) and the problems found.
        """
        scene = self.scenes[index]
        problems: list[DataFileError] = []
        image = labels = None
        try:
            image = self.load_image(index)
        except DataFileError as exc:
            problems.append(exc)
        try:
            labels = self.load_labels(index)
        except DataFileError as exc:
            problems.append(exc)
        if image is not None and labels is not None:
            try:
                check_pair(image, labels, scene.image_path, scene.label_path)
            except DataFileError as exc:
                problems.append(exc)
        return labels, problems

    @classmethod
    def from_folder(
        cls,
        root: str | Path,
        split: str = "train",
        metadata: DatasetMetadata | None = None,
        label_format: str | None = None,
        unknown_colors: str | None = None,
        id_map=None,
        strict: bool = True,
    ) -> "FolderSource":
        """Scenes of ``split`` under ``root`` in the folder layout; metadata from classes.yaml unless given.

        ``label_format`` / ``unknown_colors`` default to classes.yaml's values, then to auto / error.
        ``strict=False`` keeps unpaired files as :attr:`problems` instead of raising.
        """
        root = Path(root)
        settings: dict = {}
        if metadata is None:
            metadata, settings = _read_classes_yaml(root / CLASSES_FILE)
        images_dir, labels_dir = folder_split_dirs(root, split)
        scenes, problems = pair_files(
            list_files(images_dir, IMAGE_SUFFIXES, what="images", other_suffixes=()),
            list_files(labels_dir, LABEL_SUFFIXES, what="labels", other_suffixes=(".jpg", ".jpeg")),
            images_dir,
            labels_dir,
            strict=strict,
        )
        return cls(
            scenes,
            metadata,
            label_format=label_format or settings.get("label_format", "auto"),
            unknown_colors=unknown_colors or settings.get("unknown_colors", "error"),
            id_map=id_map,
            ignore_colors=settings.get("ignore_colors", ()),
            problems=problems,
        )


# --- classes.yaml -----------------------------------------------------------------------------


def load_classes_yaml(path: str | Path) -> DatasetMetadata:
    """Read a ``classes.yaml`` into :class:`DatasetMetadata`; :class:`DataFileError` on any malformation."""
    return _read_classes_yaml(Path(path))[0]


def read_classes_settings(path: str | Path) -> dict:
    """The decoding settings of a ``classes.yaml`` (label_format, unknown_colors, ignore_colors)."""
    return _read_classes_yaml(Path(path))[1]


def _read_classes_yaml(path: Path) -> tuple[DatasetMetadata, dict]:
    if not path.is_file():
        raise DataFileError(
            path,
            "does not exist" if not path.exists() else "is not a file",
            f"A folder dataset needs {CLASSES_FILE} next to its images, naming the classes and their "
            f"colours, {_CLASSES_EXAMPLE}",
            kind="dataset layout",
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataFileError(path, f"is not valid YAML ({exc})", f"Fix the syntax; {_CLASSES_EXAMPLE}",
                            kind="dataset layout") from exc

    def bad(problem: str, fix: str = _CLASSES_EXAMPLE) -> DataFileError:
        return DataFileError(path, problem, fix, kind="dataset layout")

    if not isinstance(data, dict):
        raise bad(f"must be a mapping with the key names (and colors for colour labels), found {type(data).__name__}")
    data = {str(k): v for k, v in data.items()}
    for alias, key in _CLASSES_ALIASES.items():
        if alias in data:
            if key in data:
                raise bad(f"both {key!r} and {alias!r} are given", f"Keep one of them ({alias!r} is another name for {key!r})")
            data[key] = data.pop(alias)
    unknown = sorted(set(data) - _CLASSES_KEYS)
    if unknown:
        allowed = sorted(_CLASSES_KEYS | set(_CLASSES_ALIASES))
        guesses = [f"{key} -> {close[0]}" for key in unknown
                   for close in [difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)] if close]
        raise bad(f"unknown key(s) {', '.join(unknown)}" + (f" (did you mean {', '.join(guesses)}?)" if guesses else ""),
                  f"Allowed keys: {', '.join(allowed)}; {_CLASSES_EXAMPLE}")
    if "names" not in data:
        raise bad("missing key 'names' (the class names, in class-index order)")
    names = data["names"]
    if isinstance(names, dict) and names and sorted(names, key=str) == sorted(range(len(names)), key=str):
        names = [names[i] for i in range(len(names))]  # {0: sky, 1: tree}, as YOLO writes them
    if not isinstance(names, list) or not names:
        raise bad("'names' must be a non-empty list of class names, in class-index order")
    names = [str(n) for n in names]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise bad(f"duplicate class name(s): {', '.join(duplicates)}", "Each class needs its own name")
    label_format = data.get("label_format", "auto")
    if label_format not in LABEL_FORMATS:
        raise bad(f"label_format must be one of {', '.join(LABEL_FORMATS)}, got {label_format!r}", "")
    if data.get("colors") is not None:
        colors = [_parse_color(c, f"colors[{i}]", bad) for i, c in enumerate(_as_list(data["colors"], "colors", bad))]
        if len(colors) != len(names):
            raise bad(f"{len(names)} names but {len(colors)} colors", "Give exactly one [r, g, b] colour per class name")
    elif label_format == "color":
        raise bad("label_format is color but no 'colors' are given",
                  "Colour labels are decoded by their colours: give one [r, g, b] per class name, e.g. "
                  "colors: [[70, 130, 180], [107, 142, 35]]")
    else:
        # Index labels: the colours only draw label maps (sample grids, data check); without any, a
        # default palette. Colour files cannot be read against colours nobody chose, so labels are index.
        colors = default_palette(len(names))
        label_format = "index"

    ignore_index = data.get("ignore_index", 255)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise bad(f"ignore_index must be an integer, got {ignore_index!r}", "The usual value is 255")
    if 0 <= ignore_index < len(names):
        raise bad(f"ignore_index {ignore_index} is class {names[ignore_index]!r}",
                  f"Use a value outside 0..{len(names) - 1}, usually 255")

    settings: dict = {"label_format": label_format}
    unknown_colors = data.get("unknown_colors", "error")
    if unknown_colors not in UNKNOWN_COLOR_POLICIES:
        raise bad(f"unknown_colors must be one of {', '.join(UNKNOWN_COLOR_POLICIES)}, got {unknown_colors!r}", "")
    settings["unknown_colors"] = unknown_colors
    if data.get("ignore_color") is not None:
        ignore_color = _parse_color(data["ignore_color"], "ignore_color", bad)
        if ignore_color in colors:
            raise bad(f"ignore_color {list(ignore_color)} is also the colour of class "
                      f"{names[colors.index(ignore_color)]!r}", "Pick a colour no class uses")
        settings["ignore_colors"] = (ignore_color,)
    if label_format == "color":
        repeated = sorted({c for c in colors if colors.count(c) > 1})
        if repeated:
            raise bad(f"colour(s) {', '.join(str(list(c)) for c in repeated)} belong to several classes, "
                      "so colour labels are ambiguous", "Give every class its own colour")

    name = str(data.get("name") or path.parent.resolve().name or "folder")
    return DatasetMetadata(name, tuple(names), tuple(colors), ignore_index), settings


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct colours for classes that ``classes.yaml`` gives no colours: the PASCAL VOC colour map
    (bit-interleaved, so every class gets its own colour), starting past its black."""
    colors = []
    for index in range(1, num_classes + 1):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colors.append((r, g, b))
    return colors


def _as_list(value, key: str, bad) -> list:
    if not isinstance(value, list):
        raise bad(f"'{key}' must be a list of [r, g, b] colours")
    return value


def _parse_color(value, where: str, bad) -> tuple[int, int, int]:
    if (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    ):
        return tuple(int(v) for v in value)  # type: ignore[return-value]
    raise bad(f"{where} must be [r, g, b] with integers 0..255, got {value!r}", "")


# --- finding and pairing files ----------------------------------------------------------------


FLAT_SPLIT = "all"  # the one split name data check reports for the flat layout


class SplitNotFoundError(DataFileError):
    """The dataset has split folders, but not the one asked for (the DataModule then holds out a
    validation slice of train instead of failing; see ``val_holdout``)."""


def folder_split_dirs(root: Path, split: str) -> tuple[Path, Path]:
    """(images dir, labels dir) of ``split``: ROOT/<split>/images if splits exist, else ROOT/images."""
    root = Path(root)
    if not root.is_dir():
        raise DataFileError(root, "dataset folder does not exist", "Check the path", kind="dataset layout")
    splits = _split_folders(root)
    if splits:
        if split not in splits:
            raise SplitNotFoundError(
                root / split,
                f"split {split!r} not found; this dataset has split(s) {', '.join(splits)}",
                f"Use one of them, or create {root / split / 'images'} and {root / split / 'labels'}",
                kind="dataset layout",
            )
        base = root / split
    elif _is_flat(root):
        base = root
    else:
        raise DataFileError(
            root,
            f"no images found: looked for {root / split / 'images'} (one folder per split) and {root / 'images'} "
            "(no splits)",
            f"Put images in <split>/images/ and labels in <split>/labels/ (or images/ + labels/), "
            f"with {CLASSES_FILE} in {root}",
            kind="dataset layout",
        )
    return base / "images", base / "labels"


def folder_splits(root: str | Path) -> list[str]:
    """Splits of a folder dataset: sub-folders holding images/ or labels/; [FLAT_SPLIT] for the flat layout."""
    root = Path(root)
    if not root.is_dir():
        return []
    return _split_folders(root) or ([FLAT_SPLIT] if _is_flat(root) else [])


def _split_folders(root: Path) -> list[str]:
    return sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and not d.name.startswith(".") and ((d / "images").is_dir() or (d / "labels").is_dir())
    )


def _is_flat(root: Path) -> bool:
    return (root / "images").is_dir() or (root / "labels").is_dir()


def list_files(
    directory: Path,
    suffixes: Sequence[str],
    what: str,
    strip: str = "",
    other_suffixes: Sequence[str] = (),
) -> dict[str, Path]:
    """Files under ``directory`` (recursively) keyed by relative path without suffix (and ``strip``).

    Hidden files (macOS ``._*`` forks, editor droppings) are skipped. Two files with the same key
    (``a.png`` and ``a.jpg``) are an error, since either could be the one meant. Files with a
    suffix in ``other_suffixes`` are reported as a mistake (JPEG labels lose their values).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataFileError(directory, f"{what} folder does not exist",
                            f"Create it and put the {what} there", kind="dataset layout")
    files: dict[str, Path] = {}
    wrong: list[Path] = []
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix in other_suffixes:
            wrong.append(path)
            continue
        if suffix not in suffixes:
            continue
        key = rel.with_suffix("").as_posix()
        if strip:
            if not key.endswith(strip):
                continue
            key = key[: -len(strip)]
        if key in files:
            raise DataFileError(path, f"has the same name as {files[key]}",
                                f"Keep one file per {what[:-1]} name in {directory}", kind="dataset layout")
        files[key] = path
    if wrong:
        raise DataFileError(
            directory,
            f"{len(wrong)} {what} file(s) with suffix {wrong[0].suffix} (e.g. {wrong[0].name})",
            f"{what} must be PNG: JPEG compression changes pixel values, which corrupts labels",
            kind="dataset layout",
        )
    return files


def pair_files(
    images: Mapping[str, Path],
    labels: Mapping[str, Path],
    images_dir: Path,
    labels_dir: Path,
    strict: bool = True,
) -> tuple[list[Scene], list[DataFileError]]:
    """Scenes for the keys present on both sides, sorted by key, and one problem per unpaired file.

    ``strict``: unpaired files raise :func:`~amlight.data.io.raise_if_unpaired`'s one error (counts,
    examples, the paired scenes and the ``strict: false`` switch that would keep them), the same
    message as the official datasets'; an empty split raises. Datasets that name their files
    differently pass ``strict=False`` and call it themselves with their own words.
    """
    missing_labels = sorted(set(images) - set(labels))
    missing_images = sorted(set(labels) - set(images))
    problems = [
        DataFileError(images[k], f"image has no label (looked in {labels_dir})",
                      "Add the label or remove the image", kind="missing partner file")
        for k in missing_labels
    ] + [
        DataFileError(labels[k], f"label has no image (looked in {images_dir})",
                      "Add the image or remove the label", kind="missing partner file")
        for k in missing_images
    ]
    if not images and not labels:
        empty = DataFileError(images_dir, "no image files found (.png, .jpg, .jpeg)",
                              "Put the images there", kind="dataset layout")
        problems.append(empty)
    scenes = [Scene(k, images[k], labels[k]) for k in sorted(set(images) & set(labels))]
    raise_if_unpaired(problems, scenes, images_dir, labels_dir, strict)
    return scenes, problems


def build_folder(
    root: Path,
    split: str = "train",
    label_format: str | None = None,
    unknown_colors: str | None = None,
    strict: bool = True,
) -> FolderSource:
    return FolderSource.from_folder(root, split, label_format=label_format, unknown_colors=unknown_colors,
                                    strict=strict)


register_dataset(
    "folder",
    build_folder,
    metadata=None,
    description="images/ + labels/ (optionally per split) with classes.yaml naming classes and colours",
    splits=folder_splits,
)
