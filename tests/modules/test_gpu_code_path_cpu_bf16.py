"""The view-based 4D conv (the GPU's path) in bf16 on the CPU: its weight gradients must be finite.

Found by tests/e2e/test_gpu_code_path.py: with torch 2.14's CPU build, oneDNN's bf16 conv3d weight gradient
for a (3, 3, 1) kernel is NaN or garbage when the input's first two spatial dims are 2x2 and the batch
is 2 or more: exactly the target conv of ``center_pivot_views`` on the 2x2 layers of SD 1.5 at 64 px.
The exemplar conv's (1, 3, 3) kernel, conv2d, fp32 and the batch-1 case are right; CUDA runs cuDNN.
amlight/modules/conv4d.py computes the CPU's bf16 / fp16 case in fp32 (tests/modules/test_conv4d_cpu_half.py).
"""
import pytest
import torch
import torch.nn.functional as F

from amlight.modules.conv4d import CenterPivotConv4d
from amlight.modules.conv4d_cpu import fast_path_enabled


def _weight_grads(conv, x, upstream, dtype):
    conv.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y = conv(x)
    (y.float() * upstream).sum().backward()
    return {n: p.grad.float().clone() for n, p in conv.named_parameters()}


@pytest.mark.parametrize("batch", [2, 3])
def test_generic_4d_conv_weight_gradients_in_bf16_autocast_match_fp32_on_2x2_layers(batch):
    torch.manual_seed(0)
    conv = CenterPivotConv4d(9, 16)
    with torch.no_grad():
        for p in conv.parameters():
            p.normal_(0, 0.1)
    x = torch.randn(batch, 9, 2, 2, 2, 2)
    upstream = torch.randn(batch, 16, 2, 2, 2, 2)
    with fast_path_enabled(False):  # CUDA's path
        ref = _weight_grads(conv, x, upstream, torch.float32)
        bf16 = _weight_grads(conv, x, upstream, torch.bfloat16)
    for name, grad in bf16.items():
        assert torch.isfinite(grad).all(), f"{name}: non-finite gradient in bf16"
        assert float((grad - ref[name]).abs().max()) <= 2e-2 * float(ref[name].abs().max()), name


def test_the_same_conv_is_right_at_batch_1_and_on_larger_layers():
    """Where the PyTorch bug is not: what the test above isolates (raw conv3d, no amlight fix)."""
    torch.manual_seed(0)
    for batch, side in ((1, 2), (2, 3), (2, 4)):
        x = torch.randn(batch, 9, side, side, side * side).bfloat16().requires_grad_()
        w = (torch.randn(16, 9, 3, 3, 1) * 0.1).bfloat16().requires_grad_()
        F.conv3d(x, w, padding=(1, 1, 0)).float().square().sum().backward()
        assert torch.isfinite(w.grad).all(), (batch, side)
