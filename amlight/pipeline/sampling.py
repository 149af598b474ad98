"""A plain DDIM sampler for validation grids and quick looks (below both the stages and the pipeline).

The exemplar branch reads a bank computed from the exemplar latent noised to each step's timestep
with one fixed noise draw. The full inference pipeline (DDIM inversion of the exemplar, exemplar
caches, batched CFG) builds on the same ExemplarUNet calls.
"""
from __future__ import annotations

import torch

from amlight.backbone import Backbone
from amlight.modules.attention_modes import BLOCK_GROUPS
from amlight.modules.exemplar_unet import ExemplarUNet


@torch.no_grad()
def ddim_sample(
    model: ExemplarUNet,
    backbone: Backbone,
    target_labels: torch.Tensor,
    exemplar_images: torch.Tensor | None = None,
    exemplar_labels: torch.Tensor | None = None,
    attention: str = "augmented",
    steps: int = 25,
    guidance_scale: float = 1.0,
    groups=BLOCK_GROUPS,
    seed: int = 0,
    adapter=None,
) -> torch.Tensor:
    """Images in [-1, 1] (B, 3, H, W) drawing ``target_labels`` (B, H, W) in the exemplars' appearance.

    ``guidance_scale`` > 1: classifier-free guidance where the unconditional prediction uses plain
    self-attention (no exemplar) and the conditional one reads the exemplar.
    """
    device = target_labels.device
    batch, (height, width) = target_labels.shape[0], target_labels.shape[-2:]
    f = backbone.latent_downsample
    generator = torch.Generator().manual_seed(seed)
    scheduler = backbone.sample_scheduler()
    scheduler.set_timesteps(steps)
    dtype = next(model.parameters()).dtype
    shape = (batch, backbone.latent_channels, height // f, width // f)
    x = torch.randn(shape, generator=generator).to(device, dtype)
    prompt = backbone.prompt_batch(batch).to(device, dtype)
    use_exemplar = attention != "structure_only" and exemplar_images is not None
    if use_exemplar:
        exemplar_latents = backbone.encode(exemplar_images.to(device, dtype))
        exemplar_noise = torch.randn(exemplar_latents.shape, generator=generator).to(device, dtype)
    for t in scheduler.timesteps:
        tt = t.to(device).expand(batch)
        bank = None
        if use_exemplar:
            noisy_exemplar = scheduler.add_noise(exemplar_latents, exemplar_noise, tt)
            bank = model.write_bank(noisy_exemplar, tt, exemplar_labels, prompt)
        eps = model(x, tt, target_labels, prompt, bank=bank, exemplar_labels=exemplar_labels,
                    attention=attention, groups=groups, adapter=adapter)
        if use_exemplar and guidance_scale != 1.0:
            eps_plain = model(x, tt, target_labels, backbone.prompt_batch(batch, negative=True).to(device, dtype))
            eps = eps_plain + guidance_scale * (eps - eps_plain)
        x = scheduler.step(eps, t, x).prev_sample
    return backbone.decode(x)
