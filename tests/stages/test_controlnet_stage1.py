"""Stage 1 with ControlNet guidance end to end, as a user runs it (issue 20): `fit` stage 1 with
``guidance: controlnet`` -> checkpoint -> load_stage1 -> stage 2 on it -> `export` -> `generate --pipeline`
draws the same bytes as `generate --stage1 --adapter`; and stage 1 starting from a pipeline folder
(``init_from``)."""
import json
import sys
from pathlib import Path

import pytest
import torch

import amlight.cli.lightning_cli  # noqa: F401 - Lightning's log handler must not bind to a test's captured stderr
from amlight.checkpoints.stage1 import load_stage1, stage1_from_pipeline_folder
from amlight.cli.main import main
from amlight.modules.controlnet_guidance import ControlNetGuidance

from helpers.tiny_models import make_batch

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--data.init_args.batch_size", "2", "--data.init_args.max_val_samples", "2",
    "--data.init_args.resolution", "16",
    "--data.init_args.synthetic", "{num_train: 8, num_val_groups: 1, height: 32, width: 32}",
    "--model.init_args.sample_steps", "2", "--trainer.max_steps", "2", "--threads", "1",
]
TINY_BACKBONE = ["--model.init_args.backbone_options", "{block_out_channels: [16, 32], attention_heads: 2}"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fit(config: str, root: Path, data: Path, *extra: str) -> Path:
    argv = ["fit", "--config", str(REPO / config), *TINY, "--data.init_args.root", str(data),
            "--trainer.default_root_dir", str(root), *extra]
    saved, sys.argv = sys.argv, sys.argv[:1]  # pytest's own flags are no fit arguments (module-scoped callers)
    try:
        assert main(argv) == 0
    finally:
        sys.argv = saved
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Stage 1 (structure_only, ControlNet guidance), stage 2 on it, and the exported folder."""
    root = tmp_path_factory.mktemp("cn")
    data = root / "syn"
    stage1 = fit("configs/quickstart/stage1.yaml", root / "stage1", data, *TINY_BACKBONE,
                 "--model.init_args.guidance", "controlnet",
                 "--model.init_args.attention", "structure_only")
    stage2 = fit("configs/quickstart/stage2.yaml", root / "stage2", data,
                 "--model.init_args.stage1_checkpoint", str(stage1), "--model.init_args.max_resolution", "8")
    folder = root / "model"
    assert main(["export", "--stage1", str(stage1), "--adapter", str(stage2), "--out", str(folder)]) == 0
    return {"root": root, "data": data, "stage1": stage1, "stage2": stage2, "folder": folder}


def test_fit_writes_a_controlnet_stage1_that_reloads_to_the_same_outputs(world):
    from amlight.stages import GenerationStage

    ckpt = torch.load(world["stage1"], map_location="cpu", weights_only=True)
    hp = ckpt["amlight"]["hparams"]
    assert hp["guidance"] == "controlnet" and hp["attention"] == "structure_only"
    assert len(hp["class_colors"]) == hp["num_classes"]
    assert ckpt["global_step"] == 2
    stage1 = load_stage1(world["stage1"])
    assert isinstance(stage1.model.guidance, ControlNetGuidance)
    args = {k: v for k, v in hp.items() if k != "class_colors" and not k.startswith("_")}
    trained = GenerationStage(**args)
    trained.load_state_dict(ckpt["state_dict"])
    trained.eval()
    b = make_batch(seed=3, classes=hp["num_classes"])
    t, prompt = torch.tensor([100, 800]), stage1.backbone.prompt_batch(2)
    with torch.no_grad():
        ours = stage1.model(b["image"], t, b["labels"], prompt)
        theirs = trained.model(b["image"], t, b["labels"], prompt)
    assert torch.equal(ours, theirs)
    # the trained ControlNet is not the one a fresh stage starts from
    fresh = GenerationStage(**args).model.guidance.state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in stage1.model.guidance.state_dict().items())


def test_stage2_trains_an_adapter_on_it(world):
    ckpt = torch.load(world["stage2"], map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and all(k.startswith("adapter.") for k in ckpt["state_dict"])


def test_export_names_the_controlnet_and_generate_draws_the_same_bytes(world, tmp_path):
    folder = world["folder"]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["structure_guidance"] == ["amlight.modules.controlnet_guidance", "ControlNetGuidance"]
    config = json.loads((folder / "structure_guidance" / "config.json").read_text())
    assert config["class_colors"] == load_stage1(world["stage1"]).hparams["class_colors"]
    pairs = world["data"] / "val" / "pairs.json"
    common = ["--pairs", str(pairs), "--steps", "2", "--threads", "1", "--quiet"]
    a, b = tmp_path / "from_ckpt", tmp_path / "from_folder"
    assert main(["generate", "--stage1", str(world["stage1"]), "--adapter", str(world["stage2"]),
                 "--out", str(a), *common]) == 0
    assert main(["generate", "--pipeline", str(folder), "--out", str(b), *common]) == 0
    drawn = sorted(p.name for p in a.glob("*.png") if p.name != "grid.png")
    assert drawn and drawn == sorted(p.name for p in b.glob("*.png") if p.name != "grid.png")
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in drawn)


def test_the_folders_stage1_has_the_controlnet_hparams(world):
    stage1 = stage1_from_pipeline_folder(world["folder"])
    ckpt_stage1 = load_stage1(world["stage1"])
    assert stage1.hparams["guidance"] == "controlnet"
    assert stage1.hparams["class_colors"] == ckpt_stage1.hparams["class_colors"]
    assert stage1.hparams["guidance_scale"] == 1.0 and stage1.num_classes == ckpt_stage1.num_classes
    ours, theirs = stage1.model.state_dict(), ckpt_stage1.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# --- stage 1 from a pipeline folder (init_from) ---------------------------------------------------


def _outputs(model, backbone, classes, seed=5):
    b = make_batch(seed=seed, classes=classes)
    t, prompt = torch.tensor([200, 900]), backbone.prompt_batch(2)
    with torch.no_grad():
        return model.eval()(b["image"], t, b["labels"], prompt)


def test_init_from_a_folder_starts_from_its_weights_and_settings(world):
    from amlight.stages import GenerationStage

    folder = stage1_from_pipeline_folder(world["folder"])
    stage = GenerationStage(num_classes=folder.num_classes, init_from=str(world["folder"]), trainable="attention",
                            guidance_trainable=False)
    hp = stage.hparams
    assert hp["guidance"] == "controlnet" and hp["class_colors"] == folder.hparams["class_colors"]
    assert hp["backbone"] == "pipeline" and hp["backbone_path"] == str(world["folder"])
    assert stage.backbone.spec["preset"] == "pipeline"
    ours, theirs = stage.model.state_dict(), folder.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # trainable copies: only the attention blocks train, the ControlNet stays frozen
    trainable = [n for n, p in stage.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("model.unet.") and "attentions." in n for n in trainable)
    loss = stage.train().denoising_loss(make_batch(classes=folder.num_classes))
    loss.backward()
    assert all(p.grad is None for p in stage.model.guidance.parameters())
    assert any(p.grad is not None for p in stage.model.unet.parameters())
    assert all(not p.requires_grad for p in folder.model.parameters())  # the shared frozen model is untouched
    # the ControlNet may train too
    stage = GenerationStage(num_classes=folder.num_classes, init_from=str(world["folder"]), guidance="controlnet")
    assert all(p.requires_grad for p in stage.model.guidance.parameters())


def test_a_run_started_from_a_folder_reloads_with_load_stage1(world):
    from amlight.stages import GenerationStage

    run = world["root"] / "from_folder"
    ckpt_path = fit("configs/quickstart/stage1.yaml", run, world["data"], "--model.init_args.init_from",
                    str(world["folder"]), "--model.init_args.trainable", "attention",
                    "--model.init_args.attention", "augmented")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["amlight"]["backbone"]["preset"] == "pipeline" and ckpt["global_step"] == 2
    hp = ckpt["amlight"]["hparams"]
    stage1 = load_stage1(ckpt_path)
    trained = GenerationStage(**{k: v for k, v in hp.items() if not k.startswith("_") and k not in (
        "class_colors", "controlnet_config", "backbone", "backbone_path")})
    trained.load_state_dict(ckpt["state_dict"])
    reloaded = _outputs(stage1.model, stage1.backbone, stage1.num_classes)
    assert torch.equal(reloaded, _outputs(trained.model, trained.backbone, stage1.num_classes))
    start = stage1_from_pipeline_folder(world["folder"])
    assert not torch.equal(reloaded, _outputs(start.model, start.backbone, stage1.num_classes))  # it trained
    # and it exports as any stage 1 does, its ControlNet kept
    out = world["root"] / "from_folder_model"
    assert main(["export", "--stage1", str(ckpt_path), "--out", str(out)]) == 0
    exported = stage1_from_pipeline_folder(out)
    assert exported.hparams["guidance"] == "controlnet"
    assert torch.equal(_outputs(exported.model, exported.backbone, stage1.num_classes), reloaded)


def test_init_from_a_folder_with_structure_guidance(stage1_ckpt, tmp_path):
    from amlight.stages import GenerationStage
    from helpers.folder_datasets import make_dataset

    out = tmp_path / "model"
    assert main(["export", "--stage1", str(stage1_ckpt), "--out", str(out), "--data",
                 str(make_dataset(tmp_path / "data"))]) == 0
    stage = GenerationStage(num_classes=5, init_from=str(out))
    assert stage.hparams["guidance"] == "structure" and stage.hparams["guidance_channels"] == 16
    folder = stage1_from_pipeline_folder(out)
    assert torch.equal(_outputs(stage.model, stage.backbone, 5), _outputs(folder.model, folder.backbone, 5))
    with pytest.raises(ValueError, match="holds 'structure' guidance: controlnet_colors has no use"):
        GenerationStage(num_classes=5, init_from=str(out), controlnet_colors="ade20k")


def test_init_from_conflicts_are_one_line_errors(world, tmp_path):
    from amlight.checkpoints.pipeline_folder import PipelineFolderError
    from amlight.stages import GenerationStage

    folder, n = str(world["folder"]), stage1_from_pipeline_folder(world["folder"]).num_classes
    cases = [
        (dict(guidance="structure"), "holds 'controlnet' guidance (ControlNetGuidance), but guidance is 'structure'"),
        (dict(controlnet_colors=[[1, 2, 3]] * n), "controlnet_colors differ from the folder's class colours"),
        (dict(backbone_path="somewhere"), "carries its own backbone"),
        (dict(num_classes=n + 1), f"reads {n} classes, but num_classes is {n + 1}"),
    ]
    for kw, expected in cases:
        with pytest.raises(ValueError) as info:
            GenerationStage(**{"num_classes": n, "init_from": folder, **kw})
        assert expected in str(info.value) and folder in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(PipelineFolderError, match="does not exist"):
        GenerationStage(num_classes=n, init_from=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="set init_from to the folder instead"):
        GenerationStage(num_classes=n, backbone="pipeline", backbone_path=folder)
