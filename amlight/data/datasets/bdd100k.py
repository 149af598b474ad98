"""BDD100K semantic segmentation (the 10k subset): Cityscapes' 19 classes, ids and colours.

Two official layouts are recognised (ROOT may also be the folder that contains ``bdd100k/``):

    ROOT/images/10k/<split>/*.jpg  +  ROOT/labels/sem_seg/masks/<split>/*.png   (current release)
    ROOT/seg/images/<split>/*.jpg  +  ROOT/seg/labels/<split>/*_train_id.png    (older bdd100k_seg.zip)

Masks already hold train ids (0..18, 255 = unlabelled). The other label formats of the release
(``labels/sem_seg/{colormaps,polygons,rles}``) are not read. The official test split has images only:
it is refused for training and retrieval. Older 10k zips hold a few images without masks and masks
without images: strict pairing refuses such a split with a count, and ``dataset_options: {strict:
false}`` keeps its paired scenes.
"""
from __future__ import annotations

from pathlib import Path

from amlight.data.datasets.cityscapes import CLASS_NAMES, COLORS, IGNORE_INDEX
from amlight.data.datasets.folder import FolderSource, list_files, pair_files
from amlight.data.io import DataFileError, raise_if_unpaired
from amlight.data.registry import DatasetMetadata, register_dataset

METADATA = DatasetMetadata("bdd100k", CLASS_NAMES, COLORS, IGNORE_INDEX)

# (images dir, labels dir, label name suffix) relative to the root, with {split} filled in.
LAYOUTS = (
    ("images/10k/{split}", "labels/sem_seg/masks/{split}", ""),
    ("seg/images/{split}", "seg/labels/{split}", "_train_id"),
)


def _roots(root: Path) -> list[Path]:
    return [root, root / "bdd100k"]


def bdd100k_splits(root: str | Path) -> list[str]:
    """Splits with both images and labels (the official test split has no labels)."""
    found = set()
    for base in _roots(Path(root)):
        for images, labels, _ in LAYOUTS:
            parent = (base / images.format(split="_")).parent
            if parent.is_dir():
                found.update(d.name for d in parent.iterdir()
                             if d.is_dir() and (base / labels.format(split=d.name)).is_dir())
    return sorted(found)


def bdd100k_unreadable_splits(root: str | Path) -> dict[str, str]:
    """Splits with images but no labels (the official test split), for ``data check``."""
    notes = {}
    for base in _roots(Path(root)):
        for images, labels, _ in LAYOUTS:
            parent = (base / images.format(split="_")).parent
            if parent.is_dir():
                for d in sorted(p for p in parent.iterdir() if p.is_dir()):
                    if not (base / labels.format(split=d.name)).is_dir():
                        notes.setdefault(d.name, f"images only, no {labels.format(split=d.name)} masks"
                                         + (" (the official test split has no labels)" if d.name == "test" else ""))
    return notes


def build_bdd100k(root: Path, split: str = "train", unknown_colors: str = "error", strict: bool = True) -> FolderSource:
    root = Path(root)
    for base in _roots(root):
        for images_rel, labels_rel, suffix in LAYOUTS:
            images_dir = base / images_rel.format(split=split)
            if not images_dir.is_dir():
                continue
            labels_dir = base / labels_rel.format(split=split)
            if not labels_dir.is_dir():
                raise DataFileError(labels_dir, f"labels folder does not exist (images found in {images_dir})",
                                    "Unpack the semantic segmentation labels archive into the same root"
                                    + ("; the official test split has no labels" if split == "test" else ""),
                                    kind="dataset layout")
            images = list_files(images_dir, (".jpg", ".jpeg", ".png"), what="images")
            labels = list_files(labels_dir, (".png",), what="labels", strip=suffix)
            scenes, problems = pair_files(images, labels, images_dir, labels_dir, strict=False)
            raise_if_unpaired(problems, scenes, images_dir, labels_dir, strict, what=("images", "masks"))
            return FolderSource(scenes, METADATA, label_format="index", unknown_colors=unknown_colors,
                                problems=problems)
    looked_for = "; ".join(
        f"ROOT/{images.format(split=split)}/*.jpg + ROOT/{labels.format(split=split)}/*{suffix}.png"
        for images, labels, suffix in LAYOUTS
    )
    available = bdd100k_splits(root)
    raise DataFileError(
        root,
        f"no BDD100K segmentation layout found for split {split!r}; looked for {looked_for} "
        f"(ROOT = {root} or {root / 'bdd100k'})" + (f"; splits found: {', '.join(available)}" if available else ""),
        "Unpack the 10K images and the sem_seg labels archives into the same root",
        kind="dataset layout",
    )


register_dataset(
    "bdd100k",
    build_bdd100k,
    metadata=METADATA,
    description="BDD100K 10k semantic segmentation, Cityscapes' 19 classes",
    splits=bdd100k_splits,
    unreadable_splits=bdd100k_unreadable_splits,
)
