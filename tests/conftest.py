import os
import sys

import pytest
import torch

# Two cores on the reference machine: keep torch from oversubscribing them in tests.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _argv_without_pytest_flags(monkeypatch):
    """Commands under test get their argv explicitly; pytest's own flags in sys.argv would make
    LightningCLI warn that it was given both."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])


@pytest.fixture
def tiny_backbone():
    from amlight.backbone import get_backbone

    return get_backbone("tiny", options={"sample_size": 16, "block_out_channels": [16, 32], "attention_heads": 2})


@pytest.fixture
def tiny_model(tiny_backbone):
    """An ExemplarUNet on a 16x16 pixel-space UNet with 5 classes (random weights)."""
    from amlight.modules import ExemplarUNet, StructureGuidance

    torch.manual_seed(0)
    unet = tiny_backbone.new_unet()
    guidance = StructureGuidance(5, unet.config.block_out_channels[0], channels=16)
    return ExemplarUNet(unet, guidance).eval()


def save_tiny_sd15(root):
    """A Stable-Diffusion-1.5-shaped folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/) with tiny
    random weights, written by the same save_pretrained calls that produce real ones."""
    import json

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    ).save_pretrained(root / "vae")
    CLIPTextModel(CLIPTextConfig(
        vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )).save_pretrained(root / "text_encoder")
    tok_dir = root / "tokenizer"
    tok_dir.mkdir(parents=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in letters:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt")).save_pretrained(tok_dir)
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000).save_pretrained(
        root / "scheduler"
    )
    return root


@pytest.fixture(scope="session")
def tiny_sd15_dir(tmp_path_factory):
    return save_tiny_sd15(tmp_path_factory.mktemp("tiny_sd15"))


TINY_OPTIONS = {"sample_size": 16, "block_out_channels": [16, 32], "attention_heads": 2}


def save_stage1_checkpoint(path, num_classes=5, seed=0, **kw):
    """A tiny-preset GenerationStage checkpoint written through Lightning, as `fit` writes them."""
    import lightning as L

    from amlight.stages import GenerationStage

    torch.manual_seed(seed)
    stage = GenerationStage(num_classes=num_classes, backbone_options=kw.pop("backbone_options", TINY_OPTIONS),
                            guidance_channels=16, **kw)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(stage)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def stage1_ckpt(tmp_path_factory):
    return save_stage1_checkpoint(tmp_path_factory.mktemp("stage1") / "stage1.ckpt")


def make_batch(n=2, size=16, classes=5, seed=0):
    """A random training batch: target and exemplar images in [-1, 1], the exemplar's labels mirrored."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n, size, size), generator=g)
    return {
        "image": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
        "labels": labels,
        "exemplar_image": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
        "exemplar_labels": labels.flip(-1),
    }


@pytest.fixture
def classes_yaml_error(tmp_path):
    """``error(text)``: write ``text`` as a folder dataset's classes.yaml and return the one error that
    ``load_classes_yaml`` raises for it, after checking that the message names the file."""
    from amlight.data.datasets.folder import load_classes_yaml
    from amlight.data.io import DataFileError

    def error(text: str) -> str:
        path = tmp_path / "classes.yaml"
        path.write_text(text)
        with pytest.raises(DataFileError) as info:
            load_classes_yaml(path)
        message = str(info.value)
        assert str(path) in message, message
        return message

    return error


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (restored after): tiny models gain nothing from a second one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
