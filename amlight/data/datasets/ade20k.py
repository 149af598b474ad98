"""ADE20K SceneParsing (MIT Scene Parsing Benchmark / ADEChallengeData2016): 150 classes.

    ROOT/images/training/*.jpg    + ROOT/annotations/training/*.png
    ROOT/images/validation/*.jpg  + ROOT/annotations/validation/*.png

ROOT may also be the folder that contains ``ADEChallengeData2016/``. Split names train / val map to
training / validation. In the annotations 0 is "other objects" (not one of the 150 classes) and
class k is stored as k + 1, so 0 becomes the ignore label and k + 1 becomes k ("reduce zero label").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from amlight.data.datasets.folder import FolderSource, list_files, pair_files
from amlight.data.io import DataFileError, raise_if_unpaired
from amlight.data.registry import DatasetMetadata, register_dataset

# Official SceneParsing order and names (objectInfo150: the first name of each class; the csv writes
# spaces and synonyms alike as ';', e.g. 90 "television;television;receiver;..." is "television", which
# some toolboxes misread as "television receiver"); colours are the palette the common segmentation
# toolboxes use, so predictions look the same as in their visualisations.
CLASS_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair",
    "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box",
    "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet",
    "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower",
    "chandelier", "awning", "streetlight", "booth", "television", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle",
    "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light",
    "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower",
    "radiator", "glass", "clock", "flag",
)

# road and skyscraper share (140, 140, 140) in this palette; ADE20K labels are index maps, so the
# repeat only matters when reading colour-coded predictions back.
COLORS: tuple[tuple[int, int, int], ...] = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)

IGNORE_INDEX = 255
METADATA = DatasetMetadata("ade20k", CLASS_NAMES, COLORS, IGNORE_INDEX)

# raw annotation value -> class index: 0 ("other") -> ignore, k -> k - 1.
ID_MAP = np.concatenate([[IGNORE_INDEX], np.arange(len(CLASS_NAMES))]).astype(np.int64)

SPLIT_DIRS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


def _base(root: Path) -> Path:
    nested = root / "ADEChallengeData2016"
    return nested if not (root / "images").is_dir() and nested.is_dir() else root


def ade20k_splits(root: str | Path) -> list[str]:
    base = _base(Path(root))
    return [split for split, folder in (("train", "training"), ("val", "validation"))
            if (base / "images" / folder).is_dir() and (base / "annotations" / folder).is_dir()]


def build_ade20k(root: Path, split: str = "train", unknown_colors: str = "error", strict: bool = True) -> FolderSource:
    root = Path(root)
    if split not in SPLIT_DIRS:
        raise DataFileError(root, f"ADE20K has no split {split!r}",
                            "Use train or val (training / validation); the test images have no public labels",
                            kind="dataset layout")
    base = _base(root)
    folder = SPLIT_DIRS[split]
    images_dir, labels_dir = base / "images" / folder, base / "annotations" / folder
    if not images_dir.is_dir():
        raise DataFileError(
            root,
            f"no ADE20K layout found for split {split!r}: looked for ROOT/images/{folder}/*.jpg + "
            f"ROOT/annotations/{folder}/*.png (ROOT = {root} or {root / 'ADEChallengeData2016'})",
            "Unpack ADEChallengeData2016.zip and pass the folder it creates (or its parent)",
            kind="dataset layout",
        )
    images = list_files(images_dir, (".jpg", ".jpeg", ".png"), what="images")
    labels = list_files(labels_dir, (".png",), what="labels")
    scenes, problems = pair_files(images, labels, images_dir, labels_dir, strict=False)
    raise_if_unpaired(problems, scenes, images_dir, labels_dir, strict, what=("images", "annotations"))
    return FolderSource(scenes, METADATA, label_format="index", unknown_colors=unknown_colors, id_map=ID_MAP,
                        problems=problems)


register_dataset(
    "ade20k",
    build_ade20k,
    metadata=METADATA,
    description="ADE20K SceneParsing, 150 classes (ADEChallengeData2016 layout)",
    splits=ade20k_splits,
)
