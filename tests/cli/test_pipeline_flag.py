"""``--pipeline DIR``: every inference command reads an exported pipeline folder, with no --data; stage 2
trains on one; ``predict`` writes its whole run under one folder."""
import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from amlight.cli.main import main

from helpers.tiny_models import make_batch, save_stage1_checkpoint
from helpers.folder_datasets import NAMES, make_dataset
from helpers.tiny_models import save_adapter

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/quickstart/generate.yaml"


# The tiny model gains nothing from a second thread, and loses a lot when another process holds a core.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Checkpoints, their exported pipeline folder copied to another machine's folder, and the data."""
    root = tmp_path_factory.mktemp("pipeline_flag")
    data = make_dataset(root / "data")
    (root / "sender").mkdir()
    stage1 = save_stage1_checkpoint(root / "sender/stage1.ckpt", seed=11)
    adapter = save_adapter(stage1, root / "sender/adapter.safetensors")
    exported = root / "sender/model"
    assert main(["export", "--stage1", str(stage1), "--adapter", str(adapter), "--data", str(data),
                 "--out", str(exported)]) == 0
    received = root / "receiver/models/model"
    shutil.copytree(exported, received)
    shutil.rmtree(exported)
    return {"root": root, "data": data, "val": data / "val", "stage1": stage1, "adapter": adapter,
            "pipeline": received}


