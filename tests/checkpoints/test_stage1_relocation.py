"""Checkpoints that moved: a stage-1 checkpoint whose SD 1.5 folder is gone (``--base DIR``) and a
stage-2 checkpoint or exported adapter whose stage-1 path is gone (found next to it, by sha256)."""
import json
import os
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from amlight.checkpoints.files import CheckpointError
from amlight.checkpoints.stage1 import find_stage1_of, load_stage1
from amlight.cli.main import main

from helpers.tiny_models import save_stage1_checkpoint, save_tiny_sd15
from helpers.folder_datasets import make_dataset


# The tiny model gains nothing from a second thread, and loses a lot when another process holds a core.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save(stage, path):
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path


# --- --base: the SD 1.5 folder moved ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sd15_world(tmp_path_factory):
    """An SD-1.5-shaped stage-1 checkpoint whose stored backbone folder has since been moved away."""
    from amlight.stages import GenerationStage

    root = tmp_path_factory.mktemp("sd15_moved")
    trained_on = save_tiny_sd15(root / "machine_a" / "sd15")
    torch.manual_seed(0)
    stage = GenerationStage(num_classes=5, backbone="sd15", backbone_path=str(trained_on), guidance_channels=16)
    ckpt = save(stage, root / "stage1.ckpt")
    weights = {k: v.clone() for k, v in stage.model.state_dict().items()}
    moved = root / "machine_b" / "stable-diffusion-v1-5"
    moved.parent.mkdir()
    shutil.move(str(trained_on), moved)
    return {"root": root, "ckpt": ckpt, "stored": str(trained_on), "base": moved, "weights": weights}


def test_missing_backbone_folder_names_it_and_the_base_flag(sd15_world):
    with pytest.raises(CheckpointError) as info:
        load_stage1(sd15_world["ckpt"])
    message = str(info.value)
    assert sd15_world["stored"] in message and "--base" in message and "\n" not in message


def test_base_replaces_the_stored_folder(sd15_world):
    stage1 = load_stage1(sd15_world["ckpt"], base=sd15_world["base"])
    assert stage1.hparams["backbone"]["path"] == str(sd15_world["base"])
    state = stage1.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in sd15_world["weights"].items())  # the same trained weights
    assert stage1.backbone.vae is not None  # the VAE came from --base


def test_base_is_refused_where_there_is_nothing_to_replace(tmp_path, sd15_world):
    tiny = save_stage1_checkpoint(tmp_path / "tiny.ckpt")
    with pytest.raises(CheckpointError, match="tiny.*drop --base"):
        load_stage1(tiny, base=sd15_world["base"])
    with pytest.raises(CheckpointError, match="--base .* is not a folder"):
        load_stage1(sd15_world["ckpt"], base=tmp_path / "nowhere")


def test_probe_and_adapter_stage_take_base(sd15_world, tmp_path, capsys):
    from amlight.data.synthetic import ensure_synthetic_dataset
    from amlight.stages import AdapterStage

    data = ensure_synthetic_dataset(tmp_path / "synth", num_train=2, num_val_groups=1, height=32, width=32,
                                    progress=False)
    argv = ["probe", "--stage1", str(sd15_world["ckpt"]), "--dataset", "synthetic", "--root", str(data),
            "--resolution", "16", "--pairs", "2", "--timesteps", "500", "--modes", "augmented"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--base" in err and sd15_world["stored"] in err and "Traceback" not in err
    # (the synthetic data has 10 classes, this stage 1 five: the probe only needs its attention)
    assert main(argv + ["--base", str(sd15_world["base"]), "--out", str(tmp_path / "probe.json")]) == 0
    assert json.loads((tmp_path / "probe.json").read_text())["modes"]["augmented"]["exemplar_share"] > 0
    stage = AdapterStage(str(sd15_world["ckpt"]), base=str(sd15_world["base"]))
    assert stage.stage1.hparams["backbone"]["path"] == str(sd15_world["base"])


def test_generate_and_export_take_base(sd15_world, tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    v = data / "val"
    argv = ["generate", "--stage1", str(sd15_world["ckpt"]), "--data", str(data), "--mode", "augmented",
            "--exemplar", str(v / "images/s0.png"), "--exemplar-labels", str(v / "labels/s0.png"),
            "--target-labels", str(v / "labels/s1.png"), "--steps", "1", "--threads", "1", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "no_base")]) == 1
    err = capsys.readouterr().err
    assert "--base" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "no_base").exists()
    assert main([*argv, "--out", str(tmp_path / "gen"), "--base", str(sd15_world["base"])]) == 0
    assert (tmp_path / "gen" / "s0__s1__augmented.png").is_file()
    out = tmp_path / "model"
    assert main(["export", "--stage1", str(sd15_world["ckpt"]), "--data", str(data), "--out", str(out)]) == 1
    assert "--base" in capsys.readouterr().err and not out.exists()
    assert main(["export", "--stage1", str(sd15_world["ckpt"]), "--data", str(data), "--out", str(out),
                 "--base", str(sd15_world["base"])]) == 0
    card = (out / "README.md").read_text()
    assert "license: creativeml-openrail-m" in card and str(sd15_world["base"]) in card
    assert {"vae", "text_encoder", "tokenizer"} <= {p.name for p in out.iterdir()}  # the folder carries the base


