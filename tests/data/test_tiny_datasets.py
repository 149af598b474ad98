"""Tiny datasets work or fail loudly: a folder dataset without a val split validates on a held-out slice
of train, a train split that gives no batch is an error (not a silent exit 0), and `data check` says
beforehand what `fit` will need."""
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from amlight.cli.main import main
from amlight.data.datamodule import ExemplarPairDataModule
from amlight.data.holdout import holdout_count, holdout_indices, train_batches
from amlight.data.io import DataFileError

REPO = Path(__file__).resolve().parents[2]
NAMES = ["sky", "tree", "road"]
COLORS = [[70, 130, 180], [107, 142, 35], [128, 64, 128]]
TINY_MODEL = [
    "--model.init_args.backbone_options", "{block_out_channels: [16, 32], attention_heads: 2}",
    "--model.init_args.guidance_channels", "16",
    "--model.init_args.sample_steps", "2",
    "--data.init_args.resolution", "16",
]


def make_train_only_folder(root: Path, n: int = 6, size=(16, 16)) -> Path:
    """A folder dataset with train/ only (no val/): n pairs of index labels."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": NAMES, "colors": COLORS}))
    rng = np.random.default_rng(0)
    for k in range(n):
        for sub in ("images", "labels"):
            (root / "train" / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "train/images" / f"s{k}.png")
        Image.fromarray(rng.integers(0, 3, size).astype(np.uint8)).save(root / "train/labels" / f"s{k}.png")
    return root


def test_holdout_arithmetic():
    assert holdout_count(6, 0.1) == 1 and holdout_count(100, 0.1) == 10
    assert holdout_count(2, 0.9) == 1  # always leaves one to train on
    assert holdout_count(1, 0.5) == 0 and holdout_count(10, 0) == 0
    train, held = holdout_indices(20, 0.25, seed=3)
    assert len(held) == 5 and sorted(train + held) == list(range(20))
    assert holdout_indices(20, 0.25, seed=3) == (train, held)  # deterministic
    assert train_batches(6, 8, drop_last=True) == 0 and train_batches(6, 8, drop_last=False) == 1


def test_folder_without_val_split_validates_on_held_out_train_slice(tmp_path):
    root = make_train_only_folder(tmp_path / "six")
    dm = ExemplarPairDataModule(dataset=str(root), batch_size=2, resolution=16)
    dm.setup("fit")
    train_names = {s.name for s in dm.train_set.source.scenes}
    val_names = {s.name for s in dm.val_set.source.scenes}
    assert len(val_names) == 1 and len(train_names) == 5 and not train_names & val_names
    assert "held out" in dm.holdout_note
    assert dm.val_set[0]["labels"].shape[-2:] == (16, 16)
    again = ExemplarPairDataModule(dataset=str(root), batch_size=2, resolution=16)
    again.setup("validate")  # validate alone holds out the same scene
    assert {s.name for s in again.val_set.source.scenes} == val_names


def test_missing_val_split_without_holdout_is_a_clear_error(tmp_path):
    root = make_train_only_folder(tmp_path / "six")
    dm = ExemplarPairDataModule(dataset=str(root), batch_size=2, val_holdout=0)
    with pytest.raises(DataFileError, match=r"split 'val' not found.*val_split.*val_holdout"):
        dm.setup("fit")


def test_fewer_pairs_than_batch_size_is_an_error_unless_drop_last_is_off(tmp_path):
    root = make_train_only_folder(tmp_path / "six")
    dm = ExemplarPairDataModule(dataset=str(root), batch_size=8, val_split="train")
    with pytest.raises(DataFileError, match=r"6 training pair\(s\), fewer than batch_size 8.*drop_last false"):
        dm.setup("fit")
    dm = ExemplarPairDataModule(dataset=str(root), batch_size=8, val_split="train", drop_last=False)
    dm.setup("fit")
    assert len(dm.train_dataloader()) == 1


def test_data_check_says_what_fit_will_need(tmp_path, capsys):
    root = make_train_only_folder(tmp_path / "six")
    assert main(["data", "check", str(root)]) == 0  # the data itself is fine
    out = capsys.readouterr().out
    assert "For fit" in out
    assert "no 'val' split" in out and "holds out 1 of the 6" in out
    assert "5 training pairs, fewer than batch_size 8" in out and "drop_last false" in out
    assert main(["data", "check", str(root), "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "fewer than batch_size" not in out and "2 batches of 2" in out


def test_fit_on_six_pair_folder_without_val_split_trains(tmp_path, monkeypatch):
    """The issue's case: `fit` on a 6-pair folder dataset without val/ used to stop at "split 'val' not found"."""
    root = make_train_only_folder(tmp_path / "six")
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(REPO / "configs/quickstart/stage1.yaml"), *TINY_MODEL,
            "--data.init_args.dataset", str(root), "--data.init_args.root", "null",
            "--data.init_args.batch_size", "2", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"]
    assert main(args) == 0
    assert (tmp_path / "runs/quickstart/stage1/checkpoints/last.ckpt").is_file()


def test_fit_with_zero_training_batches_fails_loudly(tmp_path, monkeypatch, capsys):
    """The issue's case: 6 pairs, batch_size 8, val_split train used to end with exit 0 and no checkpoint."""
    root = make_train_only_folder(tmp_path / "six")
    args = ["fit", "--config", str(REPO / "configs/quickstart/stage1.yaml"), *TINY_MODEL,
            "--data.init_args.dataset", str(root), "--data.init_args.root", "null",
            "--data.init_args.val_split", "train", "--trainer.max_steps", "2"]
    monkeypatch.chdir(tmp_path)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "split 'train' has 6 training pair(s), fewer than batch_size 8" in err and "drop_last false" in err
    assert not list(tmp_path.rglob("last.ckpt"))
    assert not list((tmp_path / "runs").rglob("*"))  # nothing left behind (config.yaml, event files)


def test_data_check_fit_notes_for_flat_and_split_layouts(tmp_path, capsys):
    root = make_train_only_folder(tmp_path / "flat")
    (root / "train").rename(root / "moved")
    for sub in ("images", "labels"):
        (root / "moved" / sub).rename(root / sub)
    assert main(["data", "check", str(root), "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "no split folders: every split reads the same 6 pairs" in out and "1 batch of 4 per epoch (the incomplete last one dropped)" in out
    both = make_train_only_folder(tmp_path / "both")
    (both / "train").rename(both / "val")
    make_train_only_folder(both)
    assert main(["data", "check", str(both), "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "validation: the 6 'val' pairs" in out and "training: 6 pairs, 2 batches of 3" in out


def test_validate_on_a_folder_with_only_a_val_split(tmp_path):
    """Validation alone needs no train split (the held-out slice is only a fallback)."""
    root = make_train_only_folder(tmp_path / "v")
    (root / "train").rename(root / "val")
    dm = ExemplarPairDataModule(dataset=str(root), batch_size=2)
    dm.setup("validate")
    assert len(dm.val_set) == 6 and dm.holdout_note is None
