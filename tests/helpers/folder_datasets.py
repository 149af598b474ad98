"""Folder datasets on disk, written as a user writes their own (classes.yaml with colour labels, a val
split with pairs.json): ``make_dataset`` (4 scenes, 32x32, for generate and friends) and
``make_paired_dataset`` (2 scenes x 2 layouts sharing one look, with ground truth, for evaluate)."""
import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

NAMES = ["sky", "road", "car", "tree", "building"]
COLORS = [[70, 130, 180], [128, 64, 128], [0, 0, 142], [107, 142, 35], [70, 70, 70]]
SIZE = 32  # files on disk; the tiny model draws 16x16, so every input is resized

PAIRED_NAMES = ["sky", "road", "car", "tree", "wall"]
PAIRED_COLORS = [[70, 130, 180], [128, 64, 128], [0, 0, 142], [107, 142, 35], [102, 102, 156]]
N_PAIRS = 4


def scene_labels(k: int) -> np.ndarray:
    labels = np.zeros((SIZE, SIZE), np.uint8)  # sky
    labels[16:] = 1  # road
    labels[20:28, 2 + 4 * k: 12 + 4 * k] = 2  # a car
    labels[:10, 22:] = 3 if k % 2 else 4  # a tree or a building: pairs of different parity miss one
    return labels


def make_dataset(root, n=4):
    """A folder dataset (colour labels, one split 'val' with a pairs.json), like a user's own data."""
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "labels").mkdir(parents=True)
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": NAMES, "colors": COLORS}))
    rng = np.random.default_rng(0)
    palette = np.asarray(COLORS, np.uint8)
    for k in range(n):
        labels = scene_labels(k)
        image = (palette[labels] * rng.uniform(0.5, 1.0, 3)).astype(np.uint8)
        Image.fromarray(image).save(root / "val" / "images" / f"s{k}.png")
        Image.fromarray(palette[labels]).save(root / "val" / "labels" / f"s{k}.png")
    pairs = [{"exemplar": f"images/s{a}.png", "exemplar_labels": f"labels/s{a}.png",
              "target_labels": f"labels/s{b}.png", "ground_truth": f"images/s{b}.png"}
             for a, b in [(0, 1), (1, 0), (2, 3), (3, 2)][:n]]
    (root / "val" / "pairs.json").write_text(json.dumps({"pairs": pairs}))
    return root


def save_png(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def random_layout(rng, size=32):
    labels = np.zeros((size, size), np.int64)
    horizon = int(rng.integers(8, 16))
    labels[horizon:] = 1
    labels[:horizon, : int(rng.integers(4, 12))] = 3
    labels[:horizon, -int(rng.integers(4, 12)):] = 4
    y, x = int(rng.integers(horizon, size - 8)), int(rng.integers(0, size - 8))
    labels[y:y + 6, x:x + 8] = 2
    return labels


def make_paired_dataset(root: Path) -> Path:
    """A folder dataset (colour labels) whose val split has 2 scenes x 2 layouts sharing one appearance,
    and val/pairs.json listing a->b and b->a with the ground truth, like the synthetic data."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": PAIRED_NAMES, "colors": PAIRED_COLORS}))
    rng = np.random.default_rng(0)
    palette = np.asarray(PAIRED_COLORS, np.uint8)
    entries = []
    for scene in range(N_PAIRS // 2):
        look = rng.integers(0, 256, (len(PAIRED_NAMES), 3))
        for view in "ab":
            labels = random_layout(rng)
            image = np.clip(look[labels] + rng.integers(-8, 9, (*labels.shape, 3)), 0, 255)
            save_png(image, root / "val" / "images" / f"{scene:03d}_{view}.png")
            save_png(palette[labels], root / "val" / "labels" / f"{scene:03d}_{view}.png")
        for ex, tg in (("a", "b"), ("b", "a")):
            entries.append({"exemplar": f"images/{scene:03d}_{ex}.png", "exemplar_labels": f"labels/{scene:03d}_{ex}.png",
                            "target_labels": f"labels/{scene:03d}_{tg}.png", "ground_truth": f"images/{scene:03d}_{tg}.png"})
    (root / "val" / "pairs.json").write_text(json.dumps({"pairs": entries}))
    return root
