"""The adapter's CPU fast path (channels-last volumes, oneDNN convolutions, written-out backward,
broadcast unpooling) computes what the readable formulation computes: outputs and gradients.

The reference for the adapter is its own readable path, ``AMAdapter.forward`` with the fast path
switched off: channels-first cat of [A ; C], center-pivot conv as two conv3d on views, nn.GroupNorm,
ReLU, materialised unpooling (what the GPU runs). Its parts are checked here against plain
formulations: ``reference_pivot`` (two F.conv3d on views) and ``reference_pool4d`` (a mean per dim).
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from amlight.modules.adapter import AMAdapter
from amlight.modules.conv4d import CenterPivotConv4d, pool4d
from amlight.modules.conv4d_cpu import (
    ENV_SWITCH, fast_path_enabled, group_norm_channels_last, is_channels_last_volume, phi_channels_last,
    to_channels_last_volume, use_fast_path,
)

from helpers.adapter_inputs import logits_and_cost, randomize


def reference_pivot(conv: CenterPivotConv4d, x: torch.Tensor) -> torch.Tensor:
    b, c, h1, w1, h2, w2 = x.shape
    co, pad = conv.out_channels, conv.kernel_size // 2
    yt = F.conv3d(x.reshape(b, c, h1, w1, h2 * w2), conv.target_conv.weight.unsqueeze(-1), padding=(pad, pad, 0))
    ye = F.conv3d(x.reshape(b, c, h1 * w1, h2, w2), conv.exemplar_conv.weight.unsqueeze(2), padding=(0, pad, pad))
    return yt.view(b, co, h1, w1, h2, w2) + ye.view(b, co, h1, w1, h2, w2) + conv.bias.view(1, co, 1, 1, 1, 1)


def reference_pool4d(x, factor):
    if factor == 1:
        return x
    for dim in (5, 4, 3, 2):
        shape = list(x.shape)
        x = x.reshape(*shape[:dim], shape[dim] // factor, factor, *shape[dim + 1:]).mean(dim + 1)
    return x


def reference_adapter(adapter: AMAdapter, group, logits, cost, size):
    """The adapter's readable path (AMAdapter.forward with the fast path off), as a reference. On a
    copy of the cost: a new tensor never hits the adapter's pooled-cost cache, which the tests of that
    cache must not rely on."""
    with fast_path_enabled(False):
        return adapter(group, logits, cost.clone(), size)


def _grads(module):
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


def _close(a, b, rel=1e-4, scale=None):
    """max |a - b| within rel of b's largest entry (or of ``scale``: a bias in front of a GroupNorm
    has an analytic gradient of 0, so its float noise is judged against the model's gradients)."""
    scale = b.detach().abs().max().clamp_min(1e-6) if scale is None else scale
    return float((a.detach() - b.detach()).abs().max() / scale) <= rel


def _fast_path_available() -> bool:
    with fast_path_enabled(True):  # the hardware's answer, whatever AMLIGHT_CONV4D_FAST says
        return use_fast_path(torch.zeros(1), torch.zeros(1))


pytestmark = pytest.mark.skipif(not _fast_path_available(), reason="the fast path needs float32 oneDNN on the CPU")


@pytest.fixture(autouse=True)
def _switch_from_the_environment_unset(monkeypatch):
    """These tests compare the fast path with the generic one: a CI job that exports
    AMLIGHT_CONV4D_FAST=0 (to rehearse the GPU's path) must not turn them into generic vs generic."""
    monkeypatch.delenv(ENV_SWITCH, raising=False)


@pytest.mark.parametrize("batch,c_in,c_out,size,k", [
    (1, 9, 16, (6, 5, 4, 7), 3),   # batch 1: the case PyTorch sends to slow_conv3d
    (2, 3, 4, (5, 5, 5, 5), 3),
    (1, 4, 2, (3, 4, 6, 2), 5),    # kernel larger than some dims
    (3, 2, 3, (4, 4, 4, 4), 1),
    (2, 2, 3, (17, 16, 16, 16), 3),  # above 16^4 with b > 1: the matmul loop, not convolution_backward
])
def test_center_pivot_fast_path_equals_views_in_outputs_and_gradients(batch, c_in, c_out, size, k):
    conv = randomize(CenterPivotConv4d(c_in, c_out, k), seed=1)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, c_in, *size, generator=g)
    upstream = torch.randn(batch, c_out, *size, generator=g)

    xr = x.clone().requires_grad_(True)
    ref = reference_pivot(conv, xr)
    (ref * upstream).sum().backward()
    ref_grads, ref_gx = _grads(conv), xr.grad
    conv.zero_grad()

    xf = x.clone().requires_grad_(True)
    out = conv(xf)
    assert is_channels_last_volume(out) and out.shape == ref.shape
    (out * upstream).sum().backward()
    assert _close(out, ref.detach())
    assert _close(xf.grad, ref_gx)
    for name, grad in _grads(conv).items():
        assert _close(grad, ref_grads[name]), name
    assert set(_grads(conv)) == set(ref_grads) == {"target_conv.weight", "exemplar_conv.weight", "bias"}


