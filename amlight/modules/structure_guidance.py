"""Structure guidance in the ControlNeXt style: a light conv net over the target label map.

It reads the one-hot label map, is conditioned on the timestep, and its output is added to the
UNet's features right after ``conv_in``, after "cross normalisation" (brought to the UNet features'
mean and std, so the control signal is neither drowned nor dominant whatever the backbone's scale).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.models.embeddings import TimestepEmbedding, Timesteps

from amlight.modules.guidance_signal import GuidanceSignal


def one_hot_labels(labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """(B, H, W) labels -> (B, num_classes, H, W) float; ignore (and anything out of range) is all zeros."""
    valid = (labels >= 0) & (labels < num_classes)
    idx = torch.where(valid, labels, torch.full_like(labels, num_classes)).long()
    return F.one_hot(idx, num_classes + 1)[..., :num_classes].permute(0, 3, 1, 2).float()


def cross_normalize(control: torch.Tensor, features: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Give ``control`` the per-sample mean and std of ``features``."""
    dims = tuple(range(1, control.ndim))
    c_mean, c_std = control.mean(dims, keepdim=True), control.std(dims, keepdim=True)
    f_mean, f_std = features.mean(dims, keepdim=True), features.std(dims, keepdim=True)
    return (control - c_mean) / (c_std + eps) * f_std + f_mean


class _TimeResBlock(nn.Module):
    def __init__(self, channels: int, temb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.temb = nn.Linear(temb_dim, channels)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class StructureGuidance(ModelMixin, ConfigMixin):
    """A diffusers model (config.json + safetensors in a pipeline folder); its state_dict keys are those
    of the plain nn.Module it was before, so stage-1 checkpoints load unchanged."""

    config_name = "config.json"
    is_controlnet = False

    def __init__(
        self,
        num_classes: int,
        out_channels: int,
        downsample: int = 1,
        channels: int = 32,
        blocks_per_level: int = 1,
        scale: float = 1.0,
        ignore_index: int = 255,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"structure guidance needs num_classes >= 1, got {num_classes}")
        # Registered by hand (not the decorator): the config is exactly the arguments, no private keys.
        self.register_to_config(num_classes=num_classes, out_channels=out_channels, downsample=downsample,
                                channels=channels, blocks_per_level=blocks_per_level, scale=scale,
                                ignore_index=ignore_index)
        levels = int(round(math.log2(downsample)))
        if 2**levels != downsample:
            raise ValueError(f"downsample must be a power of 2, got {downsample}")
        self.num_classes, self.ignore_index, self.scale = num_classes, ignore_index, scale
        groups = math.gcd(8, channels)
        temb_dim = channels * 4
        self.time_proj = Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(channels, temb_dim)
        self.conv_in = nn.Conv2d(num_classes, channels, 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for level in range(levels + 1):
            self.blocks.append(nn.ModuleList(_TimeResBlock(channels, temb_dim, groups) for _ in range(blocks_per_level)))
            if level < levels:
                self.downsamplers.append(nn.Conv2d(channels, channels, 3, stride=2, padding=1))
        self.norm_out = nn.GroupNorm(groups, channels)
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, labels: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """(B, H, W) labels and (B,) timesteps -> control features (B, out_channels, H/ds, W/ds)."""
        x = one_hot_labels(labels, self.num_classes, self.ignore_index).to(self.conv_in.weight.dtype)
        temb = self.time_embedding(self.time_proj(timesteps.reshape(-1)).to(x.dtype))
        h = self.conv_in(x)
        for level, blocks in enumerate(self.blocks):
            for block in blocks:
                h = block(h, temb)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def signal(self, latents: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor,
               prompt_embeds: torch.Tensor, conditioning_scale: float | None = None) -> GuidanceSignal:
        """The control features for the UNet's ``conv_in`` (latents and prompt are not read).
        ``conditioning_scale`` is a ControlNet's: always None here (ExemplarUNet.controlnet_scale refuses one)."""
        return GuidanceSignal(conv_in=self(labels, timesteps))

    def inject(self, control: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """UNet features after conv_in plus the cross-normalised, scaled control."""
        if control.shape != features.shape:
            raise ValueError(
                f"structure guidance output {tuple(control.shape)} does not match the UNet features "
                f"{tuple(features.shape)}: is the label map at the image resolution?"
            )
        return features + self.scale * cross_normalize(control.to(features.dtype), features)
