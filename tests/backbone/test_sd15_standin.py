"""The SD 1.5 stand-in: SD 1.5's exact architecture, an offline tokenizer, loaded by the sd15 preset."""
import json
import subprocess
import sys

import pytest
import torch

from amlight.backbone.sd15_standin import (
    BOS,
    EOS,
    MARKER,
    SD15_TEXT_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    StandinError,
    is_complete,
    tokenizer_vocab,
    write_sd15_standin,
    write_tokenizer,
)
from amlight.benchmarks.gpu_check import TINY_CONFIGS


def test_configs_have_sd15_parameter_counts():
    # Published sizes: UNet 859.52 M, VAE 83.65 M, CLIP ViT-L/14 text tower 123.06 M (built on the
    # meta device: shapes only, no memory).
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(unet) == 859_520_964
    assert count(vae) == 83_653_863
    assert count(text) == 123_060_480
    heads = {m.heads for n, m in unet.named_modules() if n.endswith("attn1")}
    assert heads == {8}


def test_tokenizer_vocab_fills_the_text_encoder_table_and_ends_with_the_special_tokens():
    vocab, merges = tokenizer_vocab()
    assert len(vocab) == SD15_TEXT_CONFIG["vocab_size"] == 49408
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert vocab[EOS] == len(vocab) - 1 and vocab[BOS] == len(vocab) - 2
    seen = set(list(vocab)[:512])  # the byte tokens come first; each merge only joins tokens made before it
    for merge in merges[:5000]:
        left, right = merge.split(" ")
        assert left in seen and right in seen
        seen.add(left + right)


def test_tokenizer_works_offline_and_round_trips(tmp_path):
    from transformers import CLIPTokenizer

    write_tokenizer(tmp_path / "tokenizer")
    tok = CLIPTokenizer.from_pretrained(tmp_path / "tokenizer", local_files_only=True)
    assert tok.model_max_length == 77
    ids = tok(["a photo of a driving scene"], padding="max_length", max_length=77, truncation=True).input_ids[0]
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert max(ids) < SD15_TEXT_CONFIG["vocab_size"]
    assert tok.decode(ids, skip_special_tokens=True).strip() == "a photo of a driving scene"


@pytest.fixture(scope="module")
def tiny_standin(tmp_path_factory):
    return write_sd15_standin(tmp_path_factory.mktemp("standin") / "sd15", configs=TINY_CONFIGS)


def test_standin_folder_is_loaded_by_the_sd15_preset(tiny_standin):
    from amlight.backbone.presets import build_sd15

    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_standin / part).is_dir()
    index = json.loads((tiny_standin / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert (tiny_standin / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    backbone = build_sd15(str(tiny_standin), prompt="a photo of a driving scene")
    assert backbone.prompt_embeds.shape == (1, 77, 32)
    assert not torch.equal(backbone.prompt_embeds, backbone.negative_prompt_embeds)
    # SD 1.5's scheduler file lists clip_sample false, which DDPM (default True) must pick up.
    assert backbone.scheduler_config["clip_sample"] is False
    assert backbone.scheduler_config["beta_schedule"] == "scaled_linear"
    assert backbone.latent_downsample == 2 and backbone.scaling_factor == pytest.approx(0.18215)
    unet = backbone.new_unet()
    assert unet.training  # a fresh trainable UNet, as the tiny preset's (the rehearsal found it in eval mode)
    out = unet(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=backbone.prompt_embeds).sample
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all() and out.std() > 0


def test_complete_standin_is_skipped_and_incomplete_one_rewritten(tiny_standin):
    weights = tiny_standin / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    messages = []
    write_sd15_standin(tiny_standin, configs=TINY_CONFIGS, progress=messages.append)
    assert weights.stat().st_mtime_ns == before and "nothing to do" in messages[-1]
    assert is_complete(tiny_standin, configs=TINY_CONFIGS)
    assert not is_complete(tiny_standin)  # SD 1.5's configs are not these
    assert not is_complete(tiny_standin, seed=1, configs=TINY_CONFIGS)
    (tiny_standin / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    assert not is_complete(tiny_standin, configs=TINY_CONFIGS)
    write_sd15_standin(tiny_standin, configs=TINY_CONFIGS)
    assert is_complete(tiny_standin, configs=TINY_CONFIGS)


def test_refuses_to_overwrite_a_folder_that_is_not_a_standin(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(StandinError, match="not an amlight SD 1.5 stand-in"):
        write_sd15_standin(tmp_path, configs=TINY_CONFIGS)
    assert (tmp_path / "mine.txt").read_text() == "keep me" and not (tmp_path / MARKER).exists()


def test_command_help_is_light_and_errors_are_one_line(tmp_path, capsys):
    from amlight.cli.main import main

    code = ("import sys; from amlight.cli.main import main; "
            "main(['backbone', 'make-sd15-standin', '--help']); main(['rehearse', 'sd15', '--help']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--out DIR" in out and out.strip().endswith("NO TORCH")
    (tmp_path / "x.txt").write_text("x")
    assert main(["backbone", "make-sd15-standin", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "is not an amlight SD 1.5 stand-in" in err and "Traceback" not in err


def test_controlnet_config_is_the_sd15_segmentation_controlnets_and_fits_the_unet():
    # lllyasviel/control_v11p_sd15_seg: 361.28 M parameters, 3-channel colour maps shrunk 8x (as the VAE does)
    from diffusers import ControlNetModel

    from amlight.backbone.sd15_standin import controlnet_config
    from amlight.cli.commands.assemble_parts import check_controlnet_fits

    config = controlnet_config()
    assert config["conditioning_channels"] == 3 and config["conditioning_embedding_out_channels"] == [16, 32, 96, 256]
    with torch.device("meta"):
        net = ControlNetModel(**config)
    assert sum(p.numel() for p in net.parameters()) == 361_279_120
    check_controlnet_fits(config, SD15_UNET_CONFIG, "cn", "unet", SD15_VAE_CONFIG, "vae")


def test_standin_with_controlnet_writes_a_random_controlnet_once(tiny_standin):
    from diffusers import ControlNetModel

    from amlight.backbone.sd15_standin import CONTROLNET_DIR, controlnet_is_complete

    assert not controlnet_is_complete(tiny_standin, configs=TINY_CONFIGS)
    write_sd15_standin(tiny_standin, configs=TINY_CONFIGS, controlnet=True)
    assert controlnet_is_complete(tiny_standin, configs=TINY_CONFIGS) and is_complete(tiny_standin, configs=TINY_CONFIGS)
    weights = tiny_standin / CONTROLNET_DIR / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    write_sd15_standin(tiny_standin, configs=TINY_CONFIGS, controlnet=True)
    assert weights.stat().st_mtime_ns == before
    net = ControlNetModel.from_pretrained(tiny_standin / CONTROLNET_DIR)
    assert net.config.conditioning_channels == 3 and list(net.config.block_out_channels) == [32, 64]
    # random, not from_unet's zero convolutions: the residuals steer the UNet
    down, mid = net(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=torch.randn(1, 77, 32),
                    controlnet_cond=torch.rand(1, 3, 16, 16), return_dict=False)
    assert mid.abs().mean() > 0 and all(torch.isfinite(d).all() for d in down)


def test_command_has_the_controlnet_flag(capsys):
    from amlight.cli.main import main

    assert main(["backbone", "make-sd15-standin", "--help"]) == 0
    assert "--controlnet" in capsys.readouterr().out