def test_center_pivot_views_equals_the_reference_in_outputs_and_gradients():
    """The readable path's conv (what the GPU runs) against two plain F.conv3d on views."""
    conv = randomize(CenterPivotConv4d(3, 5), seed=24)
    g = torch.Generator().manual_seed(25)
    x = torch.randn(2, 3, 5, 4, 4, 6, generator=g)
    upstream = torch.randn(2, 5, 5, 4, 4, 6, generator=g)
    xr, xv = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref = reference_pivot(conv, xr)
    (ref * upstream).sum().backward()
    ref_grads = _grads(conv)
    conv.zero_grad()
    with fast_path_enabled(False):
        out = conv(xv)
    (out * upstream).sum().backward()
    assert not is_channels_last_volume(out) and _close(out, ref.detach()) and _close(xv.grad, xr.grad)
    for name, grad in _grads(conv).items():
        assert _close(grad, ref_grads[name]), name


@pytest.mark.parametrize("batch,heads,channels,layers", [(1, 8, 16, 3), (2, 2, 5, 3), (3, 4, 8, 2)])
def test_phi_channels_last_equals_phi_of_the_stacked_volume(batch, heads, channels, layers):
    """The one function of the adapter's CPU path against the readable phi(cat([A_std ; C]))."""
    adapter = randomize(AMAdapter(heads=heads, channels=channels, num_layers=layers), seed=26)
    g = torch.Generator().manual_seed(27)
    a = torch.randn(batch, heads, 4, 3, 4, 5, generator=g) * 3 + 1
    c = (torch.rand(batch, 1, 4, 3, 4, 5, generator=g) > 0.5).float()
    mean, std = a.mean(dim=(2, 3, 4, 5), keepdim=True), a.std(dim=(2, 3, 4, 5), keepdim=True)
    upstream = torch.randn(batch, heads, 4, 3, 4, 5, generator=g)
    phi = adapter.phi["mid"]
    with fast_path_enabled(False):
        ref = phi(torch.cat([(a - mean) / (std + 1e-5), c], dim=1))
    (ref * upstream).sum().backward()
    ref_grads = _grads(adapter)
    adapter.zero_grad()
    out = phi_channels_last(phi, a, mean, std, c, eps=1e-5)
    (out * upstream).sum().backward()
    assert is_channels_last_volume(out) and out.shape == ref.shape and _close(out, ref.detach())
    grads = _grads(adapter)
    assert set(grads) == set(ref_grads) and len(grads) == 5 * layers - 2
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    for name, grad in grads.items():
        assert _close(grad, ref_grads[name], scale=scale), name


@pytest.mark.parametrize("shape,factor", [((2, 3, 4, 4, 4, 4), 2), ((1, 2, 8, 4, 8, 4), 4), ((1, 1, 6, 2, 4, 8), 2)])
def test_pool4d_equals_the_mean_over_one_dim_at_a_time(shape, factor):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(14))
    assert _close(pool4d(x, factor), reference_pool4d(x, factor), rel=1e-6)


def test_center_pivot_accepts_channels_first_and_channels_last_input_alike():
    conv = randomize(CenterPivotConv4d(3, 4), seed=3)
    x = torch.randn(2, 3, 4, 5, 3, 4)
    assert torch.equal(conv(x), conv(to_channels_last_volume(x)))


