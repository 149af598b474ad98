"""`python -m amlight assemble`: a pipeline folder from public parts (an SD 1.5 base + a segmentation
ControlNet + a dataset's classes), on tiny random-weight stand-ins of both, and its bad-input errors."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from amlight.backbone.sd15_standin import CONTROLNET_DIR, write_sd15_standin
from amlight.benchmarks.gpu_check import TINY_CONFIGS
from amlight.cli.main import main
from amlight.data.controlnet_colors import controlnet_color_map

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny SD-like base with its stand-in ControlNet (random weights: residuals are not zero), a
    cityscapes-layout fixture at 32x64, and the folder assembled from them through the CLI."""
    from amlight.data.layout_fixtures import write_layout_fixture

    root = tmp_path_factory.mktemp("assemble")
    base = write_sd15_standin(root / "base", configs=TINY_CONFIGS, controlnet=True)
    pairs = write_layout_fixture("cityscapes", root / "fixture", num_train=2, num_val_groups=1, size=(32, 64))
    out = root / "folder"
    assert main(["assemble", "--base", str(base), "--controlnet", str(base / CONTROLNET_DIR), "--data", "cityscapes",
                 "--out", str(out), "--conditioning-scale", "0.8"]) == 0
    return {"root": root, "base": base, "controlnet": base / CONTROLNET_DIR, "folder": out, "pairs": pairs}


def _draw(pipe, target, exemplar, exemplar_labels, mode):
    out = pipe(target, exemplar, exemplar_labels, mode=mode, num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0))
    return np.asarray(out.images[0], dtype=np.float64)


def test_assembled_folder_draws_in_three_modes_with_the_controlnet_steering(parts):
    from amlight.modules.controlnet_guidance import ControlNetGuidance
    from amlight.pipeline.synthesis import AMPipeline

    pipe = AMPipeline.from_pretrained(parts["folder"])
    assert isinstance(pipe.structure_guidance, ControlNetGuidance) and pipe.am_adapter is None
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 19, (32, 32))
    other = np.roll(labels, 11, axis=1)
    exemplar = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    images = {m: _draw(pipe, labels, exemplar, labels, m) for m in ("structure_only", "augmented", "hard_mask")}
    for mode, image in images.items():
        assert np.isfinite(image).all() and image.std() > 0, mode
    # the exemplar's attention changes the image; the ControlNet's reading of the target labels does too
    assert np.abs(images["augmented"] - images["structure_only"]).mean() > 1e-3
    assert np.abs(_draw(pipe, other, exemplar, labels, "structure_only") - images["structure_only"]).mean() > 1e-3


def test_folder_holds_the_colour_map_the_prompt_and_a_model_card(parts):
    folder = parts["folder"]
    config = json.loads((folder / "structure_guidance" / "config.json").read_text())
    table = controlnet_color_map("cityscapes")
    assert config["class_colors"] == table[:19].tolist() and config["num_classes"] == 19
    assert config["conditioning_scale"] == pytest.approx(0.8)
    assert config["controlnet_config"]["conditioning_channels"] == 3
    index = json.loads((folder / "model_index.json").read_text())
    assert index["structure_guidance"] == ["amlight.modules.controlnet_guidance", "ControlNetGuidance"]
    assert json.loads((folder / "label_space" / "config.json").read_text())["prompt"] == "a photo of a driving scene"
    card = (folder / "README.md").read_text()
    assert str(parts["base"]) in card and str(parts["controlnet"]) in card and "own licence" in card
    assert not list(folder.parent.glob(".folder.assemble-*"))  # the work folder was moved into place


