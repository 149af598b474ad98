"""Real datasets' folder layouts, filled with synthetic scenes at the real datasets' sizes.

``write_layout_fixture("cityscapes", ROOT)`` lays out a few synthetic driving scenes (rendered at full
size by :mod:`amlight.data.synthetic`, whose layouts are resolution-free) exactly as the Cityscapes
archives unpack::

    ROOT/leftImg8bit/{train,val,test}/<city>/<city>_000000_NNNNNN_leftImg8bit.png   2048x1024 RGB
    ROOT/gtFine/{train,val,test}/<city>/<city>_000000_NNNNNN_gtFine_labelIds.png    labelIds (7 road, 26 car, ...)
    ROOT/gtFine/.../*_gtFine_color.png, *_gtFine_instanceIds.png, *_gtFine_polygons.json  (the archive's other files)

(the test split's labels are placeholders without classes, as in the real archive; ``coarse=True`` adds
gtCoarse.zip's ``ROOT/gtCoarse/{train,train_extra,val}`` with ``ROOT/leftImg8bit/train_extra``) and
``write_layout_fixture("bdd100k", ROOT)`` as BDD100K's 10k segmentation release::

    ROOT/images/10k/{train,val,test}/<name>.jpg           1280x720 JPEG (test: images only)
    ROOT/labels/sem_seg/masks/{train,val}/<name>.png      train ids (0 road, 13 car, ..., 255 unlabelled)
    ROOT/labels/sem_seg/colormaps/{train,val}/<name>.png  the masks as colours
    ROOT/labels/sem_seg/{polygons,rles}/sem_seg_{train,val}.json

``extras=False`` leaves out the files no loader reads (colours, instances, polygons, RLEs, test split).

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

FIXTURE_VERSION = 3  # 2: pairs name the dataset's own label files (no train-id copies); 3: the downloads' extra files
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


LABEL_ID_LUT = _lut({**_LABEL_IDS, 255: 0})  # unlabelled pixels (coarse margins, test placeholders): labelId 0
_INSTANCE_CLASSES = (syn.CAR, syn.PERSON)  # Cityscapes "things" among the synthetic classes
_EXTRA_INDEX = {"test": 1000, "train_extra": 2000}  # scene indices (rng streams) of the extra splits


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


def _paths(dataset: str, root: Path, split: str, index: int, annotations: str = "gtFine") -> tuple[Path, Path]:
    if dataset == "cityscapes":
        stem = f"{CITY}_000000_{index:06d}"
        return (root / "leftImg8bit" / split / CITY / f"{stem}_leftImg8bit.png",
                root / annotations / split / CITY / f"{stem}_{annotations}_labelIds.png")
    stem = f"amlight{index:04d}-{split}"
    return root / "images" / "10k" / split / f"{stem}.jpg", root / "labels" / "sem_seg" / "masks" / split / f"{stem}.png"


def _extra_scenes(seed: int, split: str, count: int, height: int, width: int):
    for i in range(count):
        index = _EXTRA_INDEX[split] + i
        layout = syn.sample_layout(syn._scene_rng(seed, "train", index, 0), height, width)
        appearance = syn.sample_appearance(syn._scene_rng(seed, "train", index, 1))
        yield i, *syn.render_scene(layout, appearance, height, width)


def _coarse(labels: np.ndarray, margin: int) -> np.ndarray:
    """Coarse annotation: pixels within ``margin`` of another class become unlabelled (255)."""
    keep = np.ones(labels.shape, bool)
    for axis in (0, 1):
        for shift in (-margin, margin):
            keep &= np.roll(labels, shift, axis=axis) == labels
    return np.where(keep, labels, 255).astype(labels.dtype)


def _save_coarse(label_path: Path, labels: np.ndarray, extras: bool) -> None:
    coarse = _coarse(labels, 2)
    _save(LABEL_ID_LUT[coarse], label_path)
    if extras:
        _cityscapes_extras(label_path, coarse)


def _cityscapes_extras(label_path: Path, labels: np.ndarray) -> None:
    """The other files of a Cityscapes annotation archive next to ``*_labelIds.png``: colours, instance
    ids (16 bit; things as labelId * 1000 + k) and polygons. ``labels`` are synthetic classes (255 unlabelled)."""
    from amlight.data.datasets.cityscapes import COLORS

    stem = label_path.name[: -len("_labelIds.png")]
    label_ids = LABEL_ID_LUT[labels]
    train_ids = _train_id_lut()[labels]
    colors = np.zeros((256, 3), np.uint8)
    colors[: len(COLORS)] = COLORS
    _save(colors[train_ids], label_path.with_name(f"{stem}_color.png"))
    instances = label_ids.astype(np.int32)
    for k, cls in enumerate(_INSTANCE_CLASSES):
        instances[labels == cls] = _LABEL_IDS[cls] * 1000 + k
    _save_instances(instances, label_path.with_name(f"{stem}_instanceIds.png"))
    objects = []
    for cls in np.unique(labels):
        if int(cls) == 255:
            continue
        rows, cols = np.nonzero(labels == cls)
        x0, x1, y0, y1 = int(cols.min()), int(cols.max()), int(rows.min()), int(rows.max())
        objects.append({"label": syn.CLASS_NAMES[int(cls)], "polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]})
    polygons = {"imgHeight": int(labels.shape[0]), "imgWidth": int(labels.shape[1]), "objects": objects}
    label_path.with_name(f"{stem}_polygons.json").write_text(json.dumps(polygons) + "\n")


def _save_instances(instances: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(instances.astype(np.uint16)).save(path, format="PNG", compress_level=1)


def _bdd_extras(root: Path, split: str, names_and_labels: list[tuple[str, np.ndarray]]) -> None:
    """colormaps/ (the masks as colours) and the polygons / RLE json files of BDD100K's sem_seg release."""
    from amlight.data.datasets.cityscapes import CLASS_NAMES, COLORS

    colors = np.zeros((256, 3), np.uint8)
    colors[: len(COLORS)] = COLORS
    frames_poly, frames_rle = [], []
    for name, train_ids in names_and_labels:
        _save(colors[train_ids], root / "labels" / "sem_seg" / "colormaps" / split / f"{name}.png")
        poly, rle = [], []
        for cls in np.unique(train_ids):
            if int(cls) == 255:
                continue
            mask = (train_ids == cls).reshape(-1, order="F")
            change = np.flatnonzero(np.diff(np.concatenate([[False], mask, [False]]).astype(np.int8)))
            rows, cols = np.nonzero(train_ids == cls)
            box = [[int(cols.min()), int(rows.min())], [int(cols.max()), int(rows.min())],
                   [int(cols.max()), int(rows.max())], [int(cols.min()), int(rows.max())]]
            poly.append({"category": CLASS_NAMES[int(cls)], "poly2d": [{"vertices": box, "closed": True}]})
            rle.append({"category": CLASS_NAMES[int(cls)],
                        "rle": {"counts": change.tolist(), "size": list(train_ids.shape)}})
        frames_poly.append({"name": f"{name}.jpg", "labels": poly})
        frames_rle.append({"name": f"{name}.jpg", "labels": rle})
    for kind, frames in (("polygons", frames_poly), ("rles", frames_rle)):
        path = root / "labels" / "sem_seg" / kind / f"sem_seg_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"frames": frames}) + "\n")


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        Image.fromarray(array).save(path, format="JPEG", quality=90)
    else:
        Image.fromarray(array).save(path, format="PNG", compress_level=1)


