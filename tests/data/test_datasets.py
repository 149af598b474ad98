import numpy as np
import pytest
import yaml
from PIL import Image

from amlight.data.datasets.ade20k import METADATA as ADE20K
from amlight.data.datasets.bdd100k import METADATA as BDD100K
from amlight.data.datasets.cityscapes import LABEL_ID_TO_TRAIN_ID
from amlight.data.datasets.cityscapes import METADATA as CITYSCAPES
from amlight.data.datasets.folder import FolderSource
from amlight.data.io import DataFileError
from amlight.data.registry import UnknownDatasetError, build_dataset, get_dataset_entry, registered_datasets

NAMES = ["sky", "tree", "road"]
COLORS = [[70, 130, 180], [107, 142, 35], [128, 64, 128]]


def save(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)
    return path


def write_classes(root, **extra):
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": NAMES, "colors": COLORS, **extra}))


def colorize(labels):
    return np.asarray(COLORS, np.uint8)[labels]


def make_folder(root, splits=("train", "val"), n=3, size=(6, 8)):
    """A folder dataset with colour labels; returns {split: {stem: labels}}."""
    write_classes(root)
    rng = np.random.default_rng(0)
    truth = {}
    for split in splits:
        base = root / split if split else root
        truth[split] = {}
        for k in range(n):
            stem = f"{split or 'flat'}_{k:02d}"
            labels = rng.integers(0, 3, size)
            save(rng.integers(0, 256, (*size, 3), dtype=np.uint8), base / "images" / f"{stem}.jpg")
            save(colorize(labels), base / "labels" / f"{stem}.png")
            truth[split][stem] = labels
    return truth


# --- registry ---


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(UnknownDatasetError) as info:
        build_dataset("citiscapes", root="/nowhere")
    message = str(info.value)
    for name in ("cityscapes", "ade20k", "bdd100k", "folder"):
        assert name in message


def test_builtin_datasets_are_registered():
    assert {"folder", "cityscapes", "bdd100k", "ade20k"} <= set(registered_datasets())
    assert get_dataset_entry("cityscapes").metadata is CITYSCAPES


def test_palette_sizes_and_well_known_entries():
    assert CITYSCAPES.num_classes == 19 and CITYSCAPES.palette().shape == (19, 3)
    assert BDD100K.num_classes == 19 and BDD100K.colors == CITYSCAPES.colors
    assert ADE20K.num_classes == 150 and ADE20K.palette().shape == (150, 3)
    assert len(set(ADE20K.class_names)) == 150 and len(set(CITYSCAPES.class_names)) == 19
    assert CITYSCAPES.class_names[0] == "road" and CITYSCAPES.colors[0] == (128, 64, 128)
    assert CITYSCAPES.class_names[18] == "bicycle" and CITYSCAPES.colors[18] == (119, 11, 32)
    assert ADE20K.class_names[:3] == ("wall", "building", "sky") and ADE20K.class_names[-1] == "flag"
    assert ADE20K.colors[0] == (120, 120, 120) and ADE20K.colors[-1] == (92, 0, 255)
    assert sorted(LABEL_ID_TO_TRAIN_ID.values()) == list(range(19))


# --- folder format ---


def test_folder_round_trip_by_name_and_by_path(tmp_path):
    truth = make_folder(tmp_path / "ds")
    by_name = build_dataset("folder", root=tmp_path / "ds", split="val")
    by_path = build_dataset(str(tmp_path / "ds"), split="val")
    for source in (by_name, by_path):
        assert isinstance(source, FolderSource)
        assert source.metadata.class_names == tuple(NAMES) and source.metadata.ignore_index == 255
        assert [s.name for s in source.scenes] == sorted(truth["val"])
        assert len(source) == 3
        for i, scene in enumerate(source.scenes):
            image, labels = source.load(i)
            assert image.shape == (6, 8, 3) and image.dtype == np.uint8
            np.testing.assert_array_equal(labels, truth["val"][scene.name])


def test_flat_folder_gives_same_files_for_every_split(tmp_path):
    make_folder(tmp_path, splits=("",))
    train = build_dataset(str(tmp_path), split="train")
    val = build_dataset(str(tmp_path), split="val")
    assert len(train) == 3 and [s.image_path for s in train.scenes] == [s.image_path for s in val.scenes]


