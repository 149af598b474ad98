"""The UNet with structure guidance and an exemplar bank: both branches of the method in one module.

- :meth:`ExemplarUNet.write_bank`: the appearance branch (the UNet on the exemplar latent, guided by
  the exemplar's labels) fills a bank of self-attention tokens.
- :meth:`ExemplarUNet.forward`: the generation branch (guided by the target's labels) reads it.
Both use the same stock diffusers UNet; behaviour changes through its attention processors, its
``cross_attention_kwargs`` argument and structure guidance: a forward hook on ``conv_in`` (the
ControlNeXt-style :class:`StructureGuidance`) or ControlNet residuals (:class:`ControlNetGuidance`).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from diffusers import UNet2DConditionModel

from amlight.modules.exemplar_attention import ExemplarAttnProcessor
from amlight.modules.exemplar_context import CONTEXT_KWARG, ExemplarContext, ExemplarRead
from amlight.modules.controlnet_guidance import ControlNetGuidance, controlnet_from_unet
from amlight.modules.structure_guidance import StructureGuidance

Bank = dict[str, torch.Tensor]


class ExemplarUNet(nn.Module):
    def __init__(self, unet: UNet2DConditionModel, guidance: StructureGuidance | ControlNetGuidance,
                 ignore_index: int = 255):
        super().__init__()
        self.unet = unet
        self.guidance = guidance
        self.ignore_index = ignore_index
        unet.set_attn_processor({name: ExemplarAttnProcessor(name) for name in unet.attn_processors})
        self._control: torch.Tensor | None = None
        unet.conv_in.register_forward_hook(self._add_control)

    @property
    def self_attention_layers(self) -> list[str]:
        return [p.name for p in self.unet.attn_processors.values() if p.is_self_attention]

    @property
    def is_controlnet(self) -> bool:
        return bool(getattr(self.guidance, "is_controlnet", False))

    def controlnet_scale(self, scale: float | None = None) -> float | None:
        """The ControlNet conditioning scale a call given ``scale`` uses: ``scale``, else the guidance's
        configured one. None without a ControlNet, where giving one is a ValueError (nothing to scale)."""
        if not self.is_controlnet:
            if scale is not None:
                raise ValueError(f"controlnet_conditioning_scale={scale} given, but the structure guidance is "
                                 f"{type(self.guidance).__name__} (ControlNeXt-style), not a ControlNet")
            return None
        if scale is None:
            return float(self.guidance.conditioning_scale)
        value = float(scale)
        if not math.isfinite(value):
            raise ValueError(f"controlnet_conditioning_scale must be a finite number, got {scale!r}")
        return value

    def _add_control(self, module, args, output):
        if self._control is None:
            return output
        return self.guidance.inject(self._control, output)

    def _run(self, latents, timesteps, labels, prompt_embeds, ctx: ExemplarContext | None,
             conditioning_scale: float | None = None) -> torch.Tensor:
        timesteps = _as_batch(timesteps, latents)
        # Samplers keep their latents in float32 whatever the UNet's dtype (scheduler arithmetic in
        # half precision drifts): the UNet sees its own.
        dtype = self.unet.dtype
        latents, prompt_embeds = latents.to(dtype), prompt_embeds.to(dtype)
        # A ControlNet's scale for this call (None: its configured one); refused for the ControlNeXt-style guidance.
        signal = self.guidance.signal(latents, timesteps, labels, prompt_embeds,
                                      conditioning_scale=self.controlnet_scale(conditioning_scale))
        self._control = signal.conv_in
        try:
            return self.unet(
                latents,
                timesteps,
                encoder_hidden_states=prompt_embeds,
                cross_attention_kwargs=None if ctx is None else {CONTEXT_KWARG: ctx},
                **signal.unet_kwargs(),
            ).sample
        finally:
            self._control = None

    def write_bank(self, latents, timesteps, labels, prompt_embeds, conditioning_scale: float | None = None) -> Bank:
        """The appearance branch: run on the (noised) exemplar latent, return its bank.
        ``conditioning_scale``: a ControlNet's residual weight for this call (None: its configured one)."""
        ctx = ExemplarContext(mode="write", latent_size=tuple(latents.shape[-2:]))
        self._run(latents, timesteps, labels, prompt_embeds, ctx, conditioning_scale)
        return ctx.features

    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        labels: torch.Tensor,
        prompt_embeds: torch.Tensor,
        read: ExemplarRead | None = None,
        conditioning_scale: float | None = None,
    ) -> torch.Tensor:
        """The generation branch: predicted noise for ``latents`` drawn as ``labels``.

        ``read``: the exemplar bank and how to read it. None, or a ``structure_only`` read: plain
        self-attention, the exemplar is not used. ``conditioning_scale``: a ControlNet's residual weight
        for this call (None: its configured one; given without a ControlNet: ValueError).
        """
        if read is None or not read.settings.reads_exemplar:
            return self._run(latents, timesteps, labels, prompt_embeds, None, conditioning_scale)
        ctx = ExemplarContext(
            mode="read", latent_size=tuple(latents.shape[-2:]), read=read,
            target_labels=labels if read.match_labels is None else read.match_labels, ignore_index=self.ignore_index,
        )
        return self._run(latents, timesteps, labels, prompt_embeds, ctx, conditioning_scale)


def _as_batch(timesteps, latents: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(timesteps, device=latents.device)
    if t.ndim == 0:
        t = t.expand(latents.shape[0])
    return t


def build_exemplar_unet(
    backbone, num_classes: int, ignore_index: int = 255, guidance_channels: int = 32, guidance_scale: float = 1.0,
    guidance: str = "structure", class_colors=None,
) -> ExemplarUNet:
    """A fresh UNet of ``backbone`` with structure guidance sized for it: what stage 1 trains and
    what a stage-1 checkpoint's weights are loaded into.

    ``guidance``: "structure" (ControlNeXt-style, ``guidance_channels`` wide, ``guidance_scale``) or
    "controlnet" (a ControlNet copied from the UNet's encoder, reading the label map drawn in
    ``class_colors``, its residuals weighted by ``guidance_scale``)."""
    unet = backbone.new_unet()
    if guidance == "controlnet":
        if class_colors is None:
            raise ValueError("ControlNet guidance needs class_colors (one [r, g, b] per class)")
        net = ControlNetGuidance.around(controlnet_from_unet(unet, backbone.latent_downsample), num_classes,
                                        class_colors, conditioning_scale=guidance_scale, ignore_index=ignore_index)
    elif guidance == "structure":
        net = StructureGuidance(
            num_classes, unet.config.block_out_channels[0], downsample=backbone.latent_downsample,
            channels=guidance_channels, scale=guidance_scale, ignore_index=ignore_index,
        )
    else:
        raise ValueError(f"unknown guidance {guidance!r}; choose 'structure' or 'controlnet'")
    return ExemplarUNet(unet, net, ignore_index=ignore_index)
