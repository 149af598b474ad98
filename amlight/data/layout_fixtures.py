"""Real datasets' folder layouts, filled with synthetic scenes at the real datasets' sizes.

``write_layout_fixture("cityscapes", ROOT)`` lays out a few synthetic driving scenes (rendered at full
size by :mod:`amlight.data.synthetic`, whose layouts are resolution-free) exactly as the Cityscapes
archives unpack::

    ROOT/leftImg8bit/{train,val}/<city>/<city>_000000_NNNNNN_leftImg8bit.png   2048x1024 RGB
    ROOT/gtFine/{train,val}/<city>/<city>_000000_NNNNNN_gtFine_labelIds.png    labelIds (7 road, 26 car, ...)

and ``write_layout_fixture("bdd100k", ROOT)`` as BDD100K's 10k segmentation release::

    ROOT/images/10k/{train,val}/<name>.jpg                1280x720 JPEG
    ROOT/labels/sem_seg/masks/{train,val}/<name>.png      train ids (0 road, 13 car, ..., 255 unlabelled)

so the registered ``cityscapes`` / ``bdd100k`` datasets (and the SD 1.5 configs that name them) read
real-looking trees at real sizes without the real data. Each validation group is one appearance on
two layouts (as in the synthetic dataset), which also gives ``ROOT/amlight_pairs/val.json``: listed
pairs with ground truth for ``evaluate --pairs``, naming the dataset's own label files (listed pairs are
decoded as the dataset decodes its files: Cityscapes labelIds are mapped to train ids).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from amlight.data import synthetic as syn
from amlight.data.datasets.cityscapes import LABEL_ID_TO_TRAIN_ID

FIXTURE_VERSION = 2  # 2: pairs name the dataset's own label files (no train-id copies)
MARKER = "amlight_fixture.json"
SIZES = {"cityscapes": (1024, 2048), "bdd100k": (720, 1280)}  # (height, width) of the real datasets
CITY = "amlight"

# The synthetic classes in Cityscapes' labelIds (cityscapesScripts labels.py) and train ids.
_LABEL_IDS = {syn.SKY: 23, syn.ROAD: 7, syn.SIDEWALK: 8, syn.BUILDING: 11, syn.VEGETATION: 21, syn.CAR: 26,
              syn.PERSON: 24, syn.POLE: 17, syn.TERRAIN: 22, syn.SIGN: 20}


def _lut(values: dict[int, int]) -> np.ndarray:
    lut = np.full(256, 255, np.uint8)
    for cls, value in values.items():
        lut[cls] = value
    return lut


def _train_id_lut() -> np.ndarray:

    return _lut({cls: LABEL_ID_TO_TRAIN_ID[label_id] for cls, label_id in _LABEL_IDS.items()})


LABEL_ID_LUT = _lut(_LABEL_IDS)


def _scenes(seed: int, num_train: int, num_val_groups: int, height: int, width: int):
    """(split, name, image, synthetic labels) of every scene, plus the validation groups' pairs."""
    scenes, pairs = [], []
    for i in range(num_train):
        layout = syn.sample_layout(syn._scene_rng(seed, "train", i, 0), height, width)
        appearance = syn.sample_appearance(syn._scene_rng(seed, "train", i, 1))
        image, labels = syn.render_scene(layout, appearance, height, width)
        scenes.append(("train", i, image, labels))
    for g in range(num_val_groups):
        appearance, la, lb = syn._sample_val_group(seed, g, height, width)
        a = syn.render_scene(la, appearance, height, width)
        b = syn.render_scene(lb, appearance, height, width)
        scenes.append(("val", 2 * g, *a))
        scenes.append(("val", 2 * g + 1, *b))
        pairs.append((2 * g, 2 * g + 1))  # exemplar a, target b (its image is b's ground truth)
    return scenes, pairs


def _paths(dataset: str, root: Path, split: str, index: int) -> tuple[Path, Path]:
    if dataset == "cityscapes":
        stem = f"{CITY}_000000_{index:06d}"
        return (root / "leftImg8bit" / split / CITY / f"{stem}_leftImg8bit.png",
                root / "gtFine" / split / CITY / f"{stem}_gtFine_labelIds.png")
    stem = f"amlight{index:04d}-{split}"
    return root / "images" / "10k" / split / f"{stem}.jpg", root / "labels" / "sem_seg" / "masks" / split / f"{stem}.png"


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        Image.fromarray(array).save(path, format="JPEG", quality=90)
    else:
        Image.fromarray(array).save(path, format="PNG", compress_level=1)


def fixture_params(dataset: str, num_train: int, num_val_groups: int, seed: int,
                   size: tuple[int, int] | None) -> dict:
    if dataset not in SIZES:
        raise ValueError(f"unknown layout fixture {dataset!r}; known: {', '.join(SIZES)}")
    height, width = size or SIZES[dataset]
    return {"version": FIXTURE_VERSION, "dataset": dataset, "num_train": num_train,
            "num_val_groups": num_val_groups, "seed": seed, "height": int(height), "width": int(width)}


def write_layout_fixture(dataset: str, root: str | Path, num_train: int = 2, num_val_groups: int = 1,
                         seed: int = 0, size: tuple[int, int] | None = None,
                         progress: Callable[[str], None] | None = None) -> Path:
    """Write the fixture (``size`` = (height, width), default the real dataset's); skipped when ``root``
    already holds one with the same parameters. Returns the validation pairs file."""
    root = Path(root)
    params = fixture_params(dataset, num_train, num_val_groups, seed, size)
    pairs_file = root / "amlight_pairs" / "val.json"
    try:
        if json.loads((root / MARKER).read_text()) == params and pairs_file.is_file():
            return pairs_file
    except (OSError, ValueError):
        pass
    if root.exists() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise FileExistsError(f"{root} is not empty and holds no amlight layout fixture: choose an empty folder")
    (root / MARKER).unlink(missing_ok=True)
    say = progress or (lambda message: None)
    to_train_ids = _train_id_lut()
    scenes, pairs = _scenes(seed, num_train, num_val_groups, params["height"], params["width"])
    written = {}
    for split, index, image, labels in scenes:
        image_path, label_path = _paths(dataset, root, split, index)
        _save(image, image_path)
        _save((LABEL_ID_LUT if dataset == "cityscapes" else to_train_ids)[labels], label_path)
        written[(split, index)] = (image_path, label_path)
        say(f"{dataset}: {image_path.relative_to(root)}")
    entries = []
    relative = lambda path: str(Path("..") / path.relative_to(root))  # noqa: E731 - from amlight_pairs/
    for ex, tgt in pairs:
        (ex_image, ex_labels), (tgt_image, tgt_labels) = written[("val", ex)], written[("val", tgt)]
        entries.append({"exemplar": relative(ex_image), "exemplar_labels": relative(ex_labels),
                        "target_labels": relative(tgt_labels), "ground_truth": relative(tgt_image)})
    pairs_file.parent.mkdir(parents=True, exist_ok=True)
    pairs_file.write_text(json.dumps({"pairs": entries}, indent=2) + "\n")
    (root / MARKER).write_text(json.dumps(params, indent=2) + "\n")
    return pairs_file
