"""Tiny random-weight models and what tests build from them: a stage-1 checkpoint written through
Lightning as `fit` writes it, a stage-2 checkpoint, an SD-1.5-shaped folder, a ControlNet pipeline,
and a random training batch. Shared by tests of every subpackage (import: ``from helpers.tiny_models
import ...``; tests/ is on sys.path through its conftest.py)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from amlight.pipeline.synthesis import AMPipeline

TINY_OPTIONS = {"sample_size": 16, "block_out_channels": [16, 32], "attention_heads": 2}


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


def save_stage2_checkpoint(stage1: Path, path: Path) -> Path:
    import lightning as L

    from amlight.stages import AdapterStage

    stage = AdapterStage(str(stage1))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(stage)
    trainer.save_checkpoint(path)
    return path


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


CONTROLNET_COLORS = [[70, 130, 180], [128, 64, 128], [0, 0, 142], [107, 142, 35], [70, 70, 70]]


def controlnet_pipeline(colors=CONTROLNET_COLORS, names=None, adapter: bool = False, seed: int = 0) -> AMPipeline:
    """A tiny pixel-space pipeline whose structure guidance is a ControlNet, built the way
    ``AMPipeline.from_model`` wraps a stage-1 model. The ControlNet's zero convolutions get random
    weights (fresh ones output zero, and no scale would change anything)."""
    from amlight.backbone import get_backbone
    from amlight.modules.adapter import AMAdapter
    from amlight.modules.exemplar_unet import build_exemplar_unet
    from amlight.pipeline.label_space import PipelineLabelSpace
    from amlight.pipeline.synthesis import AMPipeline

    backbone = get_backbone("tiny", options=TINY_OPTIONS)
    torch.manual_seed(seed)
    model = build_exemplar_unet(backbone, len(colors), guidance="controlnet", class_colors=colors).eval()
    net = model.guidance.controlnet
    with torch.no_grad():
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            conv.weight.normal_(0, 0.3)
    space = None
    if names is not None:
        space = PipelineLabelSpace(list(names), [list(c) for c in colors], name="toy")
    am = None
    if adapter:
        am = AMAdapter(heads=2, channels=4, num_layers=2, max_resolution=8)
        for p in am.parameters():  # a fresh adapter is the identity: make it act
            p.data.normal_(0, 0.2)
        am = am.eval().requires_grad_(False)
    return AMPipeline.from_model(model, backbone, adapter=am, label_space=space)


def save_controlnet_folder(folder, colors=CONTROLNET_COLORS, names=("sky", "road", "car", "tree", "building"), adapter=True):
    controlnet_pipeline(colors, names, adapter=adapter).save_pretrained(folder)
    return folder


def save_adapter(stage1_path, out):
    """An exported adapter with non-zero weights (a fresh one is the identity)."""
    import lightning as L

    from amlight.stages import AdapterStage
    from amlight.checkpoints.adapter_files import export_adapter

    torch.manual_seed(0)
    stage = AdapterStage(str(stage1_path))
    with torch.no_grad():
        for p in stage.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(stage)
    ckpt = out.with_suffix(".ckpt")
    trainer.save_checkpoint(ckpt)
    return export_adapter(ckpt, out)
