"""Structure guidance through a diffusers ``ControlNetModel`` fed with the label map drawn in colours.

The alternative to :class:`~amlight.modules.structure_guidance.StructureGuidance` (the ControlNeXt-style
net stage 1 trains): a ControlNet, public (e.g. a segmentation ControlNet for SD 1.5, which reads label
maps painted in the ADE20K palette) or trained by stage 1. The label map (B, H, W) is drawn as an RGB
image in [0, 1] through a class -> colour table (``amlight.data.controlnet_colors``), the ControlNet
reads it with the noisy latents, timestep and prompt, and its residuals are added to the UNet's skip
connections and mid block. The UNet's own attention processors are untouched, so the appearance branch
(exemplar labels) and the generation branch (target labels) read and write exemplar banks as with the
ControlNeXt-style guidance: all attention modes work unchanged.

A pipeline folder keeps it as its ``structure_guidance`` component: ``config.json`` holds the class
colours, the conditioning scale and the ControlNet's own config; the weights are the ControlNet's
(keys prefixed ``controlnet.``).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from diffusers import ConfigMixin, ControlNetModel, ModelMixin

from amlight.modules.guidance_signal import GuidanceSignal


class ControlNetGuidance(ModelMixin, ConfigMixin):
    """Args:
        num_classes: label values 0..num_classes-1 are classes; the rest (ignore) is drawn black.
        class_colors: one [r, g, b] (0..255) per class, in class order: what the ControlNet reads.
        controlnet_config: the ControlNetModel's config (``dict(controlnet.config)``).
        conditioning_scale: weight of the ControlNet's residuals (diffusers' ``controlnet_conditioning_scale``).
        ignore_index: the label value that is no class.
    """

    config_name = "config.json"
    is_controlnet = True

    def __init__(
        self,
        num_classes: int,
        class_colors: Sequence[Sequence[int]],
        controlnet_config: dict[str, Any],
        conditioning_scale: float = 1.0,
        ignore_index: int = 255,
    ):
        super().__init__()
        colors = [[int(v) for v in c] for c in class_colors]
        if num_classes < 1:
            raise ValueError(f"ControlNet guidance needs num_classes >= 1, got {num_classes}")
        if len(colors) != num_classes or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colors):
            raise ValueError(f"class_colors must hold {num_classes} [r, g, b] colours with values 0..255, "
                             f"got {len(colors)} entries")
        config = {k: v for k, v in dict(controlnet_config).items() if not k.startswith("_")}
        # Not "controlnet": diffusers resolves attribute names through the config first.
        self.register_to_config(num_classes=num_classes, class_colors=colors, controlnet_config=config,
                                conditioning_scale=float(conditioning_scale), ignore_index=ignore_index)
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.conditioning_scale = float(conditioning_scale)
        self.controlnet = ControlNetModel.from_config(config)

    @classmethod
    def around(cls, controlnet: ControlNetModel, num_classes: int, class_colors, conditioning_scale: float = 1.0,
               ignore_index: int = 255) -> "ControlNetGuidance":
        """Guidance around an existing ControlNet, its weights kept (a public one, or ``from_unet``)."""
        guidance = cls(num_classes, class_colors, dict(controlnet.config), conditioning_scale, ignore_index)
        guidance.controlnet = controlnet
        return guidance

    @property
    def lookup(self) -> torch.Tensor:
        """(num_classes + 1, 3) float colours in [0, 1]; the last row (ignore, anything no class) is black."""
        table = torch.zeros(self.num_classes + 1, 3)
        table[: self.num_classes] = torch.tensor(self.config.class_colors, dtype=torch.float32) / 255.0
        return table

    def render(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, H, W) labels -> (B, 3, H, W) conditioning image in [0, 1], in the ControlNet's dtype."""
        valid = (labels >= 0) & (labels < self.num_classes)
        index = torch.where(valid, labels, torch.full_like(labels, self.num_classes)).long()
        image = self.lookup.to(labels.device)[index].permute(0, 3, 1, 2)
        return image.to(self.controlnet.dtype)

    def signal(self, latents: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor,
               prompt_embeds: torch.Tensor, conditioning_scale: float | None = None) -> GuidanceSignal:
        """The ControlNet's residuals for the UNet's down blocks and mid block, weighted by
        ``conditioning_scale`` (None: the configured one). An argument, not a setting: one call's scale
        never leaks into the next."""
        scale = self.conditioning_scale if conditioning_scale is None else float(conditioning_scale)
        f = self._downsample
        if tuple(labels.shape[-2:]) != (latents.shape[-2] * f, latents.shape[-1] * f):
            raise ValueError(
                f"label map {tuple(labels.shape[-2:])} does not match the latents {tuple(latents.shape[-2:])} "
                f"x {f} (the ControlNet's conditioning image is at the image resolution)"
            )
        down, mid = self.controlnet(
            latents.to(self.controlnet.dtype), timesteps, encoder_hidden_states=prompt_embeds.to(self.controlnet.dtype),
            controlnet_cond=self.render(labels), conditioning_scale=scale, return_dict=False,
        )
        return GuidanceSignal(down_residuals=tuple(down), mid_residual=mid)

    @property
    def _downsample(self) -> int:
        """How much smaller than the conditioning image the latents are (one stride-2 conv per step)."""
        return 2 ** (len(self.controlnet.config.conditioning_embedding_out_channels) - 1)


def controlnet_from_unet(unet, image_downsample: int) -> ControlNetModel:
    """A ControlNet for ``unet`` (its encoder's weights copied, zero convolutions out), reading a 3-channel
    conditioning image ``image_downsample`` times the latent size: what stage 1 trains from scratch."""
    levels = max(0, int(image_downsample).bit_length() - 1)
    if 2**levels != image_downsample:
        raise ValueError(f"the image-to-latent downsampling must be a power of 2, got {image_downsample}")
    # SD 1.5's (16, 32, 96, 256) for 8x; shorter for smaller factors (the tiny backbone is pixel space: 1x).
    widths = (16, 32, 96, 256)[: levels + 1] if levels <= 3 else (16,) * (levels + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the conditioning embedding's random init: the same in a run and its reload
        return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=widths)
