"""The view-based 4D conv (CUDA's path) in bf16 on the CPU: amlight computes it in fp32 and casts back.

torch 2.14.1's CPU (oneDNN) bf16 conv3d gives a NaN / garbage weight gradient for the target conv's
(3, 3, 1) kernel on 2x2 target layers at batch >= 2; without the fp32 detour in
amlight/modules/conv4d.py the first test fails.
"""
import pytest
import torch

from amlight.modules.conv4d import center_pivot_views


def _weights(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    wt = (torch.randn(16, 9, 3, 3, generator=g) * 0.1).to(dtype).requires_grad_()
    we = (torch.randn(16, 9, 3, 3, generator=g) * 0.1).to(dtype).requires_grad_()
    bias = (torch.randn(16, generator=g) * 0.1).to(dtype).requires_grad_()
    return wt, we, bias


def _volume(batch=2, side=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 9, side, side, side, side, generator=g)


def _grads(x, params, autocast):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = center_pivot_views(x, *params)
    upstream = torch.ones_like(y, dtype=torch.float32)
    (y.float() * upstream).sum().backward()
    return y, [p.grad.float() for p in params]


def test_bf16_autocast_on_2x2_layers_at_batch_2_gives_finite_weight_gradients_close_to_fp32():
    x = _volume()
    _, reference = _grads(x, _weights(), autocast=False)
    y, grads = _grads(x, _weights(), autocast=True)
    assert y.dtype == torch.bfloat16  # what autocast's conv3d returns
    for name, grad, ref in zip(("target", "exemplar", "bias"), grads, reference):
        assert torch.isfinite(grad).all(), f"{name}: non-finite weight gradient"
        assert float((grad - ref).abs().max()) <= 2e-2 * float(ref.abs().max()), name


def test_bf16_tensors_without_autocast_stay_bf16_and_get_finite_gradients():
    x = _volume().bfloat16()
    params = _weights(torch.bfloat16)
    y, grads = _grads(x, params, autocast=False)
    assert y.dtype == torch.bfloat16 and all(p.grad.dtype == torch.bfloat16 for p in params)
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_precision_outside_autocast_is_untouched(dtype):
    x = _volume(side=3).to(dtype)
    wt, we, bias = (p.detach().to(dtype) for p in _weights())
    y = center_pivot_views(x, wt, we, bias)
    assert y.dtype == dtype
    # Reference: the two 2D convs of the definition, one per pair of dims.
    b, c, h1, w1, h2, w2 = x.shape
    xt = x.permute(0, 4, 5, 1, 2, 3).reshape(b * h2 * w2, c, h1, w1)
    yt = torch.nn.functional.conv2d(xt, wt, padding=1).reshape(b, h2, w2, 16, h1, w1).permute(0, 3, 4, 5, 1, 2)
    xe = x.permute(0, 2, 3, 1, 4, 5).reshape(b * h1 * w1, c, h2, w2)
    ye = torch.nn.functional.conv2d(xe, we, padding=1).reshape(b, h1, w1, 16, h2, w2).permute(0, 3, 1, 2, 4, 5)
    expected = yt + ye + bias.view(1, 16, 1, 1, 1, 1)
    torch.testing.assert_close(y, expected)