def fixture_params(dataset: str, num_train: int, num_val_groups: int, seed: int,
                   size: tuple[int, int] | None, extras: bool = True, coarse: bool = False) -> dict:
    if dataset not in SIZES:
        raise ValueError(f"unknown layout fixture {dataset!r}; known: {', '.join(SIZES)}")
    if coarse and dataset != "cityscapes":
        raise ValueError(f"coarse annotations are Cityscapes' (gtCoarse), not {dataset!r}'s")
    height, width = size or SIZES[dataset]
    return {"version": FIXTURE_VERSION, "dataset": dataset, "num_train": num_train,
            "num_val_groups": num_val_groups, "seed": seed, "height": int(height), "width": int(width),
            "extras": bool(extras), "coarse": bool(coarse)}


def write_layout_fixture(dataset: str, root: str | Path, num_train: int = 2, num_val_groups: int = 1,
                         seed: int = 0, size: tuple[int, int] | None = None,
                         progress: Callable[[str], None] | None = None, extras: bool = True,
                         coarse: bool = False) -> Path:
    """Write the fixture (``size`` = (height, width), default the real dataset's); skipped when ``root``
    already holds one with the same parameters. Returns the validation pairs file.

    ``extras``: also the files real downloads hold that no loader reads (Cityscapes' colour, instance and
    polygon files and its placeholder-labelled test split; BDD100K's colormaps, polygons, RLEs and its
    image-only test split). ``coarse`` (Cityscapes): gtCoarse for train, val and a train_extra split."""
    root = Path(root)
    params = fixture_params(dataset, num_train, num_val_groups, seed, size, extras, coarse)
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
    height, width = params["height"], params["width"]
    written = {}
    bdd_labels: dict[str, list] = {}
    for split, index, image, labels in scenes:
        image_path, label_path = _paths(dataset, root, split, index)
        _save(image, image_path)
        _save((LABEL_ID_LUT if dataset == "cityscapes" else to_train_ids)[labels], label_path)
        written[(split, index)] = (image_path, label_path)
        say(f"{dataset}: {image_path.relative_to(root)}")
        if extras and dataset == "cityscapes":
            _cityscapes_extras(label_path, labels)
        elif extras:
            bdd_labels.setdefault(split, []).append((image_path.stem, to_train_ids[labels]))
        if coarse:
            _save_coarse(_paths(dataset, root, split, index, "gtCoarse")[1], labels, extras)
    for split, items in bdd_labels.items():
        _bdd_extras(root, split, items)
    if extras:  # the official test split: images, and (Cityscapes) placeholder labels without classes
        for i, image, _ in _extra_scenes(seed, "test", 1, height, width):
            image_path, label_path = _paths(dataset, root, "test", _EXTRA_INDEX["test"] + i)
            _save(image, image_path)
            if dataset == "cityscapes":
                placeholder = np.full((height, width), 255, np.uint8)  # unlabelled everywhere
                _save(LABEL_ID_LUT[placeholder], label_path)
                _cityscapes_extras(label_path, placeholder)
            say(f"{dataset}: {image_path.relative_to(root)}")
    if coarse:  # gtCoarse's train_extra: images from leftImg8bit_trainextra.zip, coarse labels only
        for i, image, labels in _extra_scenes(seed, "train_extra", max(num_train, 1), height, width):
            image_path, label_path = _paths(dataset, root, "train_extra", _EXTRA_INDEX["train_extra"] + i, "gtCoarse")
            _save(image, image_path)
            _save_coarse(label_path, labels, extras)
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