def test_group_norm_channels_last_equals_group_norm():
    norm = randomize(nn.GroupNorm(4, 8), seed=4)
    x = torch.randn(2, 8, 3, 4, 5, 2)
    xr, xf = x.clone().requires_grad_(True), to_channels_last_volume(x.clone()).requires_grad_(True)
    upstream = torch.randn(x.shape)
    ref = norm(xr)
    (ref * upstream).sum().backward()
    ref_grads = _grads(norm)
    norm.zero_grad()
    out = group_norm_channels_last(xf, norm)
    (out * upstream).sum().backward()
    assert _close(out, ref.detach()) and _close(xf.grad, xr.grad)
    for name, grad in _grads(norm).items():
        assert _close(grad, ref_grads[name]), name


@pytest.mark.parametrize("batch,heads,channels,layers,max_res,size", [
    (1, 8, 16, 3, 8, (8, 8)),     # SD's shape of phi, batch 1
    (2, 2, 4, 3, 4, (8, 8)),      # pooled 4D by 2
    (3, 4, 8, 2, 4, (8, 4)),      # non-square layer, pooled
    (2, 2, 5, 3, 8, (6, 5)),      # channels without a 4-group: GroupNorm(1, 5)
])
def test_adapter_fast_path_equals_reference_formulation(batch, heads, channels, layers, max_res, size):
    adapter = randomize(AMAdapter(heads=heads, channels=channels, num_layers=layers, max_resolution=max_res), seed=5)
    logits, cost = logits_and_cost(batch, heads, *size, seed=6)
    upstream = torch.randn(logits.shape, generator=torch.Generator().manual_seed(7))
    for group in ("down", "up"):
        ref = reference_adapter(adapter, group, logits, cost, size)
        (ref * upstream).sum().backward()
        ref_grads = _grads(adapter)
        adapter.zero_grad()

        out = adapter(group, logits, cost, size)
        (out * upstream).sum().backward()
        assert out.shape == ref.shape and _close(out, ref.detach())
        with torch.no_grad():
            assert _close(adapter.refine(group, logits, cost, size), logits + ref.detach(), rel=1e-6)
            buffer = logits.clone()
            adapter.refine(group, buffer, cost, size, inplace=True)
            assert _close(buffer, logits + ref.detach(), rel=1e-6)
        grads = _grads(adapter)
        assert set(grads) == set(ref_grads) and len(grads) == 5 * layers - 2
        scale = max(float(g.abs().max()) for g in ref_grads.values())
        for name, grad in grads.items():
            assert _close(grad, ref_grads[name], scale=scale), name
        adapter.zero_grad()


def test_refine_equals_logits_plus_forward_in_value_and_gradients():
    adapter = randomize(AMAdapter(heads=2, channels=4, max_resolution=4), seed=8)
    size = (8, 8)
    logits, cost = logits_and_cost(2, 2, *size, seed=9)
    upstream = torch.randn(logits.shape)
    la = logits.clone().requires_grad_(True)
    ref = la + adapter("mid", la, cost, size)
    (ref * upstream).sum().backward()
    ref_grads = _grads(adapter)
    adapter.zero_grad()
    lb = logits.clone().requires_grad_(True)
    out = adapter.refine("mid", lb, cost, size)
    (out * upstream).sum().backward()
    assert out.shape == logits.shape and out.is_contiguous()
    assert _close(out, ref.detach(), rel=1e-6)
    assert torch.equal(lb.grad, la.grad)  # identity: the adapter's input is detached
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    for name, grad in _grads(adapter).items():
        assert _close(grad, ref_grads[name], rel=1e-6, scale=scale), name


def test_switching_the_fast_path_off_gives_the_same_numbers():
    adapter = randomize(AMAdapter(heads=2, channels=4, max_resolution=4), seed=10)
    logits, cost = logits_and_cost(1, 2, 8, 8, seed=11)
    fast = adapter("up", logits, cost, (8, 8))
    with fast_path_enabled(False):
        slow = adapter("up", logits, cost, (8, 8))
    assert use_fast_path(logits, logits)
    assert not torch.equal(fast, torch.zeros_like(fast)) and _close(fast, slow)


def test_refine_in_place_adds_into_the_logits_and_equals_the_sum():
    adapter = randomize(AMAdapter(heads=2, channels=4, max_resolution=4), seed=12)
    logits, cost = logits_and_cost(1, 2, 8, 8, seed=13)
    expected = logits + adapter("down", logits, cost, (8, 8))
    buffer = logits.clone()
    with torch.no_grad():
        out = adapter.refine("down", buffer, cost, (8, 8), inplace=True)
    assert out.data_ptr() == buffer.data_ptr() and not torch.equal(out, logits)
    assert _close(out, expected, rel=1e-6)


