"""4D convolution, pooling and unpooling on correlation volumes (B, C, h1, w1, h2, w2).

Dims (h1, w1) are target positions and (h2, w2) exemplar positions, as in the attention logits
(rows target, columns exemplar, both row-major). Everything here works on the 4D volume: the
flattened (h1*w1, h2*w2) matrix is never resized as if it were an image, because neighbouring rows
of that matrix are not neighbouring target positions (docs/method.md#traps).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from amlight.modules.conv4d_cpu import center_pivot_channels_last, use_fast_path


def _check_volume(x: torch.Tensor, where: str) -> None:
    if x.ndim != 6:
        raise ValueError(f"{where} expects a volume (B, C, h1, w1, h2, w2), got shape {tuple(x.shape)}")


class CenterPivotConv4d(nn.Module):
    """A separable 4D conv: 2D conv over the target dims plus 2D conv over the exemplar dims.

    The full k^4 kernel would cost k^4 * C_in * C_out weights and as many multiply-adds per entry;
    the center-pivot form keeps only the two kernel slices through the centre (2 k^2), which is what
    keeps the adapter at tens of thousands of parameters and lets it run on 32^4 volumes.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number ('same' padding), got {kernel_size}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        pad = kernel_size // 2
        # A bias on each 2D conv would be two copies of the same constant: keep one.
        self.target_conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad, bias=False)
        self.exemplar_conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def zero_(self) -> "CenterPivotConv4d":
        with torch.no_grad():
            self.target_conv.weight.zero_()
            self.exemplar_conv.weight.zero_()
            self.bias.zero_()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_volume(x, "CenterPivotConv4d")
        c = x.shape[1]
        if c != self.in_channels:
            raise ValueError(f"CenterPivotConv4d was built for {self.in_channels} input channels, got {c}")
        if use_fast_path(x, self.target_conv.weight):
            return center_pivot_channels_last(x, self.target_conv.weight, self.exemplar_conv.weight, self.bias)
        return center_pivot_views(x, self.target_conv.weight, self.exemplar_conv.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"


_HALF = (torch.bfloat16, torch.float16)


def _cpu_half_result_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype the conv would give where the CPU would compute it in bf16 / fp16, else None.

    On the CPU, oneDNN's bf16 conv3d weight gradient is NaN or garbage for the target conv when
    (h1, w1) is 2x2 and the batch is 2 or more (torch 2.14.1; tests/modules/test_gpu_code_path_cpu_bf16.py),
    exactly SD 1.5's 2x2 layers at 64 px. CUDA (cuDNN) is right and keeps its half-precision convs.
    """
    if x.device.type != "cpu":
        return None
    if torch.is_autocast_enabled("cpu") and x.dtype in (torch.float32, *_HALF):
        return torch.get_autocast_dtype("cpu")  # what autocast's conv3d would have returned
    return x.dtype if x.dtype in _HALF else None


def center_pivot_views(x: torch.Tensor, wt: torch.Tensor, we: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The center-pivot conv as two conv3d on views of a channels-first volume (CUDA, bf16, no oneDNN).

    On the CPU, a bf16 / fp16 call (by dtype or by CPU autocast) runs in fp32 with autocast off and
    casts back: the CPU's bf16 conv3d has a wrong weight gradient on 2x2 layers (see above). Only
    CPU rehearsals of the GPU's path run this way, so the fp32 copies cost no GPU memory.
    """
    half = _cpu_half_result_dtype(x)
    if half is not None:
        with torch.autocast("cpu", enabled=False):
            y = _center_pivot_views(x.float(), wt.float(), we.float(), bias.float())
        return y.to(half)
    return _center_pivot_views(x, wt, we, bias)


def _center_pivot_views(x: torch.Tensor, wt: torch.Tensor, we: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    b, c, h1, w1, h2, w2 = x.shape
    co, pad = wt.shape[0], wt.shape[-1] // 2
    # Each 2D conv is a 3D conv with a flat third kernel dim on a *view* of the volume: the target
    # conv sees (b, c, h1, w1, h2*w2) and slides over (h1, w1) only; the exemplar conv sees
    # (b, c, h1*w1, h2, w2) and slides over (h2, w2) only. No permuted copies of the volume: at
    # SD's 32^4 those copies and the strided sum of the two results cost more than the convolutions.
    yt = F.conv3d(x.reshape(b, c, h1, w1, h2 * w2), wt.unsqueeze(-1), padding=(pad, pad, 0))
    ye = F.conv3d(x.reshape(b, c, h1 * w1, h2, w2), we.unsqueeze(2), padding=(0, pad, pad))
    # In place: the convolutions' backward needs their inputs and weights, not their outputs.
    return yt.view(b, co, h1, w1, h2, w2).add_(ye.view(b, co, h1, w1, h2, w2)).add_(bias.view(1, co, 1, 1, 1, 1))


def _is_identity(x: torch.Tensor, factor: int, where: str) -> bool:
    """Validate a (un)pooling call; True when factor 1 makes it a no-op."""
    _check_volume(x, where)
    if factor < 1:
        raise ValueError(f"{where} factor must be >= 1, got {factor}")
    return factor == 1


def pool4d(x: torch.Tensor, factor: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Average over factor x factor target and factor x factor exemplar neighbourhoods (in ``dtype``)."""
    if _is_identity(x, factor, "pool4d"):
        return x if dtype is None else x.to(dtype)
    dims = tuple(x.shape[2:])
    if any(d % factor for d in dims):
        raise ValueError(
            f"pool4d: factor {factor} does not divide the spatial sizes (h1, w1, h2, w2) = {dims}"
        )
    b, c, h1, w1, h2, w2 = x.shape
    f = factor
    dtype = x.dtype if dtype is None else dtype
    out = torch.empty(b, c, h1 // f, w1 // f, h2 // f, w2 // f, dtype=dtype, device=x.device)
    # A few pooled target rows at a time, by sums of the f slices of each dim, outermost first (each
    # sum reads whole contiguous runs). At 64x64 the volume is 512 MB: pooled whole, every pass made a
    # new volume-sized intermediate, and first-touching fresh memory (page faults) cost more than the
    # arithmetic. Chunks of ~8 MB reuse the same memory.
    row_bytes = max(1, x[:, :, :f].numel() * torch.finfo(dtype).bits // 8) if dtype.is_floating_point else 1
    rows = max(1, (8 << 20) // row_bytes)
    for i in range(0, h1 // f, rows):
        y = x[:, :, i * f:(i + rows) * f].to(dtype)
        for dim in (2, 3, 4, 5):
            y = _sum_slices(y, dim, f)
        torch.div(y, f ** 4, out=out[:, :, i:i + rows])
    return out


def _sum_slices(x: torch.Tensor, dim: int, f: int) -> torch.Tensor:
    """Sum of the f consecutive entries along ``dim`` (its size shrinks f-fold)."""
    shape = list(x.shape)
    v = x.view(*shape[:dim], shape[dim] // f, f, *shape[dim + 1:])
    out = v.select(dim + 1, 0) + v.select(dim + 1, 1)
    for k in range(2, f):
        out += v.select(dim + 1, k)
    return out


def unpool4d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest upsampling in 4D: the inverse layout of :func:`pool4d` (each entry fills its neighbourhood)."""
    if _is_identity(x, factor, "unpool4d"):
        return x
    b, c, h1, w1, h2, w2 = x.shape
    f = factor
    grown = x.reshape(b, c, h1, 1, w1, 1, h2, 1, w2, 1).expand(b, c, h1, f, w1, f, h2, f, w2, f)
    return grown.reshape(b, c, h1 * f, w1 * f, h2 * f, w2 * f)


def add_unpool4d(logits: torch.Tensor, x: torch.Tensor, factor: int, inplace: bool = False) -> torch.Tensor:
    """``logits + unpool4d(x, factor)`` on flattened logits, without materialising the unpooled volume.

    ``logits`` (B, C, h1*w1, h2*w2), any strides that split into those dims without a copy (e.g. the
    exemplar half of a [self ; exemplar] buffer); ``x`` the pooled volume (B, C, h1/f, w1/f, h2/f,
    w2/f). At a 64x64 layer the unpooled copy would be as large as the logits (512 MB for 8 heads in
    float32) only to be added: here each pooled entry is broadcast over its neighbourhood in the
    addition itself. ``inplace``: add into ``logits`` and return it (the caller makes sure no graph
    needs the old values).
    """
    _check_volume(x, "add_unpool4d")
    b, c, hp, wp, hp2, wp2 = x.shape
    f = factor
    if factor < 1 or tuple(logits.shape) != (b, c, hp * f * wp * f, hp2 * f * wp2 * f):
        raise ValueError(f"add_unpool4d: a volume {tuple(x.shape)} unpooled by {factor} does not match logits "
                         f"of shape {tuple(logits.shape)}")
    n, nx = logits.shape[2], logits.shape[3]
    x = x.contiguous()
    if f == 1:
        grown = x.view(b, c, n, nx)
        return logits.add_(grown) if inplace else logits + grown
    # Grown (copied) along the exemplar width only, the sum broadcasts contiguous rows of w2 entries
    # over the other three dims; a broadcast over all four dims has an innermost run of f entries,
    # which is slower.
    target = logits.view(b, c, hp, f, wp, f, hp2, f, wp2 * f)
    if inplace:
        # A few pooled target rows at a time: the grown refinement stays a few MB.
        rows = max(1, (4 << 20) // max(1, x[:, :, :1].numel() * f * x.element_size()))
        for i in range(0, hp, rows):
            d = x[:, :, i:i + rows]
            grown = d.unsqueeze(-1).expand(*d.shape, f).reshape(*d.shape[:5], -1)
            target[:, :, i:i + rows].add_(grown.view(b, c, grown.shape[2], 1, wp, 1, hp2, 1, -1))
        return logits
    grown = x.unsqueeze(-1).expand(*x.shape, f).reshape(b, c, hp, 1, wp, 1, hp2, 1, -1)
    return (target + grown).reshape(b, c, n, nx)
