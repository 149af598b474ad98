"""Backbone presets: ``tiny`` (built from config, offline) and ``sd15`` (Stable Diffusion 1.5 weights)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from amlight.backbone.backbone import Backbone, freeze, own_memory

# The tiny preset is sized for 2 CPU cores: pixel-space diffusion (no VAE: a random-init VAE would
# not reconstruct anything, and there is no pretrained tiny one offline), 32x32 images, three UNet
# levels with self-attention at 16x16 and 8x8, and a constant random "prompt" embedding instead of a
# text encoder (the method uses one fixed prompt anyway). The stock diffusers UNet class is used.
TINY_DEFAULTS: dict[str, Any] = {
    "sample_size": 32,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "attention_heads": 4,
    "cross_attention_dim": 32,
    "prompt_tokens": 4,
    "norm_num_groups": 8,
    # x0 ("sample") prediction: a from-scratch model that has trained for minutes predicts blurry but
    # clean images (the conditional mean given layout and exemplar); epsilon prediction at the same
    # budget leaves high-frequency noise in every sample. "epsilon" and "v_prediction" also work.
    "prediction_type": "sample",
}

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SD15_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class BackboneError(ValueError):
    pass


def tiny_unet_config(options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(TINY_DEFAULTS)
    if unknown:
        raise BackboneError(
            f"unknown tiny backbone option(s) {sorted(unknown)}; known: {sorted(TINY_DEFAULTS)}"
        )
    o = {**TINY_DEFAULTS, **options}
    o.pop("prediction_type")
    levels = len(o["block_out_channels"])
    if levels < 2:
        raise BackboneError("tiny backbone needs at least 2 levels in block_out_channels")
    return dict(
        sample_size=o["sample_size"],
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(o["block_out_channels"]),
        # The first level has no attention: at full resolution it is the costliest and least useful.
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        layers_per_block=o["layers_per_block"],
        cross_attention_dim=o["cross_attention_dim"],
        attention_head_dim=o["attention_heads"],  # diffusers' name; it is the number of heads here
        norm_num_groups=o["norm_num_groups"],
    )


def build_tiny(seed: int = 0, options: dict[str, Any] | None = None) -> Backbone:
    options = dict(options or {})
    unet_config = tiny_unet_config(options)
    merged = {**TINY_DEFAULTS, **options}

    def unet_factory() -> UNet2DConditionModel:
        # Seeded so that a stage-1 run and a later reload agree on every weight not trained.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return UNet2DConditionModel(**unet_config)

    g = torch.Generator().manual_seed(seed + 1)
    prompt = torch.randn(1, merged["prompt_tokens"], merged["cross_attention_dim"], generator=g)
    scheduler_config = dict(DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=merged["prediction_type"],
        clip_sample=False,
    ).config)
    return Backbone(
        preset="tiny",
        unet_factory=unet_factory,
        scheduler_config=scheduler_config,
        prompt_embeds=prompt,
        negative_prompt_embeds=prompt,  # no text conditioning in the tiny preset: one constant
        vae=None,
        spec={"preset": "tiny", "seed": seed, "options": options},
    )


def resolve_pretrained(path: str) -> tuple[str, bool]:
    """(where to load from, whether it is local). Only a hub id that the user wrote reaches the network."""
    p = Path(path).expanduser()
    if p.exists():
        missing = [s for s in SD15_SUBFOLDERS if not (p / s).is_dir()]
        if missing:
            raise BackboneError(
                f"sd15 backbone folder {p} lacks the subfolder(s) {missing}; it must hold "
                f"{', '.join(SD15_SUBFOLDERS)} as written by a diffusers pipeline's save_pretrained"
            )
        return str(p), True
    if HUB_ID.match(path) and not path.startswith((".", "/", "~")):
        return path, False
    raise BackboneError(
        f"sd15 backbone path {path!r} does not exist. Give a local folder with "
        f"{', '.join(SD15_SUBFOLDERS)} (e.g. a downloaded stable-diffusion-v1-5) or a hub id such as "
        "'stable-diffusion-v1-5/stable-diffusion-v1-5' (downloads, needs network)."
    )


def build_sd15(path: str | None, prompt: str = "", dtype: torch.dtype = torch.float32) -> Backbone:
    if not path:
        raise BackboneError("the sd15 backbone needs a path: set backbone_path to a local folder or hub id")
    from transformers import CLIPTextModel, CLIPTokenizer

    where, local = resolve_pretrained(path)
    kw = {"local_files_only": local}
    vae = freeze(AutoencoderKL.from_pretrained(where, subfolder="vae", torch_dtype=dtype, **kw))
    tokenizer = CLIPTokenizer.from_pretrained(where, subfolder="tokenizer", **kw)
    text_encoder = freeze(CLIPTextModel.from_pretrained(where, subfolder="text_encoder", **kw))
    scheduler_config = dict(DDPMScheduler.from_pretrained(where, subfolder="scheduler", **kw).config)

    # A tokenizer saved without model_max_length reports a huge one; the encoder's positions bound it.
    max_length = min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings)

    @torch.no_grad()
    def encode(text: str) -> torch.Tensor:
        ids = tokenizer(
            [text], padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return text_encoder(ids)[0].to(dtype)

    # The prompt is fixed for the whole run, so the text encoder is used twice and then dropped.
    prompt_embeds, negative = encode(prompt), encode("")
    del text_encoder

    def unet_factory() -> UNet2DConditionModel:
        # from_pretrained returns eval mode, and Lightning keeps each module's mode: without .train()
        # stage 1 would train the SD UNet in eval mode (dropout off), unlike a config-built one.
        return UNet2DConditionModel.from_pretrained(where, subfolder="unet", **kw).train()

    return Backbone(
        preset="sd15",
        unet_factory=unet_factory,
        scheduler_config=scheduler_config,
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative,
        vae=vae,
        scaling_factor=float(vae.config.scaling_factor),
        spec={"preset": "sd15", "path": path, "prompt": prompt},
    )


def backbone_from_pipeline_folder(path) -> Backbone:
    """The backbone an exported pipeline folder holds (its ``vae``, ``scheduler`` and
    ``prompt_embeddings`` subfolders; the ``unet`` subfolder is what ``new_unet`` copies), read
    without amlight's pipeline class: a pipeline folder is to this floor what an SD 1.5 folder is."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(path)
    try:
        scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        prompt = json.loads((path / "prompt_embeddings" / "config.json").read_text()).get("prompt", "")
        embeds = load_file(str(path / "prompt_embeddings" / "diffusion_pytorch_model.safetensors"))
        vae = own_memory(AutoencoderKL.from_pretrained(path / "vae", low_cpu_mem_usage=False)) \
            if (path / "vae").is_dir() else None
    except (OSError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BackboneError(f"{path}: the pipeline folder's backbone cannot be read ({first}); "
                            "re-export it with `python -m amlight export`") from None
    scheduler_config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}

    def unet_factory() -> UNet2DConditionModel:
        return own_memory(UNet2DConditionModel.from_pretrained(path / "unet", low_cpu_mem_usage=False)).train()

    return Backbone(
        preset="pipeline",
        unet_factory=unet_factory,
        scheduler_config=scheduler_config,
        prompt_embeds=embeds["prompt_embeds"],
        negative_prompt_embeds=embeds["negative_prompt_embeds"],
        vae=freeze(vae) if vae is not None else None,
        scaling_factor=1.0 if vae is None else float(vae.config.scaling_factor),
        spec={"preset": "pipeline", "path": str(path), "prompt": prompt},
    )