def test_pooled_cost_is_reused_only_for_the_same_unmodified_cost_tensor():
    adapter = randomize(AMAdapter(heads=2, channels=4, max_resolution=4), seed=15)
    logits, cost = logits_and_cost(1, 2, 8, 8, seed=16)
    _, other = logits_and_cost(1, 2, 8, 8, seed=17)
    first = adapter("down", logits, cost, (8, 8))
    assert torch.equal(adapter("down", logits, cost, (8, 8)), first)  # cached path, same numbers
    assert _close(adapter("down", logits, other, (8, 8)), reference_adapter(adapter, "down", logits, other, (8, 8)))
    cost.logical_not_()  # same tensor object, new contents: must not reuse the stale pooled cost
    assert _close(adapter("down", logits, cost, (8, 8)), reference_adapter(adapter, "down", logits, cost, (8, 8)))
    import pickle
    assert pickle.loads(pickle.dumps(adapter)).config == adapter.config


def test_inference_mode_costs_work_and_are_not_cached():
    adapter = randomize(AMAdapter(heads=2, channels=4, max_resolution=4), seed=18)
    logits, cost = logits_and_cost(1, 2, 8, 8, seed=19)
    expected = reference_adapter(adapter, "up", logits, cost, (8, 8))
    with torch.inference_mode():
        c, lg = cost.clone(), logits.clone()
        first = adapter("up", lg, c, (8, 8))
        c.logical_not_()  # an inference tensor has no version counter: a cache could not see this
        second = adapter("up", lg, c, (8, 8))
    assert _close(first, expected)
    assert _close(second, reference_adapter(adapter, "up", logits, ~cost, (8, 8)))


@pytest.mark.parametrize("value,fast", [("0", False), ("false", False), ("off", False), ("1", True), ("", True)])
def test_environment_switch_decides_the_path_and_the_context_manager_overrides_it(monkeypatch, value, fast):
    import amlight.modules.conv4d as conv4d

    calls = []
    real = conv4d.center_pivot_channels_last
    monkeypatch.setattr(conv4d, "center_pivot_channels_last", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv(ENV_SWITCH, value)
    conv = randomize(CenterPivotConv4d(3, 4), seed=20)
    x = torch.randn(1, 3, 4, 4, 4, 4)
    assert use_fast_path(x, x) is fast
    out = conv(x)
    assert bool(calls) is fast and is_channels_last_volume(out) is fast
    with fast_path_enabled(not fast):
        assert use_fast_path(x, x) is (not fast)
    assert use_fast_path(x, x) is fast  # the environment decides again after the block


def test_fast_and_generic_paths_agree_in_outputs_and_gradients_through_the_switch(monkeypatch):
    """The GPU runs the generic path (tests/e2e/test_gpu_code_path.py rehearses it with this switch):
    the adapter must compute the same numbers and gradients on both sides of it."""
    adapter = randomize(AMAdapter(heads=4, channels=8, num_layers=3, max_resolution=4), seed=21)
    logits, cost = logits_and_cost(2, 4, 8, 8, seed=22)
    upstream = torch.randn(logits.shape, generator=torch.Generator().manual_seed(23))
    results = {}
    for value in ("1", "0"):
        monkeypatch.setenv(ENV_SWITCH, value)
        assert use_fast_path(logits, logits) is (value == "1")
        out = adapter("down", logits, cost, (8, 8))
        (out * upstream).sum().backward()
        results[value] = out.detach(), _grads(adapter)
        adapter.zero_grad()
    (fast, fast_grads), (generic, generic_grads) = results["1"], results["0"]
    assert _close(fast, generic) and not torch.equal(generic, torch.zeros_like(generic))
    assert set(fast_grads) == set(generic_grads) and len(fast_grads) == 5 * 3 - 2
    scale = max(float(g.abs().max()) for g in generic_grads.values())
    for name, grad in fast_grads.items():
        assert _close(grad, generic_grads[name], scale=scale), name


def test_cuda_tensors_never_take_the_cpu_fast_path():
    class OnCuda:  # what use_fast_path reads of a tensor; no GPU needed to build a cuda device object
        device, dtype = torch.device("cuda", 0), torch.float32

    with fast_path_enabled(True):
        assert not use_fast_path(OnCuda(), OnCuda())
