"""``python -m amlight predict``: a split's pairs through LightningCLI and SynthesisModule."""
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from amlight.data import ExemplarPairDataModule
from amlight.apps.predict_module import SynthesisModule

from helpers.folder_datasets import make_dataset
from helpers.tiny_models import save_adapter

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/quickstart/generate.yaml"


# The tiny model gains nothing from a second thread, and loses a lot when another process holds a core.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(stage1_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    return {"data": make_dataset(root / "data"), "stage1": stage1_ckpt,
            "adapter": save_adapter(stage1_ckpt, root / "adapter.safetensors")}


def trainer():
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False)


def datamodule(world, **kw):
    return ExemplarPairDataModule(str(world["data"]), resolution=16, batch_size=3, **kw)


def test_predict_writes_every_pair_and_resumes(world, tmp_path):
    out = tmp_path / "out"
    module = SynthesisModule(str(world["stage1"]), adapter=str(world["adapter"]), steps=2, out_dir=str(out),
                             triplets=True, num_classes=5, ignore_index=255, threads=1)
    # the frozen model is no submodule: nothing to train, checkpoint or wrap
    assert list(module.parameters()) == [] and module.state_dict() == {}
    trainer().predict(module, datamodule=datamodule(world), return_predictions=False)
    names = ["s0__s1.png", "s1__s0.png", "s2__s3.png", "s3__s2.png"]  # the names `generate --pairs` gives
    assert sorted(p.name for p in out.glob("s*.png")) == names
    assert sorted(p.name for p in (out / "triplets").glob("*.png")) == names
    assert Image.open(out / "s0__s1.png").size == (16, 16) and (out / "grid.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"outputs": 4, "written": 4, "skipped": 0, "warnings": 4}
    record = {o["output"]: o for o in summary["outputs"]}["s0__s1.png"]
    assert record["uncovered_classes"] == ["tree"] and record["exemplar"].endswith("images/s0.png")
    first = {p.name: p.read_bytes() for p in out.glob("s*.png")}

    (out / "s2__s3.png").unlink()
    trainer().predict(module, datamodule=datamodule(world), return_predictions=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["written"] == 1 and summary["counts"]["skipped"] == 3
    assert {p.name: p.read_bytes() for p in out.glob("s*.png")} == first  # the same batch, the same bytes


def test_predict_through_lightning_cli(world, tmp_path, monkeypatch):
    from amlight.cli.main import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "gen"
    argv = ["predict", "--config", str(CONFIG),
            "--model.init_args.stage1_checkpoint", str(world["stage1"]),
            "--model.init_args.adapter", str(world["adapter"]),
            "--model.init_args.steps", "2", "--model.init_args.out_dir", str(out),
            "--model.init_args.mode", "hard_mask", "--model.init_args.threads", "1",
            "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false",
            "--data.init_args.dataset", str(world["data"]), "--data.init_args.root", str(world["data"]),
            "--data.init_args.resolution", "16", "--data.init_args.max_predict_samples", "2"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.glob("s*.png")) == ["s0__s1__hard_mask.png", "s1__s0__hard_mask.png"]
    assert (out / "config.yaml").is_file()  # the resolved config, to reproduce the run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["mode"] == "hard_mask" and summary["arguments"]["command"] == "predict"


def test_module_checks_its_arguments(world):
    with pytest.raises(ValueError, match="num_classes=19 but stage 1 .* trained with 5"):
        SynthesisModule(str(world["stage1"]), adapter=str(world["adapter"]), num_classes=19)
    with pytest.raises(ValueError, match="mode: augmented"):
        SynthesisModule(str(world["stage1"]))
    from amlight.checkpoints.files import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        SynthesisModule("/nowhere/stage1.ckpt", mode="augmented")


def test_predict_pairings_name_their_exemplars(world):
    data = datamodule(world, predict_pairing="random")
    data.setup("predict")
    item = data.predict_set[0]
    assert item["target_name"] == "s0" and item["exemplar_name"] != "s0"
    assert torch.equal(item["exemplar_image"], data.predict_set[0]["exemplar_image"])
