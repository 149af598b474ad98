"""Self-attention that reads the exemplar bank: the diffusers attention processor of amlight.

Set on every attention layer of a stock diffusers UNet. Cross-attention layers and calls without
an exemplar context behave exactly like diffusers' ``AttnProcessor2_0``. Self-attention layers:
- ``write`` context: store the layer's normalised input tokens in the bank, then attend as usual;
- ``read`` context: queries from the target tokens, keys and values from [target ; exemplar]
  tokens, all projected with the layer's own weights, one softmax over both parts. ``hard_mask``
  masks cross-class exemplar logits; ``adapter`` has the adapter refine the exemplar logits (its
  ``refine``, the :class:`~amlight.modules.exemplar_context.LogitRefiner` protocol).
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
        # One bank row per exemplar; ``index`` says which one each batch row reads (None: row b reads row b).
        read = ctx.read
        bank, index = ctx.features[self.name], read.exemplar_index
        if (bank.shape[0] if index is None else index.shape[0]) != batch or bank.shape[1] != n:
            raise ValueError(
                f"{self.name}: exemplar bank has shape {tuple(bank.shape)} but the target tokens are "
                f"{tuple(hidden_states.shape)}; exemplar and target must have the same size and batch rows"
            )
        heads = attn.heads
        q = _heads(attn.to_q(hidden_states), heads)
        k, v = _heads(attn.to_k(hidden_states), heads), _heads(attn.to_v(hidden_states), heads)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)

        size = ctx.size_of(n)
        # A recorder reports every row's exemplar attention, so it keeps the whole batch on one path.
        rows = None if read.recorder is not None else ctx.row_split(batch, hidden_states.device)
        if rows is None:
            mask = ctx.cross_mask(size, batch, hidden_states.device)
            out = self._attend(attn, q, k, v, bank, index, size, mask, lambda: ctx.cost(size), ctx)
        else:
            # Rows that may not read the exemplar (CFG's unconditional half, dropped exemplars) are
            # plain self-attention: no bank projections, exemplar logits or adapter for them.
            p = rows.plain
            out = F.scaled_dot_product_attention(q[p], k[p], v[p], scale=attn.scale)
            if rows.read.numel():
                r = rows.read
                mask = ctx.cost(size, r) if ctx.settings.masks_other_classes else None
                bank_r, index_r = (bank[r], None) if index is None else (bank, index[r])
                read = self._attend(attn, q[r], k[r], v[r], bank_r, index_r, size, mask, lambda: ctx.cost(size, r), ctx)
                out = torch.cat([read, out])[rows.order]
        out = out.transpose(1, 2).reshape(batch, n, -1).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor

    def _attend(self, attn: Attention, q, k, v, bank, index, size, mask, cost, ctx: ExemplarContext) -> torch.Tensor:
        """Attention of queries ``q`` over [target ; exemplar] tokens for the rows that read the bank.

        ``index`` picks each query row's bank row (None: row for row). The projections run on the bank
        rows, before the gather: an exemplar that serves many targets is projected once, not per target.
        """
        kx, vx = _heads(attn.to_k(bank), attn.heads), _heads(attn.to_v(bank), attn.heads)
        if attn.norm_k is not None:
            kx = attn.norm_k(kx)
        if index is not None:
            kx, vx = kx[index], vx[index]
        read = ctx.read
        if not (read.explicit_adapter or read.recorder is not None):
            return self._sdpa(q, k, v, kx, vx, attn.scale, mask, ctx)
        if read.checkpoint_attention and torch.is_grad_enabled():
            return checkpoint(self._explicit, q, k, v, kx, vx, attn.scale, mask, size, cost, ctx, use_reentrant=False)
        return self._explicit(q, k, v, kx, vx, attn.scale, mask, size, cost, ctx)

    def _sdpa(self, q, k, v, kx, vx, scale, mask, ctx: ExemplarContext) -> torch.Tensor:
        batch, n = q.shape[0], q.shape[2]
        bias = ctx.strength_bias
        chunk = ctx.read.query_chunk or n
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

    def _explicit(self, q, k, v, kx, vx, scale, mask, size, cost, ctx: ExemplarContext) -> torch.Tensor:
        # Materialises this layer's logits (B, heads, N, 2N); only one layer's exist at a time.
        # ``cost()`` gives the categorical cost of these rows (built only when the adapter needs it).
        # Queries are scaled before the product: SD's unscaled q.k passes float16's 65504 where the
        # scaled logits do not.
        q = q * scale
        n = k.shape[2]
        if torch.is_grad_enabled():
            logits_self = torch.matmul(q, k.transpose(-1, -2))
            logits_cross = self._cross_logits(torch.matmul(q, kx.transpose(-1, -2)), mask, size, cost, ctx)
            probs = torch.softmax(torch.cat([logits_self, logits_cross], dim=-1).float(), dim=-1).to(q.dtype)
        else:
            probs = self._probs_in_place(q, k, kx, mask, size, cost, ctx)
        read = ctx.read
        if read.recorder is not None:
            read.recorder(self.name, probs[..., n:].detach(), size, ctx)
        return torch.matmul(probs[..., :n], v) + torch.matmul(probs[..., n:], vx)

    def _probs_in_place(self, q, k, kx, mask, size, cost, ctx: ExemplarContext) -> torch.Tensor:
        """The attention probabilities in one (B, heads, N, 2N) buffer, without autograd.

        The self and cross logits are written into the two halves of the buffer, refined and
        softmaxed there: the layer holds one buffer instead of self and cross halves, their
        concatenation and its softmax (three buffers' worth).
        """
        b, heads, nq, d = q.shape
        n, nx = k.shape[2], kx.shape[2]
        logits = q.new_empty(b, heads, nq, n + nx)
        flat, q3 = logits.view(b * heads, nq, n + nx), q.reshape(b * heads, nq, d)
        torch.bmm(q3, k.reshape(b * heads, n, d).transpose(1, 2), out=flat[..., :n])
        torch.bmm(q3, kx.reshape(b * heads, nx, d).transpose(1, 2), out=flat[..., n:])
        cross = logits[..., n:]
        refined = self._cross_logits(cross, mask, size, cost, ctx)
        if refined is not cross:  # a refiner that returned a new tensor instead of adding in place
            cross.copy_(refined)
        del refined
        # Softmax in float32 (from half precision too), an eighth of the rows at a time: the float32
        # result alive at once stays a fraction of the buffer. Contiguous chunks of (B * heads * N)
        # rows, as softmax would copy a strided one first.
        rows = logits.view(-1, n + nx)
        step = max(1, -(-rows.shape[0] // 8))
        for part in rows.split(step):
            part.copy_(torch.softmax(part, dim=-1, dtype=torch.float32))
        return logits

    def _cross_logits(self, logits, mask, size, cost, ctx: ExemplarContext) -> torch.Tensor:
        """The exemplar logits refined by the adapter, biased by the strength and masked; in place
        when no graph is recorded."""
        inplace = not torch.is_grad_enabled()
        if ctx.read.explicit_adapter:
            # The pooling size travels with the call's settings (None: the adapter's trained value).
            logits = ctx.read.adapter.refine(self.group, logits, cost(), size,
                                             max_resolution=ctx.settings.max_resolution, inplace=inplace)
        if ctx.strength_bias != 0.0:
            logits = logits.add_(ctx.strength_bias) if inplace else logits + ctx.strength_bias
        if mask is not None:
            fill = (logits.masked_fill_ if inplace else logits.masked_fill)
            logits = fill(~mask[:, None], float("-inf"))
        return logits


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads * d) -> (B, heads, N, d)."""
    return x.view(x.shape[0], -1, heads, x.shape[-1] // heads).transpose(1, 2)
