"""Self-attention that reads the exemplar bank: the diffusers attention processor of amlight.

Set on every attention layer of a stock diffusers UNet. Cross-attention layers and calls without
an exemplar context behave exactly like diffusers' ``AttnProcessor2_0``. Self-attention layers:
- ``write`` context: store the layer's normalised input tokens in the bank, then attend as usual;
- ``read`` context: queries from the target tokens, keys and values from [target ; exemplar]
  tokens, all projected with the layer's own weights, one softmax over both parts. ``hard_mask``
  masks cross-class exemplar logits; ``adapter`` adds the adapter's refinement to the exemplar logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from amlight.modules.attention_modes import group_of
from amlight.modules.exemplar_context import ExemplarContext


class ExemplarAttnProcessor:
    def __init__(self, name: str):
        self.name = name.removesuffix(".processor")
        self.is_self_attention = self.name.endswith("attn1")
        self.group = group_of(name)
        self._plain = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        exemplar_ctx: ExemplarContext | None = None,
    ) -> torch.Tensor:
        ctx = exemplar_ctx
        if ctx is None or not self.is_self_attention:
            return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if ctx.mode == "write":
            ctx.features[self.name] = hidden_states
            return self._plain(attn, hidden_states, None, attention_mask, temb)
        if not ctx.reads(self.name, self.group):
            return self._plain(attn, hidden_states, None, attention_mask, temb)
        return self._read(attn, hidden_states, ctx)

    def _read(self, attn: Attention, hidden_states: torch.Tensor, ctx: ExemplarContext) -> torch.Tensor:
        if hidden_states.ndim != 3 or attn.group_norm is not None or attn.spatial_norm is not None:
            raise NotImplementedError(
                f"{self.name}: exemplar attention supports transformer self-attention on (B, N, C) tokens only"
            )
        batch, n, _ = hidden_states.shape
        bank = ctx.bank_for(self.name)
        if bank.shape[0] != batch or bank.shape[1] != n:
            raise ValueError(
                f"{self.name}: exemplar bank has shape {tuple(bank.shape)} but the target tokens are "
                f"{tuple(hidden_states.shape)}; exemplar and target must have the same size and batch rows"
            )
        heads = attn.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        q = split(attn.to_q(hidden_states))
        k, v = split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        kx, vx = split(attn.to_k(bank)), split(attn.to_v(bank))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k, kx = attn.norm_k(k), attn.norm_k(kx)

        size = ctx.size_of(n)
        mask = ctx.cross_mask(size, batch, hidden_states.device)
        explicit = (ctx.attention == "adapter" and ctx.adapter is not None) or ctx.recorder is not None
        if explicit:
            if ctx.checkpoint_attention and torch.is_grad_enabled():
                out = checkpoint(self._explicit, q, k, v, kx, vx, attn.scale, mask, size, ctx, use_reentrant=False)
            else:
                out = self._explicit(q, k, v, kx, vx, attn.scale, mask, size, ctx)
        else:
            out = self._sdpa(q, k, v, kx, vx, attn.scale, mask, ctx)
        out = out.transpose(1, 2).reshape(batch, n, -1).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor

    def _sdpa(self, q, k, v, kx, vx, scale, mask, ctx: ExemplarContext) -> torch.Tensor:
        batch, n = q.shape[0], q.shape[2]
        bias = ctx.strength_bias
        chunk = ctx.query_chunk or n
        keys, values = torch.cat([k, kx], dim=2), torch.cat([v, vx], dim=2)
        outs = []
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            full_mask = None
            if mask is not None or bias != 0.0:
                cross = mask[:, start:stop] if mask is not None else torch.ones(
                    batch, stop - start, kx.shape[2], dtype=torch.bool, device=q.device)
                self_part = torch.ones(batch, stop - start, n, dtype=torch.bool, device=q.device)
                if bias == 0.0:
                    full_mask = torch.cat([self_part, cross], dim=-1)[:, None]
                else:  # an additive float mask carries the strength bias and the -inf of masked pairs
                    zeros = torch.zeros(self_part.shape, dtype=q.dtype, device=q.device)
                    cross_bias = torch.full(cross.shape, bias, dtype=q.dtype, device=q.device)
                    cross_bias = cross_bias.masked_fill(~cross, float("-inf"))
                    full_mask = torch.cat([zeros, cross_bias], dim=-1)[:, None]
            outs.append(F.scaled_dot_product_attention(
                q[:, :, start:stop], keys, values, attn_mask=full_mask, scale=scale))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    def _explicit(self, q, k, v, kx, vx, scale, mask, size, ctx: ExemplarContext) -> torch.Tensor:
        # Materialises this layer's logits (B, heads, N, 2N); only one layer's exist at a time.
        logits_self = torch.matmul(q, k.transpose(-1, -2)) * scale
        logits_cross = torch.matmul(q, kx.transpose(-1, -2)) * scale
        if ctx.attention == "adapter" and ctx.adapter is not None:
            logits_cross = logits_cross + ctx.adapter(self.group, logits_cross.detach(), ctx.cost(size), size)
        if ctx.strength_bias != 0.0:
            logits_cross = logits_cross + ctx.strength_bias
        if mask is not None:
            logits_cross = logits_cross.masked_fill(~mask[:, None], float("-inf"))
        probs = torch.softmax(torch.cat([logits_self, logits_cross], dim=-1).float(), dim=-1).to(q.dtype)
        n = logits_self.shape[-1]
        if ctx.recorder is not None:
            ctx.recorder(self.name, probs[..., n:].detach(), size, ctx)
        return torch.matmul(probs[..., :n], v) + torch.matmul(probs[..., n:], vx)
