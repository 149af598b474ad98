"""Cityscapes: the 19 evaluation classes, read from the official archive layout.

    ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   (made by createTrainIdLabelImgs)
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png        (as downloaded)

The *_labelTrainIds files are used when every image has one; otherwise the labelIds files are
mapped to train ids here, with the 15 classes excluded from evaluation going to 255. The other files
of the archives (*_gtFine_color.png, *_gtFine_instanceIds.png, *_gtFine_polygons.json) are not read.

Splits: train and val. The official test split is refused: its gtFine files are placeholders without
classes, so every pixel would load as ignored. The coarse annotations (gtCoarse.zip: ROOT/gtCoarse/
{train,train_extra,val}, with leftImg8bit_trainextra.zip's images in ROOT/leftImg8bit/train_extra) are
read with ``annotations="coarse"`` (``dataset_options: {annotations: coarse}``, or the dataset name
``cityscapes_coarse``); their unlabelled regions load as ignored.
"""
from __future__ import annotations

from pathlib import Path

from amlight.data.datasets.folder import FolderSource, list_files, pair_files
from amlight.data.io import DataFileError, IdMapBySuffix, raise_if_unpaired
from amlight.data.registry import DatasetMetadata, register_dataset

# (name, colour, labelId) of the 19 train classes, in train-id order (cityscapesScripts labels.py).
_CLASSES = (
    ("road", (128, 64, 128), 7),
    ("sidewalk", (244, 35, 232), 8),
    ("building", (70, 70, 70), 11),
    ("wall", (102, 102, 156), 12),
    ("fence", (190, 153, 153), 13),
    ("pole", (153, 153, 153), 17),
    ("traffic light", (250, 170, 30), 19),
    ("traffic sign", (220, 220, 0), 20),
    ("vegetation", (107, 142, 35), 21),
    ("terrain", (152, 251, 152), 22),
    ("sky", (70, 130, 180), 23),
    ("person", (220, 20, 60), 24),
    ("rider", (255, 0, 0), 25),
    ("car", (0, 0, 142), 26),
    ("truck", (0, 0, 70), 27),
    ("bus", (0, 60, 100), 28),
    ("train", (0, 80, 100), 31),
    ("motorcycle", (0, 0, 230), 32),
    ("bicycle", (119, 11, 32), 33),
)

CLASS_NAMES: tuple[str, ...] = tuple(c[0] for c in _CLASSES)
COLORS: tuple[tuple[int, int, int], ...] = tuple(c[1] for c in _CLASSES)
IGNORE_INDEX = 255

# labelId (0..33) -> trainId; ids absent here (unlabeled, ego vehicle, ground, parking, guard rail,
# caravan, trailer, ...) are not evaluated and load as the ignore label.
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {label_id: train_id for train_id, (_, _, label_id) in enumerate(_CLASSES)}

METADATA = DatasetMetadata("cityscapes", CLASS_NAMES, COLORS, IGNORE_INDEX)

_IMAGE_SUFFIX = "_leftImg8bit"
ANNOTATIONS = {"fine": "gtFine", "coarse": "gtCoarse"}
# Official splits whose label files hold no classes (placeholders): refused for training and retrieval.
UNLABELLED_SPLITS = ("test",)


def _suffixes(annotations: str) -> tuple[str, str]:
    """(train ids suffix, label ids suffix) of the label files, e.g. _gtFine_labelTrainIds, _gtFine_labelIds."""
    folder = ANNOTATIONS[annotations]
    return f"_{folder}_labelTrainIds", f"_{folder}_labelIds"


_TRAIN_IDS_SUFFIX, _LABEL_IDS_SUFFIX = _suffixes("fine")


def _check_annotations(annotations: str) -> str:
    if annotations not in ANNOTATIONS:
        raise ValueError(f"cityscapes annotations must be one of {', '.join(ANNOTATIONS)}, got {annotations!r}")
    return annotations


def cityscapes_splits(root: str | Path, annotations: str = "fine") -> list[str]:
    """Splits with images and labels of ``annotations`` (the label-less test split left out)."""
    root = Path(root)
    images, labels = root / "leftImg8bit", root / ANNOTATIONS[_check_annotations(annotations)]
    if not images.is_dir():
        return []
    return sorted(d.name for d in images.iterdir()
                  if d.is_dir() and (labels / d.name).is_dir() and d.name not in UNLABELLED_SPLITS)


def _unlabelled_split_problem(split: str) -> str:
    return (f"the official Cityscapes {split!r} split has no public labels (its gtFine/{split} files are "
            "placeholders: every pixel would load as ignored), so it cannot be used for training or retrieval")


def cityscapes_unreadable_splits(root: str | Path, annotations: str = "fine") -> dict[str, str]:
    """Splits on disk that ``annotations`` does not read, and why (for ``data check``)."""
    root = Path(root)
    images = root / "leftImg8bit"
    if not images.is_dir():
        return {}
    folder = ANNOTATIONS[_check_annotations(annotations)]
    notes = {}
    for d in sorted(p for p in images.iterdir() if p.is_dir()):
        if d.name in UNLABELLED_SPLITS:
            notes[d.name] = _unlabelled_split_problem(d.name) + "; use train and val"
        elif not (root / folder / d.name).is_dir():
            notes[d.name] = f"no {folder}/{d.name} labels. " + _missing_labels_fix(root, d.name, annotations)
    return notes


