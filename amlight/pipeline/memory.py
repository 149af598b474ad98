"""How many targets fit one batch: the per-target peak of inference, from the model's shapes.

A batch of B targets holds, at its peak, B times what one target needs (the fixed part, the weights,
is already in the GPU's used memory when this is asked):
- the exemplar attention of the largest self-attention layer, one layer at a time: its (heads, N, 2N)
  logits buffer, the float32 softmax of an eighth of its rows, and with the adapter its 4D volumes;
- the exemplar's banks, one per sampling step (one exemplar per target at worst);
- the UNet's activations for the two classifier-free-guidance rows, and the VAE decoding the image.
``--batch-size auto`` divides the free GPU memory, less a margin, by that sum.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn

GiB = 1 << 30
# Left free for the allocator's fragmentation, cuDNN / cuBLAS workspaces and what the formula omits.
MARGIN = 0.15


@dataclass(frozen=True)
class TargetMemory:
    """Bytes one target adds to a batch's peak, by part."""

    attention: int
    bank: int
    activations: int
    decode: int

    @property
    def total(self) -> int:
        return self.attention + self.bank + self.activations + self.decode


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


def self_attention_shapes(unet: nn.Module, latent_size: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(tokens, heads, channels) of every self-attention layer of a diffusers UNet2DConditionModel
    at ``latent_size``: down block i and up block L-1-i work at 1/2^i of the latent, mid at 1/2^(L-1)."""
    levels = len(unet.config.block_out_channels)
    shapes = []
    for name, module in unet.named_modules():
        if not name.endswith("attn1"):
            continue
        match = re.match(r"(down|up)_blocks\.(\d+)\.", name)
        level = levels - 1 if match is None else int(match[2]) if match[1] == "down" else levels - 1 - int(match[2])
        h, w = (max(1, -(-s // 2 ** level)) for s in latent_size)
        shapes.append((h * w, module.heads, module.to_q.in_features))
    return shapes


def target_memory(model, vae: nn.Module | None, latent_size: tuple[int, int], steps: int,
                  explicit: bool, adapter=None, max_resolution: int | None = None) -> TargetMemory:
    """What one target adds to a batch's peak. ``explicit``: the adapter's materialised attention
    (else the fused kernels, which keep a float mask of (N, 2N) at most)."""
    unet = model.unet
    item = _itemsize(next(unet.parameters()).dtype)
    shapes = self_attention_shapes(unet, latent_size)
    if explicit:
        # The buffer in the model's dtype plus 1 byte an entry: float32 softmax input and output of
        # an eighth of its rows.
        attention = max(heads * n * 2 * n * (item + 1) for n, heads, _ in shapes)
        if adapter is not None:
            side = max_resolution or adapter.max_resolution
            pooled = max(min(n, side * side) for n, _, _ in shapes)
            attention += 4 * adapter.channels * pooled * pooled * _itemsize(next(adapter.parameters()).dtype)
    else:
        attention = max(n * 2 * n * 4 for n, _, _ in shapes)
    bank = steps * sum(n * c for n, _, c in shapes) * item
    # Two CFG rows; a few dozen feature maps of the first level alive at once (skips, feed-forward).
    n0, _, c0 = max(shapes)
    activations = 2 * 32 * n0 * c0 * item
    decode = 0
    if vae is not None:
        f = 2 ** (len(vae.config.block_out_channels) - 1)
        pixels = latent_size[0] * f * latent_size[1] * f
        decode = 6 * pixels * vae.config.block_out_channels[0] * _itemsize(next(vae.parameters()).dtype)
    return TargetMemory(attention, bank, activations, decode)


def batch_size_for(free_bytes: int, per_target: TargetMemory, cap: int) -> int:
    """Targets per batch that fit ``free_bytes`` less the margin; between 1 and ``cap``."""
    usable = free_bytes * (1 - MARGIN)
    return int(max(1, min(cap, usable // max(1, per_target.total))))


def free_device_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device; None elsewhere (a CPU's memory is the system's to manage)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    # What the caching allocator holds but does not use is free to this process.
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def describe(per_target: TargetMemory) -> str:
    parts = ", ".join(f"{name} {getattr(per_target, name) / GiB:.2f}"
                      for name in ("attention", "bank", "activations", "decode"))
    return f"{per_target.total / GiB:.2f} GiB per target ({parts})"
