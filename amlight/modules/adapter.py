"""The AM-Adapter: refines the cross-image attention logits with a 4D conv over [A ; C] (METHOD.md part 5).

The generation branch's attention processor calls ``adapter(group, logits_cross, cost, size)`` and
adds the returned refinement to the exemplar part of its logits; the target-self part is untouched.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from amlight.modules.attention_modes import BLOCK_GROUPS
from amlight.modules.conv4d import CenterPivotConv4d, pool4d, unpool4d


def _norm_groups(channels: int) -> int:
    for groups in (4, 2):
        if channels % groups == 0:
            return groups
    return 1


class AMAdapter(nn.Module):
    def __init__(
        self,
        heads: int,
        channels: int = 16,
        num_layers: int = 3,
        kernel_size: int = 3,
        max_resolution: int = 32,
        groups=BLOCK_GROUPS,
    ):
        super().__init__()
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if max_resolution < 1:
            raise ValueError(f"max_resolution must be >= 1, got {max_resolution}")
        if isinstance(groups, str):
            groups = (groups,)
        groups = tuple(dict.fromkeys(groups))
        unknown = [g for g in groups if g not in BLOCK_GROUPS]
        if unknown or not groups:
            raise ValueError(f"unknown block group(s) {unknown}; choose from {', '.join(BLOCK_GROUPS)}")
        self.heads, self.channels, self.num_layers = heads, channels, num_layers
        self.kernel_size, self.max_resolution, self.groups = kernel_size, max_resolution, groups
        self.phi = nn.ModuleDict({g: self._build_phi() for g in groups})

    def _build_phi(self) -> nn.Sequential:
        layers: list[nn.Module] = []
        c_in = self.heads + 1
        for _ in range(self.num_layers - 1):
            layers += [
                CenterPivotConv4d(c_in, self.channels, self.kernel_size),
                # nn.GroupNorm normalises each sample over its channel group and all trailing dims,
                # i.e. all four spatial dims here: per sample, so no batch row influences another.
                nn.GroupNorm(_norm_groups(self.channels), self.channels),
                nn.ReLU(inplace=True),
            ]
            c_in = self.channels
        # Zero last layer: phi(R) == 0 exactly at init, so stage 2 starts from plain augmented attention;
        # no norm or ReLU after it, so the refinement can push logits down as well as up.
        layers.append(CenterPivotConv4d(c_in, self.heads, self.kernel_size).zero_())
        return nn.Sequential(*layers)

    @property
    def config(self) -> dict:
        return {
            "heads": self.heads,
            "channels": self.channels,
            "num_layers": self.num_layers,
            "kernel_size": self.kernel_size,
            "max_resolution": self.max_resolution,
            "groups": list(self.groups),
        }

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def pool_factor(self, size: tuple[int, int]) -> int:
        """Smallest power of two that brings max(h, w) to <= max_resolution."""
        factor = 1
        while max(size) > self.max_resolution * factor:
            factor *= 2
        return factor

    def forward(
        self, group: str, logits: torch.Tensor, cost: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """logits (B, heads, N, N), cost (B, N, N), size (h, w) with N = h*w -> refinement like logits."""
        if group not in self.phi:
            raise ValueError(f"unknown adapter group {group!r}; this adapter has {', '.join(self.phi.keys())}")
        if logits.ndim != 4:
            raise ValueError(f"adapter expects logits (B, heads, N, N), got shape {tuple(logits.shape)}")
        b, heads, n, nx = logits.shape
        if heads != self.heads:
            raise ValueError(f"adapter was built for {self.heads} heads, layer has {heads}")
        h, w = size
        if n != h * w or nx != h * w:
            raise ValueError(
                f"adapter got logits with {n} target x {nx} exemplar positions but size {h}x{w} = {h * w}"
            )
        if tuple(cost.shape) != (b, n, nx):
            raise ValueError(f"adapter expects cost of shape {(b, n, nx)}, got {tuple(cost.shape)}")
        factor = self.pool_factor((h, w))
        if h % factor or w % factor:
            raise ValueError(
                f"adapter layer {h}x{w} is above max_resolution {self.max_resolution} but not divisible "
                f"by its 4D pooling factor {factor}"
            )

        param = next(self.parameters())
        # Gradients from the adapter's loss must train phi only, never the attention that produced A.
        a = logits.detach().reshape(b, heads, h, w, h, w)
        # Pool before anything else copies the full-size volume: at 64x64 one (heads, N, N) copy is
        # hundreds of MB, its 4D-pooled version 16x less.
        a = pool4d(a, factor).to(param.dtype)
        c = pool4d(cost.detach().to(param.dtype).reshape(b, 1, h, w, h, w), factor)
        # Logit scale varies a lot across layers and timesteps while C lies in [0, 1]; standardising A
        # per sample and head puts both inputs on one scale. The statistics are per sample: taking
        # them over the batch would let one sample change another's output (a reference-code trap).
        mean = a.mean(dim=(2, 3, 4, 5), keepdim=True)
        std = a.std(dim=(2, 3, 4, 5), keepdim=True) if a[0, 0].numel() > 1 else torch.ones_like(mean)
        r = torch.cat([(a - mean) / (std + 1e-5), c], dim=1)
        delta = unpool4d(self.phi[group](r), factor)
        return delta.reshape(b, heads, n, nx).to(logits.dtype)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())