# --- a stage-2 file finds its stage 1 ---------------------------------------------------------------


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """runs/q/stage1/checkpoints/last.ckpt and runs/q/stage2/checkpoints/last.ckpt written from the
    trainer's working directory (relative paths, as a config gives them), then the trainer's folder is gone."""
    from amlight.checkpoints.adapter_files import export_adapter
    from amlight.stages import AdapterStage

    trainer_cwd = tmp_path / "machine_a"
    trainer_cwd.mkdir()
    monkeypatch.chdir(trainer_cwd)
    s1 = Path("runs/q/stage1/checkpoints/last.ckpt")
    s1.parent.mkdir(parents=True)
    save_stage1_checkpoint(s1, seed=3)  # a stage 1 of its own: not the cached one of other tests
    torch.manual_seed(0)
    stage = AdapterStage(str(s1))
    with torch.no_grad():
        for p in stage.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    s2 = save(stage, Path("runs/q/stage2/checkpoints/last.ckpt"))
    export_adapter(s2, Path("runs/q/adapter.safetensors"))
    stored = json.loads(json.dumps(torch.load(s2, weights_only=True)["amlight"]["stage1"]))
    assert stored["path"] == str(s1)  # relative to the trainer's folder
    elsewhere = tmp_path / "machine_b" / "copied"
    shutil.copytree(trainer_cwd / "runs", elsewhere / "runs")
    shutil.rmtree(trainer_cwd)
    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.chdir(user)
    return {"runs": elsewhere / "runs", "stored": stored}


def test_probe_stage2_after_the_runs_folder_moved(runs, tmp_path, capsys):
    from amlight.data.synthetic import ensure_synthetic_dataset

    data = ensure_synthetic_dataset(tmp_path / "synth", num_train=2, num_val_groups=1, height=32, width=32,
                                    progress=False)
    stage2 = runs["runs"] / "q/stage2/checkpoints/last.ckpt"
    out = tmp_path / "probe.json"
    code = main(["probe", "--stage2", str(stage2), "--root", str(data), "--resolution", "16", "--pairs", "2",
                 "--timesteps", "500", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "adapter" in json.loads(out.read_text())["modes"]


def test_found_by_hash_among_renamed_files_and_decoys(runs):
    folder = runs["runs"] / "q/stage1/checkpoints"
    (folder / "last.ckpt").rename(folder / "epoch=0-step=50.ckpt")  # the stored name no longer there
    save_stage1_checkpoint(folder / "aaa-other.ckpt", seed=4)  # sorts first; another model
    adapter = runs["runs"] / "q/adapter.safetensors"
    found = find_stage1_of(runs["stored"], adapter)
    assert Path(found).name == "epoch=0-step=50.ckpt"
    # the same from a flat folder: adapter and stage 1 side by side, any names
    flat = runs["runs"].parent / "sent"
    flat.mkdir()
    shutil.copy(adapter, flat / "model.safetensors")
    shutil.copy(folder / "epoch=0-step=50.ckpt", flat / "stage1.ckpt")
    assert Path(find_stage1_of(runs["stored"], flat / "model.safetensors")) == (flat / "stage1.ckpt").resolve()


def test_not_found_names_what_was_looked_for_and_the_flag(runs, capsys):
    os.remove(runs["runs"] / "q/stage1/checkpoints/last.ckpt")
    adapter = runs["runs"] / "q/adapter.safetensors"
    with pytest.raises(CheckpointError) as info:
        find_stage1_of(runs["stored"], adapter)
    message = str(info.value)
    assert runs["stored"]["path"] in message and "sha256" in message and "--stage1" in message
    assert main(["probe", "--stage2", str(runs["runs"] / "q/stage2/checkpoints/last.ckpt")]) == 1
    err = capsys.readouterr().err
    assert "--stage1" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_generate_with_the_adapter_alone_finds_stage1(runs, tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "gen"
    code = main(["generate", "--adapter", str(runs["runs"] / "q/adapter.safetensors"), "--data", str(data),
                 "--exemplar", str(data / "val/images/s0.png"), "--exemplar-labels", str(data / "val/labels/s0.png"),
                 "--target-labels", str(data / "val/labels/s1.png"), "--out", str(out), "--steps", "1",
                 "--threads", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["stage1"] == str((runs["runs"] / "q/stage1/checkpoints/last.ckpt").resolve())
    assert len(list(out.glob("*.png"))) >= 1
