"""The AM-Adapter: refines the cross-image attention logits with a 4D conv over [A ; C] (docs/method.md#part-5-the-am-adapter).

:meth:`AMAdapter.forward` is the method as the paper states it: pool A (detached) and C to the pooling
size, standardise A per sample and head, stack [A ; C], phi, unpool. The generation branch's attention
processor calls :meth:`AMAdapter.refine`, the refined exemplar logits ``logits + forward(...)``; the
target-self part of its logits is untouched.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn as nn
from diffusers import ConfigMixin, ModelMixin

from amlight.modules.attention_modes import BLOCK_GROUPS
from amlight.modules.conv4d import CenterPivotConv4d, add_unpool4d, pool4d, unpool4d
from amlight.modules.conv4d_cpu import phi_channels_last, use_fast_path

# Added to A's standard deviation: logits that are all equal (std 0) standardise to 0, not NaN.
_EPS = 1e-5


def _norm_groups(channels: int) -> int:
    for groups in (4, 2):
        if channels % groups == 0:
            return groups
    return 1


class AMAdapter(ModelMixin, ConfigMixin):
    """A diffusers model (config.json + safetensors in a pipeline folder, ``from_pretrained``); its
    state_dict keys are those of the plain nn.Module it was before, so adapter files load unchanged."""

    config_name = "config.json"

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
        # Registered by hand (not the decorator): ``config`` stays exactly the plain dict of arguments
        # that stage-2 checkpoints and adapter files have always stored (``AMAdapter(**config)``).
        self.register_to_config(heads=heads, channels=channels, num_layers=num_layers, kernel_size=kernel_size,
                                max_resolution=max_resolution, groups=list(groups))
        self.phi = nn.ModuleDict({g: self._build_phi() for g in groups})
        self._cost_cache: dict = {}

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
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def pool_factor(self, size: tuple[int, int], max_resolution: int | None = None) -> int:
        """Smallest power of two that brings max(h, w) to <= ``max_resolution`` (None: the trained value)."""
        limit = self.max_resolution if max_resolution is None else int(max_resolution)
        if limit < 1:
            raise ValueError(f"max_resolution must be >= 1, got {max_resolution}")
        factor = 1
        while max(size) > limit * factor:
            factor *= 2
        return factor

    def forward(
        self, group: str, logits: torch.Tensor, cost: torch.Tensor, size: tuple[int, int],
        max_resolution: int | None = None,
    ) -> torch.Tensor:
        """The refinement phi([A ; C]) at the logits' size: the refined logits are ``logits + forward(...)``.

        ``logits`` A (B, heads, N, N) and ``cost`` C (B, N, N), rows target and columns exemplar
        positions, N = h*w for ``size`` (h, w). ``max_resolution``: the side the volume is pooled to
        for this call (None: the adapter's trained value, ``self.max_resolution``).
        """
        delta, factor = self.pooled_refinement(group, logits, cost, size, max_resolution)
        # Unpool in 4D: each pooled entry fills its f x f target and f x f exemplar neighbourhood.
        return unpool4d(delta, factor).reshape(logits.shape)

    def pooled_refinement(
        self, group: str, logits: torch.Tensor, cost: torch.Tensor, size: tuple[int, int],
        max_resolution: int | None = None,
    ) -> tuple[torch.Tensor, int]:
        """phi([A ; C]) on the 4D-pooled volume, (B, heads, h/f, w/f, h/f, w/f) in the logits' dtype, and f."""
        factor = self._check(group, logits, cost, size, max_resolution)
        b, heads, (h, w) = logits.shape[0], self.heads, size
        param = next(self.parameters())
        # Pooling and standardisation run in float32 at least: in bfloat16 the sums of a pooled
        # neighbourhood and the centred logits keep 8 bits, too few once logits sit far from zero.
        work = torch.promote_types(param.dtype, torch.float32)

        # A detached: gradients from the adapter's loss must train phi only, never the attention that
        # produced A. Pooled before anything else copies the full-size volume: at 64x64 one
        # (heads, N, N) copy is hundreds of MB, its 4D-pooled version 16x less.
        a = pool4d(logits.detach().reshape(b, heads, h, w, h, w), factor, dtype=work)
        c = self._pooled_cost(cost, factor, work, (b, h, w))

        # Logit scale varies a lot across layers and timesteps while C lies in [0, 1]; standardising A
        # per sample and head puts both inputs on one scale. The statistics are per sample: taking
        # them over the batch would let one sample change another's output (a reference-code trap).
        mean = a.mean(dim=(2, 3, 4, 5), keepdim=True)
        std = a.std(dim=(2, 3, 4, 5), keepdim=True) if a[0, 0].numel() > 1 else torch.ones_like(mean)

        # Stack [A ; C] over channels and apply phi. On the CPU, the same function in channels-last
        # volumes (tests/modules/test_adapter_fast_path.py checks that it equals this readable path).
        phi = self.phi[group]
        if use_fast_path(a, param):
            delta = phi_channels_last(phi, a, mean, std, c, eps=_EPS)
        else:
            delta = phi(torch.cat([(a - mean) / (std + _EPS), c], dim=1).to(param.dtype))
        return delta.to(logits.dtype), factor

    def refine(
        self, group: str, logits: torch.Tensor, cost: torch.Tensor, size: tuple[int, int], *,
        max_resolution: int | None = None, inplace: bool = False,
    ) -> torch.Tensor:
        """The refined logits ``logits + forward(group, logits, cost, size, max_resolution)``: what the
        attention processor calls (:class:`~amlight.modules.exemplar_context.LogitRefiner`).

        The pooled refinement is broadcast over each 4D neighbourhood in the addition itself
        (:func:`~amlight.modules.conv4d.add_unpool4d`) instead of being unpooled into a logits-sized
        copy. Gradients reach ``logits`` unchanged (identity), as with the explicit sum; the adapter's
        own input is detached either way. ``inplace`` adds into ``logits`` itself when no graph is
        being recorded for it (inference: no second logits-sized tensor to allocate and first-touch).
        """
        delta, factor = self.pooled_refinement(group, logits, cost, size, max_resolution)
        inplace = inplace and not (torch.is_grad_enabled() and (logits.requires_grad or delta.requires_grad))
        return add_unpool4d(logits, delta, factor, inplace=inplace)

    def _check(self, group: str, logits: torch.Tensor, cost: torch.Tensor, size: tuple[int, int],
               max_resolution: int | None) -> int:
        """Validate one call; its 4D pooling factor."""
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
        factor = self.pool_factor((h, w), max_resolution)
        if h % factor or w % factor:
            limit = self.max_resolution if max_resolution is None else max_resolution
            raise ValueError(
                f"adapter layer {h}x{w} is above max_resolution {limit} but not divisible "
                f"by its 4D pooling factor {factor}"
            )
        return factor

    def _pooled_cost(self, cost: torch.Tensor, factor: int, dtype: torch.dtype, shape) -> torch.Tensor:
        """C pooled to the adapter's size, (B, 1, h', w', h', w'); computed once per cost tensor.

        One UNet call hands every layer of a size the same cost tensor (ExemplarContext.cost caches
        it), so the 4D pooling of a 64x64 cost (16 M entries) runs once, not five times. The entry
        is reused only for that very tensor object, unmodified (its version counter).
        """
        b, h, w = shape
        if cost.is_inference():  # no version counter to tell a modified tensor: not cached
            return pool4d(cost.detach().reshape(b, 1, h, w, h, w), factor, dtype=dtype)
        key = (id(cost), factor, dtype)
        hit = self._cost_cache.get(key)
        if hit is not None and hit[0]() is cost and hit[1] == cost._version:
            return hit[2]
        pooled = pool4d(cost.detach().reshape(b, 1, h, w, h, w), factor, dtype=dtype)
        if len(self._cost_cache) >= 8:
            self._cost_cache.clear()
        self._cost_cache[key] = (weakref.ref(cost), cost._version, pooled)
        return pooled

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["_cost_cache"] = {}  # weak references do not pickle; a cache needs no saving
        return state

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items() if not k.startswith("_"))