def pngs(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.png")) if p.name != "grid.png"}


def inputs(world):
    v = world["val"]
    return ["--exemplar", str(v / "images/s0.png"), str(v / "images/s2.png"),
            "--exemplar-labels", str(v / "labels/s0.png"), str(v / "labels/s2.png"),
            "--target-labels", str(v / "labels/s1.png"), str(v / "labels/s3.png"),
            "--steps", "2", "--threads", "1", "--quiet"]


def test_generate_from_a_copied_folder_draws_the_checkpoint_bytes(world, tmp_path, monkeypatch):
    by_checkpoint, by_folder = tmp_path / "ckpt", tmp_path / "folder"
    assert main(["generate", "--stage1", str(world["stage1"]), "--adapter", str(world["adapter"]),
                 "--data", str(world["data"]), "--out", str(by_checkpoint), *inputs(world)]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # another working directory, no --data: the folder knows its label space
    assert main(["generate", "--pipeline", str(world["pipeline"]), "--out", "gen", *inputs(world)]) == 0
    by_folder = elsewhere / "gen"
    assert len(pngs(by_checkpoint)) == 4 and pngs(by_folder) == pngs(by_checkpoint)
    summary = json.loads((by_folder / "summary.json").read_text())
    assert summary["settings"]["pipeline"] == str(world["pipeline"].resolve())


def test_pipeline_with_checkpoint_flags_is_an_error(world, tmp_path, capsys):
    for command in ("generate", "evaluate"):
        code = main([command, "--pipeline", str(world["pipeline"]), "--stage1", str(world["stage1"]),
                     "--out", str(tmp_path / command), *(inputs(world) if command == "generate" else [])])
        err = capsys.readouterr().err
        assert code == 1 and "--pipeline" in err and "drop --stage1" in err and len(err.strip().splitlines()) == 1
    assert main(["generate", "--out", str(tmp_path / "x"), *inputs(world)]) == 1
    assert "--pipeline DIR" in capsys.readouterr().err
    assert main(["generate", "--pipeline", str(world["data"]), "--out", str(tmp_path / "y"), *inputs(world)]) == 1
    err = capsys.readouterr().err
    assert "model_index.json" in err and "Traceback" not in err
    assert main(["generate", "--pipeline", str(tmp_path / "gone"), "--out", str(tmp_path / "z"), *inputs(world)]) == 1
    assert "gone does not exist" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "xyz")


def test_evaluate_from_a_folder_scores_as_the_checkpoints(world, tmp_path):
    common = ["--pairs", str(world["val"] / "pairs.json"), "--modes", "augmented,adapter", "--steps", "1",
              "--max-pairs", "2", "--batch-size", "2", "--device", "cpu", "--quiet"]
    assert main(["evaluate", "--stage1", str(world["stage1"]), "--adapter", str(world["adapter"]),
                 "--data", str(world["data"]), "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["evaluate", "--pipeline", str(world["pipeline"]), "--out", str(tmp_path / "b"), *common]) == 0
    a, b = (json.loads((tmp_path / n / "results.json").read_text()) for n in "ab")
    for mode in ("augmented", "adapter"):
        assert a["modes"][mode]["metrics"]["psnr"]["per_pair"] == b["modes"][mode]["metrics"]["psnr"]["per_pair"]
    assert b["settings"]["stage1"] == str(world["pipeline"])


def test_probe_reads_a_folder(world, tmp_path, capsys):
    out = tmp_path / "probe.json"
    code = main(["probe", "--pipeline", str(world["pipeline"]), "--dataset", str(world["data"]),
                 "--root", str(world["data"]), "--resolution", "16", "--pairs", "2", "--timesteps", "500",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert {"augmented", "hard_mask", "adapter"} <= set(json.loads(out.read_text())["modes"])


def test_label_space_from_the_folder_decodes_as_the_dataset(world):
    from amlight.apps.inputs import LabelSpace
    from amlight.pipeline.synthesis import AMPipeline

    pipe = AMPipeline.from_pretrained(world["pipeline"])
    from_folder = LabelSpace.from_pipeline(pipe.label_space)
    from_data = LabelSpace.resolve(str(world["data"]))
    assert from_folder.metadata.class_names == from_data.metadata.class_names
    label_file = world["val"] / "labels/s2.png"
    assert np.array_equal(from_folder.load_labels(label_file), from_data.load_labels(label_file))


def test_adapter_stage_trains_on_a_folder(world, tmp_path):
    from amlight.stages import AdapterStage

    stage = AdapterStage(str(world["pipeline"]), num_classes=5, ignore_index=255)
    loss = stage.denoising_loss(make_batch(size=16), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in stage.adapter.parameters())
    assert all(p.grad is None for p in stage.stage1.model.parameters())  # the folder's stage 1 stays frozen
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(stage)
    trainer.save_checkpoint(tmp_path / "s2.ckpt")
    record = torch.load(tmp_path / "s2.ckpt", weights_only=True)["amlight"]
    assert record["stage1"]["path"] == str(world["pipeline"])

    # stage 2 adds its adapter to the folder: export with the stage-2 checkpoint alone
    out = tmp_path / "with_adapter"
    assert main(["export", "--adapter", str(tmp_path / "s2.ckpt"), "--out", str(out)]) == 0
    from amlight.pipeline.synthesis import AMPipeline

    pipe = AMPipeline.from_pretrained(out)
    assert pipe.adapter is not None and list(pipe.label_space.class_names) == NAMES  # the source folder's
    assert torch.equal(next(pipe.adapter.parameters()), next(stage.adapter.parameters()))
    assert "AM-Adapter: `" in (out / "README.md").read_text()
    # the stage-2 checkpoint alone (its stage 1 a folder: no --stage1, no --data) draws as the exported folder
    assert main(["generate", "--adapter", str(tmp_path / "s2.ckpt"), "--out", str(tmp_path / "a"), *inputs(world)]) == 0
    assert main(["generate", "--pipeline", str(out), "--out", str(tmp_path / "b"), *inputs(world)]) == 0
    assert len(pngs(tmp_path / "a")) == 4 and pngs(tmp_path / "a") == pngs(tmp_path / "b")

    # the folder it was trained on, moved next to the stage-2 checkpoint: found by its weights' digest
    from amlight.checkpoints.stage1 import find_stage1_of

    shutil.copytree(world["pipeline"], tmp_path / "renamed_model")
    moved = {"path": str(tmp_path / "gone" / "model"), "sha256": record["stage1"]["sha256"]}
    assert Path(find_stage1_of(moved, tmp_path / "s2.ckpt")) == (tmp_path / "renamed_model").resolve()


def test_a_pipeline_backbone_spec_resolves_to_the_folder(world):
    from amlight.backbone.registry import backbone_from_spec
    from amlight.checkpoints.stage1 import load_stage1

    stage1 = load_stage1(world["pipeline"])  # a folder where a stage-1 checkpoint is expected
    assert stage1.hparams["backbone"] == {"preset": "pipeline", "path": str(world["pipeline"])}
    assert backbone_from_spec(stage1.hparams["backbone"]) is stage1.backbone


# --- predict ------------------------------------------------------------------------------------


def predict_argv(world, *extra):
    return ["predict", "--config", str(CONFIG), "--model.init_args.steps", "1", "--model.init_args.threads", "1",
            "--trainer.enable_progress_bar", "false",
            "--data.init_args.dataset", str(world["data"]), "--data.init_args.root", str(world["data"]),
            "--data.init_args.resolution", "16", "--data.init_args.max_predict_samples", "2", *extra]


def test_predict_writes_the_whole_run_under_one_folder(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = predict_argv(world, "--model.init_args.stage1_checkpoint", str(world["stage1"]),
                        "--model.init_args.adapter", str(world["adapter"]), "--trainer.default_root_dir", "moved/here")
    assert main(argv) == 0
    top = {p.name for p in tmp_path.iterdir()}
    assert top == {"moved"}  # nothing anywhere else (the config's runs/quickstart/generate is not made)
    run = tmp_path / "moved/here"
    written = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    assert written == ["config.yaml", "grid.png", "s0__s1.png", "s1__s0.png", "summary.json",
                       "triplets/s0__s1.png", "triplets/s1__s0.png"]


def test_predict_from_a_folder(world, tmp_path):
    out = tmp_path / "gen"
    assert main(predict_argv(world, "--model.init_args.pipeline", str(world["pipeline"]),
                             "--model.init_args.stage1_checkpoint", "null", "--model.init_args.adapter", "null",
                             "--trainer.default_root_dir", str(out))) == 0
    assert sorted(pngs(out)) == ["s0__s1.png", "s1__s0.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["pipeline"] == str(world["pipeline"].resolve())


def test_predict_module_refuses_a_folder_and_checkpoints_together(world):
    from amlight.apps.predict_module import SynthesisModule

    with pytest.raises(ValueError, match=r"set stage1_checkpoint to null \(--model.init_args.stage1_checkpoint null\)"):
        SynthesisModule(str(world["stage1"]), pipeline=str(world["pipeline"]))
    with pytest.raises(ValueError, match="no model"):
        SynthesisModule(mode="augmented")
