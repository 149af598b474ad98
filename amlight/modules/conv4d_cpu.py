"""The CPU fast path of the center-pivot 4D conv: channels-last volumes and oneDNN convolutions.

Same numbers as :func:`amlight.modules.conv4d.center_pivot_views` (to float rounding), much less time
at SD size, for three reasons found with torch.profiler on one 32^4 volume (the timings are in
docs/benchmarks.md#the-adapters-cost-one-adapter-call-against-one-unet-row):

- PyTorch's convolution picks its CPU backend by a heuristic that sends the target conv, seen as
  conv3d on (b, c, h1, w1, h2*w2) with a (3, 3, 1) kernel, to the unvectorised ``slow_conv3d``
  whenever b * c * h1 * w1 <= 20480, i.e. every batch-1 call at 32x32. Here the oneDNN convolution
  is called directly, and its backward is written out below so that autograd cannot fall back either.
- In a channels-last volume (memory order b, h1, w1, h2, w2, c) both 2D convolutions are views of
  the same memory in oneDNN's preferred layout (NDHWC), and the two outputs come out in that layout
  too, so no conv ever reorders its input or output.
- GroupNorm has a channels-last kernel; the volume never goes back to channels-first inside phi
  (:func:`phi_channels_last`, the adapter's one call into this module).

The weights are the Conv2d modules' own, so checkpoints are unchanged; only the memory layout of the
activations differs. Used for float32 on CPU when oneDNN is available; everything else (CUDA, bf16 on
CPUs without bf16 units) keeps the view-based path.

``AMLIGHT_CONV4D_FAST=0`` in the environment (or :func:`fast_path_enabled` ``(False)`` around a block)
forces the view-based path on the CPU too: CUDA always runs that path, so this is how a CPU rehearses
the GPU's code (tests/e2e/test_gpu_code_path.py) and how benchmarks time the path before this one.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

ENV_SWITCH = "AMLIGHT_CONV4D_FAST"
# None: the environment decides (on unless AMLIGHT_CONV4D_FAST is 0 / false / off / no);
# fast_path_enabled() sets True or False for the length of a block, over the environment.
_ENABLED: bool | None = None
# The fused conv + add is a private oneDNN op of PyTorch (torch.ops.mkldnn); without it, a plain add.
_FUSED_ADD = hasattr(torch.ops.mkldnn, "_convolution_pointwise_")


@contextmanager
def fast_path_enabled(enabled: bool) -> Iterator[None]:
    """Switch the fast path off (or on) inside a block, whatever the environment says."""
    global _ENABLED
    before, _ENABLED = _ENABLED, enabled
    try:
        yield
    finally:
        _ENABLED = before


def fast_path_switched_on() -> bool:
    if _ENABLED is not None:
        return _ENABLED
    # Read at every call, not at import: a test or a launcher may set it after amlight is imported.
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def use_fast_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled and fast_path_switched_on())


def is_channels_last_volume(x: torch.Tensor) -> bool:
    return x.permute(0, 2, 3, 4, 5, 1).is_contiguous()


def to_channels_last_volume(x: torch.Tensor) -> torch.Tensor:
    """(b, c, h1, w1, h2, w2) with memory order (b, h1, w1, h2, w2, c); a no-op when it already is."""
    if is_channels_last_volume(x):
        return x
    return x.permute(0, 2, 3, 4, 5, 1).contiguous().permute(0, 5, 1, 2, 3, 4)


def _target_view(m: torch.Tensor) -> torch.Tensor:
    """Memory-order volume (b, h1, w1, h2, w2, c) -> NDHWC conv3d input (b, c, h1, w1, h2*w2), a view."""
    b, h1, w1, h2, w2, c = m.shape
    return m.reshape(b, h1, w1, h2 * w2, c).permute(0, 4, 1, 2, 3)


def _exemplar_view(m: torch.Tensor) -> torch.Tensor:
    """Memory-order volume -> NDHWC conv3d input (b, c, h1*w1, h2, w2), a view."""
    b, h1, w1, h2, w2, c = m.shape
    return m.reshape(b, h1 * w1, h2, w2, c).permute(0, 4, 1, 2, 3)


def _volume(y: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A conv3d output over one of the two views, back to a channels-last (b, c, h1, w1, h2, w2) volume."""
    b, h1, w1, h2, w2 = shape
    # oneDNN returns NDHWC for NDHWC input; reshape (not view) keeps this correct if it ever does not.
    return y.permute(0, 2, 3, 4, 1).reshape(b, h1, w1, h2, w2, y.shape[1]).permute(0, 5, 1, 2, 3, 4)


