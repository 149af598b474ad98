"""A user's own folder, named by its path (issue 18, items 1 and 2): the folder is the data read (never the
config's data/synthetic), a root that is another folder dataset is an error naming both, and fit's log and
`data check` say which pairing validation uses and why."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from amlight.cli.main import main
from amlight.data.datamodule import ExemplarPairDataModule
from amlight.data.registry import DatasetRootConflict, build_dataset, resolve_dataset

REPO = Path(__file__).resolve().parents[2]
NAMES = ["sky", "tree", "road", "car"]  # 4 classes, where the synthetic scenes have 10
COLORS = [[70, 130, 180], [107, 142, 35], [128, 64, 128], [0, 0, 142]]
TINY_MODEL = [
    "--model.init_args.backbone_options", "{block_out_channels: [16, 32], attention_heads: 2}",
    "--model.init_args.guidance_channels", "16",
    "--model.init_args.sample_steps", "2",
    "--data.init_args.resolution", "16",
]


def make_folder(root: Path, splits=("train", "val"), n: int = 4, size=(16, 16)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": NAMES, "colors": COLORS}))
    rng = np.random.default_rng(0)
    for split in splits:
        for sub in ("images", "labels"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"s{k}.png")
            Image.fromarray(rng.integers(0, 4, size).astype(np.uint8)).save(root / split / "labels" / f"s{k}.png")
    return root


def test_a_folder_path_replaces_a_root_that_is_no_folder_dataset(tmp_path):
    mine = make_folder(tmp_path / "my_folder")
    entry, root, note = resolve_dataset(str(mine), "data/synthetic")
    assert entry.name == "folder" and root == mine
    assert str(mine) in note and "data/synthetic" in note and "not used" in note
    assert resolve_dataset(str(mine), str(mine))[2] is None and resolve_dataset(str(mine), None)[2] is None
    _, root, other_note = resolve_dataset(str(mine), str(tmp_path / "cityscapes"))  # a named dataset's root
    assert root == mine and f"root {tmp_path / 'cityscapes'} is not used" in other_note
    dm = ExemplarPairDataModule(dataset=str(mine), root="data/synthetic", batch_size=2)
    assert dm.root == mine and dm.num_classes == 4 and dm.root_note == note


def test_a_folder_path_and_another_folder_dataset_as_root_is_an_error_naming_both(tmp_path):
    mine, other = make_folder(tmp_path / "mine"), make_folder(tmp_path / "other")
    with pytest.raises(DatasetRootConflict) as info:
        ExemplarPairDataModule(dataset=str(mine), root=str(other))
    assert str(mine) in str(info.value) and str(other) in str(info.value) and "root null" in str(info.value)
    with pytest.raises(DatasetRootConflict):
        build_dataset(str(mine), root=str(other))


def test_a_registered_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    make_folder(tmp_path / "cityscapes")
    monkeypatch.chdir(tmp_path)
    entry, root, _ = resolve_dataset("cityscapes", "/data/cs")
    assert entry.name == "cityscapes" and root == Path("/data/cs")
    dm = ExemplarPairDataModule(dataset="cityscapes", root="/data/cs")
    assert dm.entry.name == "cityscapes"


@pytest.mark.parametrize("synthetic_there", [False, True], ids=["no-data-synthetic", "data-synthetic"])
def test_fit_with_the_quickstart_config_trains_on_the_folder_named_as_dataset(tmp_path, monkeypatch, capsys, caplog,
                                                                              synthetic_there):
    """The issue's case: only --data.init_args.dataset is overridden; the config keeps root: data/synthetic.
    Before the fix fit read data/synthetic: with it there (here a 10-class stand-in with its classes.yaml),
    it trained on it and exited 0; without it, the error named data/synthetic."""
    mine = make_folder(tmp_path / "my_folder")
    if synthetic_there:
        stand_in = make_folder(tmp_path / "data" / "synthetic")
        (stand_in / "classes.yaml").write_text(yaml.safe_dump(
            {"names": [f"c{i}" for i in range(10)], "colors": [[i, i, i] for i in range(10)]}))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    args = ["fit", "--config", str(REPO / "configs/quickstart/stage1.yaml"), *TINY_MODEL,
            "--data.init_args.dataset", str(mine), "--data.init_args.batch_size", "2",
            "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.default_root_dir", str(run)]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr()
    log = out.out + out.err + caplog.text  # Lightning's rank-zero info lines are log records
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["num_classes"] == 4  # the folder's classes, not the synthetic 10
    assert (tmp_path / "data" / "synthetic").exists() == synthetic_there  # nothing generated there
    assert "root data/synthetic (the synthetic dataset's default root) is not used" in log
    # item 2: the log says which pairing validation uses and why
    assert "validation pairing: self-pairs" in log and str(mine / "val" / "pairs.json") in log


def test_fit_with_a_folder_path_and_another_folder_as_root_fails_naming_both(tmp_path, monkeypatch, capsys):
    mine, other = make_folder(tmp_path / "mine"), make_folder(tmp_path / "other")
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(REPO / "configs/quickstart/stage1.yaml"), *TINY_MODEL,
            "--data.init_args.dataset", str(mine), "--data.init_args.root", str(other),
            "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path / "run")]
    assert main(args) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and str(mine) in err[0] and str(other) in err[0], err


# --- item 2: which pairing validation uses ---------------------------------------------------------


def test_datamodule_says_validation_falls_back_to_self_pairs(tmp_path):
    mine = make_folder(tmp_path / "f")
    dm = ExemplarPairDataModule(dataset=str(mine), batch_size=2, resolution=16)
    dm.setup("fit")
    assert dm.val_set.pairing == "self"
    note = dm.val_pairing_note
    assert note.startswith("validation pairing: self-pairs") and "there is no" in note
    assert str(mine / "val" / "pairs.json") in note and "val_pairing random" in note
    assert note in dm.notes


def test_datamodule_says_listed_validation_reads_the_pairs_file(tmp_path):
    mine = make_folder(tmp_path / "f")
    pairs = [{"exemplar": "images/s0.png", "exemplar_labels": "labels/s0.png", "target_labels": "labels/s1.png",
              "ground_truth": "images/s1.png"}]
    (mine / "val" / "pairs.json").write_text(json.dumps({"pairs": pairs}))
    dm = ExemplarPairDataModule(dataset=str(mine), batch_size=2, resolution=16)
    dm.setup("validate")
    assert dm.val_set.pairing == "listed" and len(dm.val_set) == 1
    assert dm.val_pairing_note.startswith("validation pairing: listed") and "pairs.json" in dm.val_pairing_note


def test_held_out_validation_says_it_uses_self_pairs(tmp_path):
    mine = make_folder(tmp_path / "f", splits=("train",), n=6)
    dm = ExemplarPairDataModule(dataset=str(mine), batch_size=2, resolution=16)
    dm.setup("fit")
    assert "self-pairs" in dm.val_pairing_note and "held-out slice" in dm.val_pairing_note


def test_data_check_says_which_pairing_validation_uses(tmp_path, capsys):
    mine = make_folder(tmp_path / "f")
    assert main(["data", "check", str(mine), "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "validation pairing: self-pairs" in out and str(mine / "val" / "pairs.json") in out
    pairs = [{"exemplar": "images/s0.png", "exemplar_labels": "labels/s0.png", "target_labels": "labels/s1.png"}]
    (mine / "val" / "pairs.json").write_text(json.dumps({"pairs": pairs}))
    assert main(["data", "check", str(mine), "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "validation pairing: listed" in out and "self-pairs" not in out
    (mine / "val" / "pairs.json").unlink()
    assert main(["data", "check", str(mine), "--batch-size", "2", "--val-pairing", "self"]) == 0
    assert "validation pairing: self-pairs (--data.init_args.val_pairing self" in capsys.readouterr().out
