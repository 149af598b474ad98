"""A pipeline folder (issue 19): AMPipeline as a diffusers DiffusionPipeline, saved and loaded.

Save then load draws byte-identical images to the checkpoint path (tiny preset, and an SD-shaped
model with a VAE and a CLIP text encoder), from another working directory too; a folder missing a
component or holding a foreign config is a one-line PipelineFolderError naming the file.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch

from amlight.checkpoints.files import CheckpointError
from amlight.checkpoints.pipeline_folder import (
    PipelineFolderError,
    adapter_from_pipeline_folder,
    is_pipeline_folder,
)
from amlight.checkpoints.stage1 import load_stage1, stage1_from_pipeline_folder
from amlight.modules.adapter import AMAdapter
from amlight.pipeline.label_space import PipelineLabelSpace
from amlight.pipeline.synthesis import AMPipeline

STEPS = 3
CLASSES = 5


def _label_space(prompt=""):
    colors = [[40 * i, 255 - 40 * i, 7] for i in range(CLASSES)]
    return PipelineLabelSpace([f"class{i}" for i in range(CLASSES)], colors, name="toy", prompt=prompt)


def _adapter(heads, seed=1):
    torch.manual_seed(seed)
    adapter = AMAdapter(heads=heads, channels=4, num_layers=2)
    for p in adapter.parameters():  # a fresh adapter is the identity: give it weights that act
        p.data.normal_(0, 0.2)
    return adapter.eval().requires_grad_(False)


def _inputs(size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, CLASSES, (2, size, size), generator=g)
    exemplar = torch.rand(1, 3, size, size, generator=g)  # [0, 1]: the diffusers-style call's range
    return targets, exemplar, targets[0].flip(-1)


@pytest.fixture(scope="module")
def saved(stage1_ckpt, tmp_path_factory):
    """The checkpoint-based pipeline (with an adapter and a label space) and the folder it saved."""
    pipe = AMPipeline.from_checkpoints(stage1_ckpt, label_space=_label_space())
    pipe.adapter = _adapter(load_stage1(stage1_ckpt).heads)
    folder = tmp_path_factory.mktemp("folder") / "am_tiny"
    pipe.save_pretrained(folder)
    return pipe, folder


def _draw(pipe, output_type="pt", mode="adapter"):
    targets, exemplar, exemplar_labels = _inputs()
    return pipe(list(targets), exemplar, exemplar_labels, num_inference_steps=STEPS, mode=mode,
                output_type=output_type).images


def test_folder_layout_names_every_component(saved):
    _, folder = saved
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "AMPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["structure_guidance"] == ["amlight.modules.structure_guidance", "StructureGuidance"]
    assert index["am_adapter"] == ["amlight.modules.adapter", "AMAdapter"]
    assert index["label_space"] == ["amlight.pipeline.label_space", "PipelineLabelSpace"]
    assert index["prompt_embeddings"] == ["amlight.pipeline.prompt", "PromptEmbeddings"]
    assert index["scheduler"][1] == "DDIMScheduler"
    assert index["vae"] == [None, None] and index["text_encoder"] == [None, None]  # the pixel-space tiny preset
    for name in ("unet", "structure_guidance", "am_adapter", "prompt_embeddings", "label_space"):
        assert (folder / name / "diffusion_pytorch_model.safetensors").is_file(), name
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.ckpt"))
    assert is_pipeline_folder(folder) and not is_pipeline_folder(folder / "unet")
    space = json.loads((folder / "label_space" / "config.json").read_text())
    assert space["class_names"][0] == "class0" and space["colors"][1] == [40, 215, 7]


def test_save_then_load_draws_the_same_bytes_from_another_directory(saved, tmp_path, monkeypatch):
    pipe, folder = saved
    reference = _draw(pipe, mode="adapter")
    reference_pil = [im.tobytes() for im in _draw(pipe, "pil", mode="structure_only")]
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(folder, moved)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    loaded = AMPipeline.from_pretrained(moved)
    assert loaded.label_space.class_names == pipe.label_space.class_names
    assert loaded.adapter is not None and loaded.resolution == pipe.resolution
    assert torch.equal(_draw(loaded, mode="adapter"), reference)
    assert [im.tobytes() for im in _draw(loaded, "pil", mode="structure_only")] == reference_pil
    relative = AMPipeline.from_pretrained(Path("..") / "elsewhere" / "copy")
    assert [im.tobytes() for im in _draw(relative, "pil", mode="structure_only")] == reference_pil


def test_loaded_pipeline_is_a_diffusers_pipeline(saved, tmp_path):
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

    _, folder = saved
    pipe = AMPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
    assert isinstance(pipe, DiffusionPipeline)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.structure_guidance.dtype == torch.bfloat16
    assert pipe.label_space.palette.dtype == torch.uint8  # not a float weight: never cast
    pipe.to(torch.float32)
    assert pipe.dtype == torch.float32 and pipe.device.type == "cpu"
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    images = _draw(pipe, mode="augmented")
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    # The scheduler choice is part of the folder it saves.
    pipe.save_pretrained(tmp_path / "dpm")
    index = json.loads((tmp_path / "dpm" / "model_index.json").read_text())
    assert index["scheduler"][1] == "DPMSolverMultistepScheduler"
    assert type(AMPipeline.from_pretrained(tmp_path / "dpm").scheduler).__name__ == "DPMSolverMultistepScheduler"


def test_progress_bar_and_offload_as_diffusers_users_know_them(saved):
    import io
    import importlib.util

    pipe, _ = saved
    out = io.StringIO()
    pipe.set_progress_bar_config(file=out, disable=False)
    try:
        _draw(pipe, mode="structure_only")
    finally:
        pipe.set_progress_bar_config(disable=True)
    assert f"{STEPS}/{STEPS}" in out.getvalue()
    assert "->" in pipe.model_cpu_offload_seq
    if importlib.util.find_spec("accelerate") is None:
        with pytest.raises(ImportError, match="accelerate"):
            pipe.enable_model_cpu_offload()
    elif not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="accelerator"):
            pipe.enable_model_cpu_offload()


def test_stage1_and_adapter_from_a_folder(saved, stage1_ckpt, tmp_path):
    pipe, folder = saved
    stage1 = stage1_from_pipeline_folder(folder)
    assert stage1 is stage1_from_pipeline_folder(folder)  # cached per process
    assert stage1.path == str(folder) and len(stage1.sha256) == 64
    assert stage1.hparams["num_classes"] == CLASSES and stage1.hparams["ignore_index"] == 255
    assert stage1.hparams["guidance_channels"] == 16 and stage1.hparams["guidance_scale"] == 1.0
    assert stage1.hparams["backbone"] == {"preset": "pipeline", "path": str(folder)}
    assert stage1.hparams["source_sha256"] == load_stage1(stage1_ckpt).sha256
    assert stage1.heads == load_stage1(stage1_ckpt).heads
    reference = load_stage1(stage1_ckpt).model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in stage1.model.state_dict().items())
    adapter = adapter_from_pipeline_folder(folder)
    assert all(torch.equal(v, pipe.adapter.state_dict()[k]) for k, v in adapter.state_dict().items())
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(adapter.config) == public(pipe.adapter.config)

    bare = tmp_path / "bare"
    AMPipeline.from_stage1(load_stage1(stage1_ckpt)).save_pretrained(bare)
    assert adapter_from_pipeline_folder(bare) is None
    assert AMPipeline.from_pretrained(bare).label_space is None
    # Same weights, same digest; a changed weight file, another digest.
    assert stage1_from_pipeline_folder(bare).sha256 == stage1.sha256


def _broken(folder, tmp_path, change):
    copy = tmp_path / "broken"
    shutil.copytree(folder, copy)
    change(copy)
    return copy


def _one_line_error(path):
    with pytest.raises(PipelineFolderError) as info:
        AMPipeline.from_pretrained(path)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, CheckpointError)
    return message


def test_missing_component_is_one_line_naming_it(saved, tmp_path):
    _, folder = saved
    message = _one_line_error(_broken(folder, tmp_path, lambda f: shutil.rmtree(f / "structure_guidance")))
    assert "structure_guidance" in message and "model_index.json" in message


def test_missing_weights_are_one_line_naming_the_file(saved, tmp_path):
    _, folder = saved
    weights = Path("unet") / "diffusion_pytorch_model.safetensors"
    message = _one_line_error(_broken(folder, tmp_path, lambda f: (f / weights).unlink()))
    assert str(weights) in message


def test_foreign_configs_are_one_line_naming_the_file(saved, tmp_path):
    _, folder = saved

    def swap(f):
        shutil.copy(f / "unet" / "config.json", f / "structure_guidance" / "config.json")

    message = _one_line_error(_broken(folder, tmp_path, swap))
    assert str(Path("structure_guidance") / "config.json") in message and "UNet2DConditionModel" in message

    def stable_diffusion(f):
        index = json.loads((f / "model_index.json").read_text())
        index["_class_name"] = "StableDiffusionPipeline"
        (f / "model_index.json").write_text(json.dumps(index))

    shutil.rmtree(tmp_path / "broken")
    message = _one_line_error(_broken(folder, tmp_path, stable_diffusion))
    assert "model_index.json" in message and "StableDiffusionPipeline" in message


def test_weights_that_do_not_fit_their_config_are_one_line(saved, tmp_path):
    _, folder = saved

    def more_classes(f):
        config = json.loads((f / "structure_guidance" / "config.json").read_text())
        config["num_classes"] += 2
        (f / "structure_guidance" / "config.json").write_text(json.dumps(config))

    message = _one_line_error(_broken(folder, tmp_path, more_classes))
    assert "broken" in message


def test_not_a_folder_is_one_line(tmp_path):
    assert "model_index.json" in _one_line_error(tmp_path)
    with pytest.raises(PipelineFolderError, match="model_index.json"):
        stage1_from_pipeline_folder(tmp_path)


@pytest.fixture(scope="module")
def sd_stage1(tiny_sd15_dir, tmp_path_factory):
    from helpers.tiny_models import save_stage1_checkpoint

    return save_stage1_checkpoint(tmp_path_factory.mktemp("sd_stage1") / "stage1.ckpt", backbone="sd15",
                                  backbone_path=str(tiny_sd15_dir), backbone_options=None, prompt="a street")


def test_sd_shaped_folder_draws_the_same_bytes_and_is_self_sufficient(sd_stage1, tiny_sd15_dir, tmp_path):
    pipe = AMPipeline.from_checkpoints(sd_stage1, label_space=_label_space("a street"))
    pipe.adapter = _adapter(load_stage1(sd_stage1).heads)
    assert pipe.resolution == (16, 16) and pipe.backbone.vae is not None
    reference = {mode: _draw(pipe, mode=mode) for mode in ("adapter", "structure_only")}
    pipe.save_pretrained(tmp_path / "sd")
    index = json.loads((tmp_path / "sd" / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"] and index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert (tmp_path / "sd" / "text_encoder" / "model.safetensors").is_file()
    # The base model's folder is not needed any more.
    moved = tmp_path / "sd15_gone"
    shutil.move(str(tiny_sd15_dir), moved)
    try:
        loaded = AMPipeline.from_pretrained(tmp_path / "sd")
        for mode, images in reference.items():
            assert torch.equal(_draw(loaded, mode=mode), images), mode
        assert loaded.label_space.prompt == "a street" and loaded.prompt_embeddings.config.prompt == "a street"
    finally:
        shutil.move(str(moved), tiny_sd15_dir)


def test_guidance_and_adapter_are_diffusers_models_with_their_old_config_and_keys(tmp_path):
    from diffusers import ModelMixin

    from amlight.modules.attention_modes import BLOCK_GROUPS
    from amlight.modules.structure_guidance import StructureGuidance

    adapter = _adapter(heads=2)
    # ``config`` is still exactly the constructor's arguments: stage-2 checkpoints and adapter files
    # store it and rebuild with AMAdapter(**config).
    assert dict(adapter.config) == {"heads": 2, "channels": 4, "num_layers": 2, "kernel_size": 3,
                                    "max_resolution": 32, "groups": list(BLOCK_GROUPS)}
    guidance = StructureGuidance(CLASSES, 16, channels=8, scale=0.5)
    for module in (adapter, guidance):
        assert isinstance(module, ModelMixin)
        module.save_pretrained(tmp_path / type(module).__name__)
        loaded = type(module).from_pretrained(tmp_path / type(module).__name__)
        assert list(loaded.state_dict()) == list(module.state_dict())
        assert all(torch.equal(v, module.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert list(guidance.state_dict())[:3] == ["time_embedding.linear_1.weight", "time_embedding.linear_1.bias",
                                               "time_embedding.linear_2.weight"]
    assert all(k.startswith("phi.") for k in adapter.state_dict())