def _missing_labels_fix(root: Path, split: str, annotations: str) -> str:
    if annotations == "coarse":
        return "Unpack gtCoarse.zip into the dataset root (coarse labels exist for train, train_extra and val)"
    if (root / "gtCoarse" / split).is_dir():
        return (f"Split {split!r} has coarse labels only (gtCoarse/{split}), which fine annotations do not read: "
                "set dataset_options: {annotations: coarse} (or use dataset cityscapes_coarse) to train on them")
    if split == "train_extra":
        return ("The train_extra images have coarse labels only: unpack gtCoarse.zip into the dataset root and set "
                "dataset_options: {annotations: coarse} (or use dataset cityscapes_coarse)")
    return "Unpack gtFine_trainvaltest.zip into the dataset root"


def build_cityscapes(
    root: Path, split: str = "train", unknown_colors: str = "error", strict: bool = True, annotations: str = "fine",
) -> FolderSource:
    root = Path(root)
    _check_annotations(annotations)
    folder = ANNOTATIONS[annotations]
    train_ids_suffix, label_ids_suffix = _suffixes(annotations)
    images_dir, labels_dir = root / "leftImg8bit" / split, root / folder / split
    if split in UNLABELLED_SPLITS:
        raise DataFileError(root / folder / split, _unlabelled_split_problem(split),
                            "Use split train or val (e.g. --data.init_args.val_split val)", kind="dataset layout")
    if not images_dir.is_dir():
        available = cityscapes_splits(root, annotations)
        archive = ("leftImg8bit_trainextra.zip" if split == "train_extra"
                   else "leftImg8bit_trainvaltest.zip")
        raise DataFileError(
            root,
            f"no Cityscapes images for split {split!r}: looked for "
            f"{root}/leftImg8bit/{split}/<city>/*{_IMAGE_SUFFIX}.png with "
            f"{root}/{folder}/{split}/<city>/*{label_ids_suffix}.png (or *{train_ids_suffix}.png)"
            + (f"; splits found: {', '.join(available)}" if available else ""),
            f"Unpack {archive} and {'gtCoarse.zip' if annotations == 'coarse' else 'gtFine_trainvaltest.zip'} "
            "into the same root",
            kind="dataset layout",
        )
    images = list_files(images_dir, (".png",), what="images", strip=_IMAGE_SUFFIX)
    if not labels_dir.is_dir():
        raise DataFileError(labels_dir, f"labels folder does not exist (images found in {images_dir})",
                            _missing_labels_fix(root, split, annotations), kind="dataset layout")
    train_ids = list_files(labels_dir, (".png",), what="labels", strip=train_ids_suffix)
    if images and set(images) <= set(train_ids):
        labels, default_map = train_ids, None
    else:
        labels = list_files(labels_dir, (".png",), what="labels", strip=label_ids_suffix)
        default_map = LABEL_ID_TO_TRAIN_ID
    # By file name, not by what this split holds: a pairs file may name either kind of label file.
    by_suffix = {}
    for kind in ANNOTATIONS:
        kind_train_ids, kind_label_ids = _suffixes(kind)
        by_suffix.update({kind_label_ids: LABEL_ID_TO_TRAIN_ID, kind_train_ids: None})
    id_map = IdMapBySuffix(by_suffix, default=default_map)
    scenes, problems = pair_files(images, labels, images_dir, labels_dir, strict=False)
    raise_if_unpaired(problems, scenes, images_dir, labels_dir, strict, what=("images", "labels"))
    return FolderSource(scenes, METADATA, label_format="index", unknown_colors=unknown_colors, id_map=id_map,
                        problems=problems)


def build_cityscapes_coarse(root: Path, split: str = "train", unknown_colors: str = "error", strict: bool = True,
                            annotations: str = "coarse") -> FolderSource:
    return build_cityscapes(root, split, unknown_colors=unknown_colors, strict=strict, annotations=annotations)


register_dataset(
    "cityscapes",
    build_cityscapes,
    metadata=METADATA,
    description="Cityscapes gtFine, 19 classes (leftImg8bit/ + gtFine/ layout); "
    "dataset_options {annotations: coarse} reads gtCoarse",
    splits=cityscapes_splits,
    unreadable_splits=cityscapes_unreadable_splits,
)

register_dataset(
    "cityscapes_coarse",
    build_cityscapes_coarse,
    metadata=METADATA,
    description="Cityscapes gtCoarse (train, train_extra, val), the same 19 classes (leftImg8bit/ + gtCoarse/ layout)",
    splits=lambda root: cityscapes_splits(root, "coarse"),
    unreadable_splits=lambda root: cityscapes_unreadable_splits(root, "coarse"),
)