def test_generate_cli_draws_from_the_folder_and_stage2_trains_an_adapter_on_it(parts, tmp_path):
    from amlight.benchmarks.rehearsal import Settings, class_index_pairs, fit_overrides
    from amlight.checkpoints.files import read_checkpoint

    out = tmp_path / "images"
    # the folder reads class indices (Cityscapes' raw labelIds are decoded by file name, from the dataset)
    pairs = class_index_pairs("cityscapes", parts["pairs"].parent.parent, parts["pairs"], tmp_path / "labels")
    assert main(["generate", "--pipeline", str(parts["folder"]), "--pairs", str(pairs), "--mode", "augmented",
                 "--steps", "1", "--size", "32", "32", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    assert list(out.glob("*__*.png"))
    s = Settings(out=tmp_path / "run", fixture=parts["pairs"].parent.parent, resolution=32, sample_steps=1)
    assert main(["fit", "--config", str(REPO / "configs/sd15/cityscapes/stage2_controlnet.yaml"),
                 *fit_overrides(s, "stage2"), "--model.init_args.stage1_checkpoint", str(parts["folder"])]) == 0
    ckpt = read_checkpoint(tmp_path / "run" / "stage2" / "checkpoints" / "last.ckpt", expect_stage="adapter")
    assert ckpt["global_step"] == 1 and all(k.startswith("adapter.") for k in ckpt["state_dict"])


def test_dtype_casts_the_files(parts, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "fp16"
    assert main(["assemble", "--base", str(parts["base"]), "--controlnet", str(parts["controlnet"]), "--data",
                 "cityscapes", "--out", str(out), "--dtype", "float16"]) == 0
    with safe_open(str(out / "structure_guidance" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}


def _edited_controlnet(parts, tmp_path, **changes):
    folder = tmp_path / "cn"
    shutil.copytree(parts["controlnet"], folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("amlight assemble: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("key, value, words", [
    ("conditioning_channels", 1, ["reads 1-channel images", "3-channel colour maps"]),
    ("cross_attention_dim", 768, ["cross_attention_dim 768", "base UNet's 32"]),
    ("block_out_channels", [32, 32], ["block_out_channels [32, 32]", "base UNet's [32, 64]"]),
    ("in_channels", 3, ["in_channels 3", "base UNet's 4"]),
    ("down_block_types", ["DownBlock2D", "DownBlock2D"], ["down_block_types"]),
    ("conditioning_embedding_out_channels", [16, 32, 96, 256], ["shrink the conditioning image 8x", "2x smaller"]),
])
def test_a_controlnet_that_does_not_fit_the_base_is_one_line_naming_both_files(parts, tmp_path, capsys, key, value,
                                                                                words):
    cn = _edited_controlnet(parts, tmp_path, **{key: value})
    err = _error(capsys, ["assemble", "--base", str(parts["base"]), "--controlnet", str(cn), "--data", "cityscapes",
                          "--out", str(tmp_path / "out")])
    assert str(cn / "config.json") in err and all(w in err for w in words), err
    if key != "conditioning_channels":
        assert str(parts["base"] / ("vae" if "embedding" in key else "unet") / "config.json") in err
    assert not (tmp_path / "out").exists()


def test_bad_folders_and_data_are_one_line_naming_the_file(parts, tmp_path, capsys):
    argv = lambda cn, data="cityscapes", out=tmp_path / "out": [  # noqa: E731
        "assemble", "--base", str(parts["base"]), "--controlnet", str(cn), "--data", data, "--out", str(out)]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty / "config.json") in _error(capsys, argv(empty))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(parts["controlnet"] / "config.json", no_weights)
    assert "no weights" in _error(capsys, argv(no_weights))
    assert "does not exist" in _error(capsys, argv(tmp_path / "nowhere"))
    not_sd = tmp_path / "not_sd"
    (not_sd / "unet").mkdir(parents=True)
    err = _error(capsys, ["assemble", "--base", str(not_sd), "--controlnet", str(parts["controlnet"]), "--data",
                          "cityscapes", "--out", str(tmp_path / "out")])
    assert str(not_sd) in err and "lacks the subfolder" in err
    # a folder dataset whose controlnet_colors leave a class out
    data = tmp_path / "data"
    data.mkdir()
    (data / "classes.yaml").write_text("names: [sky, tree, robot]\ncontrolnet_colors:\n  sky: sky\n  tree: tree\n")
    err = _error(capsys, argv(parts["controlnet"], str(data)))
    assert str(data / "classes.yaml") in err and "robot" in err
    # an existing folder without --overwrite is refused; with it, replaced
    err = _error(capsys, argv(parts["controlnet"], out=parts["folder"]))
    assert "--overwrite" in err


def test_a_folder_dataset_with_its_own_colours(parts, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "classes.yaml").write_text("names: [sky, tree]\ncolors: [[1, 2, 3], [4, 5, 6]]\n"
                                       "controlnet_colors:\n  sky: sky\n  tree: [9, 8, 7]\n")
    out = tmp_path / "out"
    assert main(["assemble", "--base", str(parts["base"]), "--controlnet", str(parts["controlnet"]), "--data",
                 str(data), "--out", str(out)]) == 0
    colors = json.loads((out / "structure_guidance" / "config.json").read_text())["class_colors"]
    assert colors == [controlnet_color_map("ade20k")[list(_ade_names()).index("sky")].tolist(), [9, 8, 7]]


def _ade_names():
    from amlight.data.datasets import ade20k

    return ade20k.CLASS_NAMES


def test_help_loads_no_torch():
    code = ("import sys; from amlight.cli.main import main; main(['assemble', '--help']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--controlnet CN_DIR_OR_ID" in out and out.strip().endswith("NO TORCH")


@pytest.mark.parametrize("dataset", ["cityscapes", "bdd100k"])
def test_shipped_stage2_controlnet_configs_parse_and_point_at_the_assembled_folder(dataset, capsys):
    config = REPO / "configs" / "sd15" / dataset / "stage2_controlnet.yaml"
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(config), "--print_config"])
    assert info.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["class_path"] == "amlight.stages.AdapterStage"
    assert resolved["model"]["init_args"]["stage1_checkpoint"] == f"models/sd15-{dataset}-controlnet"
    assert resolved["data"]["init_args"]["dataset"] == dataset
    text = config.read_text()
    assert "amlight assemble" in text and "stage2_controlnet.yaml" in text and "amlight generate --pipeline" in text
