"""Cityscapes (fine annotations): the 19 evaluation classes, read from the official archive layout.

    ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   (made by createTrainIdLabelImgs)
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png        (as downloaded)

The *_labelTrainIds files are used when every image has one; otherwise the labelIds files are
mapped to train ids here, with the 15 classes excluded from evaluation going to 255.
"""
from __future__ import annotations

from pathlib import Path

from amlight.data.datasets.folder import FolderSource, list_files, pair_files
from amlight.data.io import DataFileError, IdMapBySuffix
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
_TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds"
_LABEL_IDS_SUFFIX = "_gtFine_labelIds"


def cityscapes_splits(root: str | Path) -> list[str]:
    root = Path(root)
    images, labels = root / "leftImg8bit", root / "gtFine"
    if not images.is_dir():
        return []
    return sorted(d.name for d in images.iterdir() if d.is_dir() and (labels / d.name).is_dir())


def build_cityscapes(
    root: Path, split: str = "train", unknown_colors: str = "error", strict: bool = True
) -> FolderSource:
    root = Path(root)
    images_dir, labels_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    if not images_dir.is_dir():
        available = cityscapes_splits(root)
        raise DataFileError(
            root,
            f"no Cityscapes images for split {split!r}: looked for "
            f"{root}/leftImg8bit/{split}/<city>/*{_IMAGE_SUFFIX}.png with "
            f"{root}/gtFine/{split}/<city>/*{_LABEL_IDS_SUFFIX}.png (or *{_TRAIN_IDS_SUFFIX}.png)"
            + (f"; splits found: {', '.join(available)}" if available else ""),
            "Unpack leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into the same root",
            kind="dataset layout",
        )
    images = list_files(images_dir, (".png",), what="images", strip=_IMAGE_SUFFIX)
    if not labels_dir.is_dir():
        raise DataFileError(labels_dir, "labels folder does not exist",
                            "Unpack gtFine_trainvaltest.zip into the dataset root", kind="dataset layout")
    train_ids = list_files(labels_dir, (".png",), what="labels", strip=_TRAIN_IDS_SUFFIX)
    if images and set(images) <= set(train_ids):
        labels, default_map = train_ids, None
    else:
        labels = list_files(labels_dir, (".png",), what="labels", strip=_LABEL_IDS_SUFFIX)
        default_map = LABEL_ID_TO_TRAIN_ID
    # By file name, not by what this split holds: a pairs file may name either kind of label file.
    id_map = IdMapBySuffix({_LABEL_IDS_SUFFIX: LABEL_ID_TO_TRAIN_ID, _TRAIN_IDS_SUFFIX: None}, default=default_map)
    scenes, problems = pair_files(images, labels, images_dir, labels_dir, strict=strict)
    return FolderSource(scenes, METADATA, label_format="index", unknown_colors=unknown_colors, id_map=id_map,
                        problems=problems)


register_dataset(
    "cityscapes",
    build_cityscapes,
    metadata=METADATA,
    description="Cityscapes gtFine, 19 classes (leftImg8bit/ + gtFine/ layout)",
    splits=cityscapes_splits,
)
