"""Synthetic scenes in Cityscapes' and BDD100K's folder layouts, read by the registered datasets."""
import json

import numpy as np
import pytest
from PIL import Image

from amlight.data import synthetic as syn
from amlight.data.layout_fixtures import write_layout_fixture

SMALL = (96, 192)  # (height, width): the real sizes are the default; tests stay small


@pytest.mark.parametrize("dataset", ["cityscapes", "bdd100k"])
def test_fixture_is_read_by_the_registered_dataset(tmp_path, dataset):
    from amlight.data.datasets.cityscapes import CLASS_NAMES
    from amlight.data.registry import build_dataset

    root = tmp_path / dataset
    pairs_file = write_layout_fixture(dataset, root, num_train=2, num_val_groups=1, size=SMALL)
    if dataset == "cityscapes":
        assert sorted(p.name for p in (root / "leftImg8bit" / "train" / "amlight").iterdir()) == [
            "amlight_000000_000000_leftImg8bit.png", "amlight_000000_000001_leftImg8bit.png"]
        raw = np.array(Image.open(root / "gtFine/train/amlight/amlight_000000_000000_gtFine_labelIds.png"))
        assert set(np.unique(raw)) <= {7, 8, 11, 17, 20, 21, 22, 23, 24, 26}  # labelIds, not train ids
    else:
        assert len(list((root / "images/10k/val").glob("*.jpg"))) == 2
        assert len(list((root / "labels/sem_seg/masks/val").glob("*.png"))) == 2
    for split, count in (("train", 2), ("val", 2)):
        source = build_dataset(dataset, str(root), split)
        assert len(source) == count
        image, labels = source.load(0)
        assert image.shape == (*SMALL, 3) and labels.shape == SMALL
        # The synthetic scene's classes come back as the dataset's train ids by name.
        layout = syn.sample_layout(syn._scene_rng(0, "train", 0, 0), *SMALL)
        expected = syn.render_labels(layout, *SMALL)
        if split == "train":
            names = {CLASS_NAMES[i] for i in np.unique(labels)}
            assert names == {syn.CLASS_NAMES[i] for i in np.unique(expected)}
            road = CLASS_NAMES.index("road")
            assert np.array_equal(labels == road, expected == syn.ROAD)
    pairs = json.loads(pairs_file.read_text())["pairs"]
    assert len(pairs) == 1 and all((pairs_file.parent / pairs[0][k]).is_file() for k in pairs[0])


def test_fixture_pairs_load_for_evaluation_with_ground_truth(tmp_path):
    from amlight.data.registry import build_dataset
    from amlight.metrics.evaluation import load_pairs

    root = tmp_path / "cs"
    pairs_file = write_layout_fixture("cityscapes", root, num_train=1, num_val_groups=2, size=SMALL)
    pairs = load_pairs(pairs_file, build_dataset("cityscapes", str(root), "val"), (64, 64))
    assert pairs.has_ground_truth.all() and pairs.target_labels.shape == (2, 64, 64)
    assert int(pairs.target_labels.max()) < 19  # train ids, no ignore pixels in synthetic scenes
    # exemplar and target of a group: one appearance on two different layouts
    assert not np.array_equal(pairs.exemplar_labels[0].numpy(), pairs.target_labels[0].numpy())


def test_datamodule_builds_training_batches_from_the_fixture(tmp_path):
    from amlight.data import ExemplarPairDataModule

    root = tmp_path / "bdd"
    write_layout_fixture("bdd100k", root, num_train=2, num_val_groups=1, size=SMALL)
    dm = ExemplarPairDataModule(dataset="bdd100k", root=str(root), resolution=64, batch_size=2, val_pairing="self")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["labels"].shape == (2, 64, 64)
    assert dm.metadata.num_classes == 19


def test_existing_fixture_is_kept_and_foreign_folder_refused(tmp_path):
    root = tmp_path / "cs"
    write_layout_fixture("cityscapes", root, num_train=1, num_val_groups=1, size=SMALL)
    image = next((root / "leftImg8bit").rglob("*.png"))
    before = image.stat().st_mtime_ns
    write_layout_fixture("cityscapes", root, num_train=1, num_val_groups=1, size=SMALL)
    assert image.stat().st_mtime_ns == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    with pytest.raises(FileExistsError, match="holds no amlight layout fixture"):
        write_layout_fixture("bdd100k", other)
    with pytest.raises(ValueError, match="unknown layout fixture"):
        write_layout_fixture("ade20k", tmp_path / "a")