def _conv(view: torch.Tensor, weight5: torch.Tensor, bias: torch.Tensor | None, padding: list[int]) -> torch.Tensor:
    return torch.ops.aten.mkldnn_convolution(view, weight5, bias, padding, [1, 1, 1], [1, 1, 1], 1)


def _flip(weight: torch.Tensor) -> torch.Tensor:
    """Conv2d weight (co, ci, k, k) -> the weight whose 'same' conv is this conv's input gradient."""
    return weight.flip(2, 3).transpose(0, 1).contiguous()


def _pivot(m: torch.Tensor, wt: torch.Tensor, we: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Both 2D convs of a memory-order volume m, summed: a channels-last volume.

    The exemplar conv accumulates into the target conv's output (oneDNN's fused "add" post-op, the
    one Inductor uses): no second output volume to allocate, fill and add.
    """
    p = wt.shape[-1] // 2
    shape = tuple(m.shape[:5])
    y = _volume(_conv(_target_view(m), wt.unsqueeze(-1), None, [p, p, 0]), shape)
    if _FUSED_ADD:
        torch.ops.mkldnn._convolution_pointwise_.binary(
            _exemplar_view(y.permute(0, 2, 3, 4, 5, 1)), _exemplar_view(m), we.unsqueeze(2), bias, [0, p, p],
            [1, 1, 1], [1, 1, 1], 1, "add", 1.0, None, [], None)
        return y
    return y.add_(_volume(_conv(_exemplar_view(m), we.unsqueeze(2), bias, [0, p, p]), shape))


def _target_weight_grad(xm: torch.Tensor, gm: torch.Tensor, k: int) -> torch.Tensor:
    """Gradient of the target conv's (co, ci, k, k) weight from memory-order input xm and output grad gm.

    dW[o, c, di, dj] = sum over (b, i, j, r) of g[b, i, j, r, o] * x[b, i + di - p, j + dj - p, r, c]:
    for each kernel offset, the valid (i, j) window of g and its shifted window of x are both
    (rows, cols * h2*w2, channels) views with a contiguous inner matrix, so each offset is one batched
    matmul over rows with no copy. convolution_backward would pick slow_conv3d here (module doc);
    through oneDNN on a zero-padded batch of 2 it is slower than this, and through a transposed copy
    of x and g (the exemplar conv's layout) no faster.
    """
    b, h1, w1 = xm.shape[:3]
    ci, co, p = xm.shape[-1], gm.shape[-1], k // 2
    grad = xm.new_zeros(co, ci, k, k)
    for di in range(k):
        oi = di - p
        i0, i1 = max(0, -oi), h1 - max(0, oi)
        for dj in range(k):
            oj = dj - p
            j0, j1 = max(0, -oj), w1 - max(0, oj)
            if i1 <= i0 or j1 <= j0:
                continue
            for n in range(b):
                g = gm[n, i0:i1, j0:j1].reshape(i1 - i0, -1, co)
                x = xm[n, i0 + oi:i1 + oi, j0 + oj:j1 + oj].reshape(i1 - i0, -1, ci)
                grad[:, :, di, dj] += torch.bmm(g.transpose(1, 2), x).sum(0)
    return grad


class _CenterPivotChannelsLast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, wt: torch.Tensor, we: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        m = x.permute(0, 2, 3, 4, 5, 1)
        ctx.save_for_backward(x, wt, we)
        return _pivot(m, wt, we, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, wt, we = ctx.saved_tensors
        need_x, need_wt, need_we, need_b = ctx.needs_input_grad
        gm = to_channels_last_volume(grad).permute(0, 2, 3, 4, 5, 1)
        xm = x.permute(0, 2, 3, 4, 5, 1)
        k, p = wt.shape[-1], wt.shape[-1] // 2
        # y = conv_t(x) + conv_e(x) + b, so one output gradient feeds both convs' gradients.
        gx = _pivot(gm, _flip(wt), _flip(we), None) if need_x else None
        gwt = None
        if need_wt:
            b, h1, w1, h2, w2 = xm.shape[:5]
            if b > 1 and h1 * w1 * h2 * w2 <= 16 ** 4:
                # With b > 1 PyTorch keeps this on oneDNN, which beats the matmul loop on small volumes
                # (the quickstart's 8^4), not on 32^4.
                gwt = torch.ops.aten.convolution_backward(
                    _target_view(gm), _target_view(xm), wt.unsqueeze(-1), None, [1, 1, 1], [p, p, 0], [1, 1, 1],
                    False, [0, 0, 0], 1, [False, True, False])[1].squeeze(-1)
            else:
                gwt = _target_weight_grad(xm, gm, k)
        gwe = None
        if need_we:
            # The exemplar conv's view has b * c * h1*w1 * h2 large: PyTorch keeps it on oneDNN.
            gwe = torch.ops.aten.convolution_backward(
                _exemplar_view(gm), _exemplar_view(xm), we.unsqueeze(2), None, [1, 1, 1], [0, p, p], [1, 1, 1],
                False, [0, 0, 0], 1, [False, True, False])[1].squeeze(2)
        gb = gm.reshape(-1, gm.shape[-1]).sum(0) if need_b else None
        return gx, gwt, gwe, gb


def center_pivot_channels_last(x: torch.Tensor, wt: torch.Tensor, we: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Center-pivot conv of a volume (any layout), returned as a channels-last volume."""
    return _CenterPivotChannelsLast.apply(to_channels_last_volume(x), wt, we, bias)


def group_norm_channels_last(x: torch.Tensor, norm: torch.nn.GroupNorm, relu: bool = False) -> torch.Tensor:
    """nn.GroupNorm (then ReLU if ``relu``) on a channels-last volume, through PyTorch's NDHWC kernel.

    The ReLU runs in place on the norm's own output, like ``nn.ReLU(inplace=True)`` after it did:
    applied to the 6D view of it instead, autograd would record an in-place op on a view and copy the
    whole volume twice in backward (CopySlices).
    """
    b, c, h1, w1, h2, w2 = x.shape
    m = to_channels_last_volume(x).permute(0, 2, 3, 4, 5, 1)
    y = F.group_norm(_target_view(m), norm.num_groups, norm.weight, norm.bias, norm.eps)
    if relu:
        y = y.relu_()
    return _volume(y, (b, h1, w1, h2, w2))


def phi_channels_last(phi: nn.Sequential, a: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, c: torch.Tensor,
                      eps: float) -> torch.Tensor:
    """``phi(cat([(a - mean) / (std + eps), c], dim=1))`` in channels-last volumes: the adapter's CPU path.

    ``a`` (B, heads, h1, w1, h2, w2) float32, ``mean`` and ``std`` (B, heads, 1, 1, 1, 1), ``c`` (B, 1, ...).
    [A ; C] is written straight into the layout the convolutions read, instead of a channels-first cat
    and a reorder copy of it; each GroupNorm (and the ReLU after it) runs through the channels-last
    kernel. Returns a channels-last volume (B, heads, h1, w1, h2, w2); tests/modules/test_adapter_fast_path.py
    checks it against the readable path of ``AMAdapter.pooled_refinement``, outputs and gradients.
    """
    b, heads = a.shape[:2]
    r = a.new_empty(b, *a.shape[2:], heads + 1)
    ra = r[..., :heads]
    ra.copy_(a.permute(0, 2, 3, 4, 5, 1))
    ra.sub_(mean.view(b, 1, 1, 1, 1, heads)).div_((std + eps).view(b, 1, 1, 1, 1, heads))
    r[..., heads].copy_(c[:, 0])
    x = r.permute(0, 5, 1, 2, 3, 4)
    layers = list(phi)
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, nn.GroupNorm):
            relu = i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU)
            x = group_norm_channels_last(x, layer, relu=relu)
            i += 1 + relu
        else:  # CenterPivotConv4d takes its own fast path on this float32 CPU volume
            x = layer(x)
            i += 1
    return x