def test_folder_settings_from_classes_yaml(tmp_path):
    write_classes(tmp_path, ignore_index=7, unknown_colors="ignore", label_format="color")
    rgb = colorize(np.array([[0, 1], [2, 0]]))
    rgb[0, 0] = (1, 2, 3)
    save(rgb, tmp_path / "labels" / "a.png")
    save(np.zeros((2, 2, 3), np.uint8), tmp_path / "images" / "a.png")
    source = build_dataset(str(tmp_path))
    np.testing.assert_array_equal(source.load(0)[1], [[7, 1], [2, 0]])


def test_missing_classes_yaml(tmp_path):
    save(np.zeros((2, 2, 3), np.uint8), tmp_path / "images" / "a.png")
    with pytest.raises(DataFileError, match="classes.yaml") as info:
        build_dataset(str(tmp_path))
    assert "does not exist" in str(info.value)


@pytest.mark.parametrize(
    "text, match",
    [
        ("names: [a, b]\ncolors: [[1, 2, 3]]\n", "2 names but 1 colors"),
        ("names: [a]\ncolors: [[1, 2, 300]]\n", "0..255"),
        ("names: [a\ncolors: [[1, 2, 3]]\n", "not valid YAML"),
        ("names: [a]\ncolours: [[1, 2, 3]]\n", "unknown key"),
        ("names: [a, b]\ncolors: [[1, 2, 3], [4, 5, 6]]\nignore_index: 1\n", "ignore_index 1"),
        ("- a\n- b\n", "mapping"),
    ],
)
def test_malformed_classes_yaml(classes_yaml_error, text, match):
    assert match in classes_yaml_error(text)


def test_missing_labels_folder(tmp_path):
    write_classes(tmp_path)
    save(np.zeros((2, 2, 3), np.uint8), tmp_path / "train" / "images" / "a.png")
    with pytest.raises(DataFileError, match="labels folder does not exist"):
        build_dataset(str(tmp_path), split="train")


def test_unpaired_files_listed_with_counts(tmp_path):
    make_folder(tmp_path, splits=("train",), n=2)
    for k in range(7):
        save(np.zeros((2, 2, 3), np.uint8), tmp_path / "train" / "images" / f"orphan_{k}.png")
    save(np.zeros((2, 2), np.uint8), tmp_path / "train" / "labels" / "lonely.png")
    with pytest.raises(DataFileError) as info:
        build_dataset(str(tmp_path), split="train")
    message = str(info.value)
    # One message for every dataset (amlight.data.io.raise_if_unpaired): counts, a few examples, and the
    # switch that keeps the paired scenes with what it would drop.
    assert "7 images without a label" in message and "orphan_0" in message and "orphan_2" in message
    assert "orphan_6" not in message
    assert "1 labels without an image" in message and "lonely" in message
    assert "the 2 paired scenes and drop these 8 files" in message and "dataset_options: {strict: false}" in message
    # Non-strict building (data check) keeps the pairs and reports each unpaired file.
    source = FolderSource.from_folder(tmp_path, "train", strict=False)
    assert len(source) == 2 and len(source.problems) == 8


def test_unknown_split_lists_available(tmp_path):
    make_folder(tmp_path, n=1)
    with pytest.raises(DataFileError, match="train, val"):
        build_dataset(str(tmp_path), split="test")


def test_jpeg_labels_are_rejected(tmp_path):
    write_classes(tmp_path)
    save(np.zeros((2, 2, 3), np.uint8), tmp_path / "images" / "a.png")
    save(np.zeros((2, 2, 3), np.uint8), tmp_path / "labels" / "a.jpg")
    with pytest.raises(DataFileError, match="must be PNG"):
        build_dataset(str(tmp_path))


