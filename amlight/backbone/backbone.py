"""The frozen backbone: latent codec (VAE or pixel space), the fixed prompt, the noise schedule.

A :class:`Backbone` is what every stage and pipeline needs besides the trainable parts. Its frozen
modules are *not* nn.Module children of a LightningModule, so they are never written into a
checkpoint and never wrapped by DDP; the registry hands the same instance to everyone in a process.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel


@dataclass
class Backbone:
    preset: str
    # Builds a fresh, trainable UNet with the backbone's initial weights (seeded init or pretrained).
    unet_factory: Callable[[], UNet2DConditionModel]
    scheduler_config: dict[str, Any]
    prompt_embeds: torch.Tensor  # (1, tokens, dim): the fixed prompt, encoded once
    negative_prompt_embeds: torch.Tensor  # (1, tokens, dim): the empty prompt (inversion, CFG)
    vae: AutoencoderKL | None = None  # None: pixel-space diffusion, latents are the images
    scaling_factor: float = 1.0
    spec: dict[str, Any] = field(default_factory=dict)  # how to rebuild it: goes into checkpoints

    @property
    def latent_channels(self) -> int:
        return 3 if self.vae is None else int(self.vae.config.latent_channels)

    @property
    def latent_downsample(self) -> int:
        """Image pixels per latent pixel along each side."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def training_target(self, scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet learns to predict, by the schedule's prediction type."""
        kind = scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return latents
        if kind == "v_prediction":
            return scheduler.get_velocity(latents, noise, timesteps)
        raise ValueError(f"unsupported prediction type {kind!r}")

    def new_unet(self) -> UNet2DConditionModel:
        return self.unet_factory()

    def train_scheduler(self) -> DDPMScheduler:
        return DDPMScheduler.from_config(self.scheduler_config)

    def sample_scheduler(self) -> DDIMScheduler:
        return DDIMScheduler.from_config(self.scheduler_config)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Backbone":
        """Move the frozen parts in place (they are shared, so this moves them for everyone)."""
        if self.vae is not None:
            self.vae.to(device=device, dtype=dtype)
        self.prompt_embeds = self.prompt_embeds.to(device=device, dtype=dtype or self.prompt_embeds.dtype)
        self.negative_prompt_embeds = self.negative_prompt_embeds.to(
            device=device, dtype=dtype or self.negative_prompt_embeds.dtype
        )
        return self

    @property
    def device(self) -> torch.device:
        return self.prompt_embeds.device

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1], (B, 3, H, W) -> latents (B, C, H/f, W/f)."""
        if self.vae is None:
            return images
        # The VAE may live on another device than the UNet (offloaded to the CPU to save GPU memory).
        posterior = self.vae.encode(images.to(self.vae.device, self.vae.dtype)).latent_dist
        return (posterior.sample(generator) * self.scaling_factor).to(images.device, images.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1]."""
        if self.vae is None:
            return latents.clamp(-1, 1)
        images = self.vae.decode(latents.to(self.vae.device, self.vae.dtype) / self.scaling_factor).sample
        return images.to(latents.device, latents.dtype).clamp(-1, 1)

    def prompt_batch(self, batch_size: int, negative: bool = False) -> torch.Tensor:
        embeds = self.negative_prompt_embeds if negative else self.prompt_embeds
        return embeds.expand(batch_size, -1, -1)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.requires_grad_(False)
    module.eval()
    return module


def backbone_from_parts(unet: UNet2DConditionModel, scheduler_config: dict[str, Any], prompt_embeds: torch.Tensor,
                        negative_prompt_embeds: torch.Tensor, vae: AutoencoderKL | None = None,
                        spec: dict[str, Any] | None = None) -> Backbone:
    """A backbone around parts already loaded (a pipeline folder's), not built from a preset: its
    ``new_unet`` is a fresh copy of ``unet`` (stock attention processors, the same weights)."""

    def unet_factory() -> UNet2DConditionModel:
        fresh = UNet2DConditionModel.from_config(unet.config)
        fresh.load_state_dict(unet.state_dict())
        return fresh.to(unet.dtype).train()

    return Backbone(
        preset=str((spec or {}).get("preset", "pipeline")),
        unet_factory=unet_factory,
        scheduler_config=dict(scheduler_config),
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
        vae=vae,
        scaling_factor=1.0 if vae is None else float(vae.config.scaling_factor),
        spec=dict(spec or {}),
    )


def own_memory(module):
    """Give every weight of ``module`` its own freshly allocated memory, in place; returns it.

    diffusers loads safetensors memory-mapped, where a tensor starts wherever the file puts it (not
    64-byte aligned), and CPU kernels then take other code paths that round differently (1e-6):
    copied into fresh memory, a folder's weights compute exactly what the checkpoint's do.
    """
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            tensor.data = tensor.data.clone()
    return module
