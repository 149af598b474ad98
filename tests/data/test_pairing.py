import json

import pytest
import torch

from amlight.data.pairing import PairDataset, PairsFileError, read_pairs_file
from amlight.data.registry import build_dataset
from amlight.data.synthetic import ensure_synthetic_dataset


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("pairs") / "synth", num_train=6, num_val_groups=2,
                                    height=32, width=32, progress=False)


def test_self_pairs_are_two_views_of_one_scene(synth_root):
    source = build_dataset("synthetic", synth_root, "train")
    ds = PairDataset(source, "self", (16, 16), augment=True)
    torch.manual_seed(0)
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["labels"].shape == (16, 16)
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    _, labels = source.load(0)
    # nearest-only resizing: no label value that the scene does not have
    assert set(item["labels"].unique().tolist()) <= set(labels.flatten().tolist())
    assert set(item["exemplar_labels"].unique().tolist()) <= set(labels.flatten().tolist())


def test_random_pairs_use_another_scene_deterministically(synth_root):
    source = build_dataset("synthetic", synth_root, "train")
    ds = PairDataset(source, "random", (32, 32), augment=False, seed=3)
    a, b = ds[2], ds[2]
    assert torch.equal(a["exemplar_image"], b["exemplar_image"])
    assert not torch.equal(a["exemplar_image"], a["image"])


def test_listed_pairs_carry_exemplar_target_and_ground_truth(synth_root):
    source = build_dataset("synthetic", synth_root, "val")
    pairs = read_pairs_file(synth_root / "val" / "pairs.json")
    ds = PairDataset(source, "listed", (32, 32), augment=False, pairs=pairs)
    assert len(ds) == 4
    item = ds[0]
    assert item["has_ground_truth"] and item["name"] == pairs[0].target_labels.stem
    assert not torch.equal(item["labels"], item["exemplar_labels"])  # two different layouts


def test_bad_pairs_file_is_a_clear_error(tmp_path):
    with pytest.raises(PairsFileError, match="does not exist"):
        read_pairs_file(tmp_path / "none.json")
    (tmp_path / "p.json").write_text(json.dumps({"pairs": [{"exemplar": "a.png"}]}))
    with pytest.raises(PairsFileError, match=r"entry 0: missing key\(s\) \['exemplar_labels', 'target_labels'\]"):
        read_pairs_file(tmp_path / "p.json")