# --- official layouts ---


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    raw = np.array([[7, 8, 26], [0, 33, 6]], np.uint8)  # road, sidewalk, car / unlabeled, bicycle, ground
    for split, city in (("train", "aachen"), ("val", "lindau")):
        stem = f"{city}_000000_000019"
        save(np.zeros((2, 3, 3), np.uint8), tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        save(raw, tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
        save(raw, tmp_path / "gtFine" / split / city / f"{stem}_gtFine_color.png")  # must be skipped
    source = build_dataset("cityscapes", root=tmp_path, split="val")
    assert len(source) == 1 and source.scenes[0].label_path.name.endswith("_gtFine_labelIds.png")
    np.testing.assert_array_equal(source.load(0)[1], [[0, 1, 13], [255, 18, 255]])


def test_cityscapes_prefers_train_id_files(tmp_path):
    stem = "aachen_000000_000019"
    save(np.zeros((1, 2, 3), np.uint8), tmp_path / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png")
    save(np.array([[7, 7]], np.uint8), tmp_path / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png")
    save(np.array([[5, 255]], np.uint8), tmp_path / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelTrainIds.png")
    source = build_dataset("cityscapes", root=tmp_path, split="train")
    np.testing.assert_array_equal(source.load(0)[1], [[5, 255]])


@pytest.mark.parametrize("source_kind", ["labelIds", "labelTrainIds"])
def test_listed_pairs_decode_cityscapes_label_files_by_their_kind(tmp_path, source_kind):
    """A pairs file may name labelIds files while the source reads train ids, or the other way round:
    each file is decoded by its own kind, never read as the other (which would be silently wrong)."""
    from amlight.data.pairing import PairDataset, read_pairs_file

    raw = np.array([[7, 8], [26, 11]], np.uint8)  # road, sidewalk / car, building (labelIds)
    train = np.array([[0, 1], [13, 2]], np.uint8)  # the same as train ids
    city, stem = "lindau", "lindau_000000_000019"
    image = save(np.full((2, 2, 3), 90, np.uint8), tmp_path / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png")
    label_ids = save(raw, tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png")
    train_ids = tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_labelTrainIds.png"
    if source_kind == "labelTrainIds":
        save(train, train_ids)
    source = build_dataset("cityscapes", root=tmp_path, split="val")
    assert source.scenes[0].label_path.name.endswith(f"_gtFine_{source_kind}.png")
    other = label_ids if source_kind == "labelTrainIds" else save(train, train_ids)
    pairs_file = tmp_path / "pairs.json"
    pairs_file.write_text(
        '{"pairs": [{"exemplar": "%s", "exemplar_labels": "%s", "target_labels": "%s"}]}' % (image, other, label_ids)
    )
    item = PairDataset(source, "listed", size=(2, 2), augment=False, pairs=read_pairs_file(pairs_file))[0]
    np.testing.assert_array_equal(item["exemplar_labels"].numpy(), train)
    np.testing.assert_array_equal(item["labels"].numpy(), train)


def test_cityscapes_wrong_root_says_what_was_looked_for(tmp_path):
    with pytest.raises(DataFileError, match="leftImg8bit"):
        build_dataset("cityscapes", root=tmp_path, split="train")


@pytest.mark.parametrize("nested", [False, True])
def test_ade20k_reduces_zero_label(tmp_path, nested):
    base = tmp_path / "ADEChallengeData2016" if nested else tmp_path
    raw = np.array([[0, 1, 2], [150, 3, 0]], np.uint8)
    save(np.zeros((2, 3, 3), np.uint8), base / "images" / "validation" / "ADE_val_00000001.jpg")
    save(raw, base / "annotations" / "validation" / "ADE_val_00000001.png")
    source = build_dataset("ade20k", root=tmp_path, split="val")
    assert len(source) == 1 and source.metadata.num_classes == 150
    np.testing.assert_array_equal(source.load(0)[1], [[255, 0, 1], [149, 2, 255]])
    with pytest.raises(DataFileError, match="training"):
        build_dataset("ade20k", root=tmp_path, split="train")


@pytest.mark.parametrize(
    "image_dir, label_dir, label_suffix",
    [("images/10k/{}", "labels/sem_seg/masks/{}", ""), ("seg/images/{}", "seg/labels/{}", "_train_id")],
)
def test_bdd100k_layouts(tmp_path, image_dir, label_dir, label_suffix):
    for stem in ("7d06fefd-f7be05a6", "0a0a0b1a-7c39d841"):
        save(np.zeros((2, 2, 3), np.uint8), tmp_path / image_dir.format("val") / f"{stem}.jpg")
        save(np.array([[0, 18], [255, 3]], np.uint8), tmp_path / label_dir.format("val") / f"{stem}{label_suffix}.png")
    source = build_dataset("bdd100k", root=tmp_path, split="val")
    assert [s.name for s in source.scenes] == ["0a0a0b1a-7c39d841", "7d06fefd-f7be05a6"]
    np.testing.assert_array_equal(source.load(1)[1], [[0, 18], [255, 3]])
    assert get_dataset_entry("bdd100k").extra["splits"](tmp_path) == ["val"]


def test_bdd100k_unknown_layout_lists_layouts(tmp_path):
    with pytest.raises(DataFileError) as info:
        build_dataset("bdd100k", root=tmp_path, split="train")
    message = str(info.value)
    assert "images/10k/train" in message and "seg/images/train" in message and "_train_id" in message
