"""4D convolution, pooling and unpooling on correlation volumes (B, C, h1, w1, h2, w2).

Dims (h1, w1) are target positions and (h2, w2) exemplar positions, as in the attention logits
(rows target, columns exemplar, both row-major). Everything here works on the 4D volume: the
flattened (h1*w1, h2*w2) matrix is never resized as if it were an image, because neighbouring rows
of that matrix are not neighbouring target positions (METHOD.md, "Traps").
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


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
        b, c, h1, w1, h2, w2 = x.shape
        if c != self.in_channels:
            raise ValueError(f"CenterPivotConv4d was built for {self.in_channels} input channels, got {c}")
        co, pad = self.out_channels, self.kernel_size // 2
        # Each 2D conv is a 3D conv with a flat third kernel dim on a *view* of the volume: the target
        # conv sees (b, c, h1, w1, h2*w2) and slides over (h1, w1) only; the exemplar conv sees
        # (b, c, h1*w1, h2, w2) and slides over (h2, w2) only. No permuted copies of the volume: at
        # SD's 32^4 those copies and the strided sum of the two results cost more than the convolutions
        # (one adapter call, 8 rows, 2 CPU cores: 1.70 s a row with permutes, 0.63 s like this).
        # The weights stay the two Conv2d modules' own, so checkpoints are unchanged.
        yt = F.conv3d(x.reshape(b, c, h1, w1, h2 * w2), self.target_conv.weight.unsqueeze(-1), padding=(pad, pad, 0))
        ye = F.conv3d(x.reshape(b, c, h1 * w1, h2, w2), self.exemplar_conv.weight.unsqueeze(2), padding=(0, pad, pad))
        # In place: the convolutions' backward needs their inputs and weights, not their outputs.
        return yt.view(b, co, h1, w1, h2, w2).add_(ye.view(b, co, h1, w1, h2, w2)).add_(self.bias.view(1, co, 1, 1, 1, 1))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"


def _is_identity(x: torch.Tensor, factor: int, where: str) -> bool:
    """Validate a (un)pooling call; True when factor 1 makes it a no-op."""
    _check_volume(x, where)
    if factor < 1:
        raise ValueError(f"{where} factor must be >= 1, got {factor}")
    return factor == 1


def pool4d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average over factor x factor target and factor x factor exemplar neighbourhoods."""
    if _is_identity(x, factor, "pool4d"):
        return x
    dims = tuple(x.shape[2:])
    if any(d % factor for d in dims):
        raise ValueError(
            f"pool4d: factor {factor} does not divide the spatial sizes (h1, w1, h2, w2) = {dims}"
        )
    # One dim at a time, innermost first: each pass is a cheap reduction of a contiguous-ish axis and
    # shrinks the volume for the next (about 2x faster on CPU than one 4-axis mean at 64^4).
    for dim in (5, 4, 3, 2):
        shape = list(x.shape)
        x = x.reshape(*shape[:dim], shape[dim] // factor, factor, *shape[dim + 1 :]).mean(dim + 1)
    return x


def unpool4d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest upsampling in 4D: the inverse layout of :func:`pool4d` (each entry fills its neighbourhood)."""
    if _is_identity(x, factor, "unpool4d"):
        return x
    b, c, h1, w1, h2, w2 = x.shape
    f = factor
    grown = x.reshape(b, c, h1, 1, w1, 1, h2, 1, w2, 1).expand(b, c, h1, f, w1, f, h2, f, w2, f)
    return grown.reshape(b, c, h1 * f, w1 * f, h2 * f, w2 * f)
