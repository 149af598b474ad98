"""AM-Adapter and its 4D ops (docs/method.md#part-5-the-am-adapter): identity at init, layout-preserving 4D pooling,
center-pivot 4D conv against a direct reference, per-sample and per-group independence."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from amlight.modules.adapter import AMAdapter
from amlight.modules.conv4d import CenterPivotConv4d, pool4d, unpool4d

from helpers.adapter_inputs import logits_and_cost, randomize


# ---------------------------------------------------------------- adapter behaviour


@pytest.mark.parametrize("size", [(4, 4), (8, 4), (8, 8)])
def test_identity_at_init_for_every_group(size):
    adapter = AMAdapter(heads=2, channels=4, max_resolution=4)
    assert adapter.pool_factor(size) == (2 if max(size) == 8 else 1)
    logits, cost = logits_and_cost(2, 2, *size)
    for group in ("down", "mid", "up"):
        delta = adapter(group, logits, cost, size)
        assert delta.shape == logits.shape and delta.dtype == logits.dtype
        assert torch.equal(delta, torch.zeros_like(logits))


def test_output_follows_logits_dtype():
    adapter = AMAdapter(heads=2, channels=4)
    logits, cost = logits_and_cost(1, 2, 4, 4)
    delta = adapter("mid", logits.to(torch.bfloat16), cost, (4, 4))
    assert delta.dtype == torch.bfloat16 and delta.shape == logits.shape


def test_learns_and_sends_gradients_only_into_its_own_parameters():
    torch.manual_seed(0)
    adapter = AMAdapter(heads=2, channels=4, max_resolution=4)
    size = (8, 8)
    n = size[0] * size[1]
    # Logits from a leaf upstream of them, like Q K^T from the UNet's projections.
    q = torch.randn(1, 2, n, 4, requires_grad=True)
    kx = torch.randn(1, 2, n, 4)
    logits = q @ kx.transpose(-1, -2)
    logits.retain_grad()
    _, cost = logits_and_cost(1, 2, *size)
    target = torch.randn(1, 2, n, n)
    opt = torch.optim.SGD(adapter.parameters(), lr=0.5)

    delta = adapter("up", logits, cost, size)
    loss = (delta - target).pow(2).mean()
    loss.backward()
    assert q.grad is None and logits.grad is None
    last = adapter.phi["up"][-1]
    assert last.bias.grad is not None and last.bias.grad.abs().sum() > 0
    assert last.target_conv.weight.grad.abs().sum() > 0 and last.exemplar_conv.weight.grad.abs().sum() > 0
    for group in ("down", "mid"):
        assert all(p.grad is None for p in adapter.phi[group].parameters())
    opt.step()

    after = adapter("up", logits, cost, size)
    assert after.abs().max() > 0
    assert (after - target).pow(2).mean() < loss


@pytest.mark.parametrize("size,max_res", [((4, 4), 32), ((8, 8), 4)])
def test_no_cross_sample_leakage(size, max_res):
    adapter = randomize(AMAdapter(heads=2, channels=4, max_resolution=max_res), seed=1)
    logits, cost = logits_and_cost(2, 2, *size, seed=0)
    out = adapter("down", logits, cost, size)
    assert out[0].abs().max() > 0

    logits2, cost2 = logits.clone(), cost.clone()
    logits2[1] = logits2[1] * 10 + 5  # a much larger max/mean in sample 1 only
    cost2[1] = ~cost2[1]
    out2 = adapter("down", logits2, cost2, size)
    torch.testing.assert_close(out2[0], out[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out2[1], out[1], atol=1e-3)


def test_groups_have_separate_weights():
    adapter = randomize(AMAdapter(heads=2, channels=4), seed=2)
    ptrs = {g: {p.data_ptr() for p in adapter.phi[g].parameters()} for g in adapter.groups}
    assert not (ptrs["down"] & ptrs["mid"]) and not (ptrs["mid"] & ptrs["up"]) and not (ptrs["down"] & ptrs["up"])
    logits, cost = logits_and_cost(1, 2, 4, 4)
    before = {g: adapter(g, logits, cost, (4, 4)) for g in adapter.groups}
    assert not torch.allclose(before["down"], before["mid"])
    randomize(adapter.phi["down"], seed=3)
    for g in ("mid", "up"):
        assert torch.equal(adapter(g, logits, cost, (4, 4)), before[g])
    assert not torch.allclose(adapter("down", logits, cost, (4, 4)), before["down"])


def test_errors():
    adapter = AMAdapter(heads=8, groups=("down", "up"))
    logits, cost = logits_and_cost(1, 4, 4, 4)
    with pytest.raises(ValueError, match="adapter was built for 8 heads, layer has 4"):
        adapter("down", logits, cost, (4, 4))
    logits, cost = logits_and_cost(1, 8, 4, 4)
    with pytest.raises(ValueError, match=r"unknown adapter group 'mid'.*down, up"):
        adapter("mid", logits, cost, (4, 4))
    with pytest.raises(ValueError, match="size 3x3 = 9"):
        adapter("down", logits, cost, (3, 3))
    with pytest.raises(ValueError, match="cost of shape"):
        adapter("down", logits, cost.transpose(0, 1), (4, 4))
    with pytest.raises(ValueError, match="unknown block group"):
        AMAdapter(heads=2, groups=("down", "middle"))
    with pytest.raises(ValueError, match="odd"):
        CenterPivotConv4d(1, 1, kernel_size=2)
    with pytest.raises(ValueError, match="not divisible"):
        AMAdapter(heads=1, max_resolution=4)("down", *logits_and_cost(1, 1, 6, 5), (6, 5))


def test_max_resolution_is_an_argument_of_the_call_and_leaves_the_adapter_unchanged():
    """A call pooled to ``max_resolution`` computes what an adapter trained with that value computes
    (same weights); None is the adapter's own value, which no call changes."""
    adapter = randomize(AMAdapter(heads=2, channels=4, max_resolution=8), seed=3)
    pooled = AMAdapter(heads=2, channels=4, max_resolution=2)
    pooled.load_state_dict(adapter.state_dict())
    size = (8, 8)
    logits, cost = logits_and_cost(2, 2, *size, seed=4)
    assert adapter.pool_factor(size) == 1 and adapter.pool_factor(size, max_resolution=2) == 4
    assert adapter.pool_factor(size, 4) == pooled.pool_factor(size, 4) == 2
    per_call = adapter("up", logits, cost, size, max_resolution=2)
    assert torch.equal(per_call, pooled("up", logits, cost, size))
    assert not torch.allclose(per_call, adapter("up", logits, cost, size))
    assert torch.equal(adapter("up", logits, cost, size, max_resolution=None), adapter("up", logits, cost, size))
    with torch.no_grad():
        refined = adapter.refine("up", logits.clone(), cost, size, max_resolution=2, inplace=True)
    assert torch.allclose(refined, logits + pooled("up", logits, cost, size), rtol=0, atol=1e-6)
    assert adapter.max_resolution == adapter.config["max_resolution"] == 8
    with pytest.raises(ValueError, match="max_resolution must be >= 1"):
        adapter.pool_factor(size, max_resolution=0)
    with pytest.raises(ValueError, match="above max_resolution 3 but not divisible"):
        adapter("down", *logits_and_cost(1, 2, 6, 5), (6, 5), max_resolution=3)


def test_parameter_count_and_config_roundtrip():
    adapter = AMAdapter(heads=8)
    n = adapter.num_parameters
    assert 10_000 <= n <= 100_000
    assert n == sum(p.numel() for p in adapter.parameters() if p.requires_grad)
    rebuilt = AMAdapter(**adapter.config)
    rebuilt.load_state_dict(randomize(adapter).state_dict())
    logits, cost = logits_and_cost(1, 8, 4, 4)
    assert torch.equal(rebuilt("mid", logits, cost, (4, 4)), adapter("mid", logits, cost, (4, 4)))


# ---------------------------------------------------------------- 4D pooling


def _position_volume(s=8):
    i1, j1, i2, j2 = torch.meshgrid(*(torch.arange(s, dtype=torch.float64),) * 4, indexing="ij")
    return (1000 * i1 + 100 * j1 + 10 * i2 + j2)[None, None]


def test_pool4d_averages_exact_4d_neighbourhoods_and_unpool_maps_back():
    v = _position_volume(8)
    pooled = pool4d(v, 2)
    assert pooled.shape == (1, 1, 4, 4, 4, 4)
    ref = torch.empty(4, 4, 4, 4, dtype=torch.float64)
    for a, b, c, d in itertools.product(range(4), repeat=4):
        ref[a, b, c, d] = v[0, 0, 2 * a : 2 * a + 2, 2 * b : 2 * b + 2, 2 * c : 2 * c + 2, 2 * d : 2 * d + 2].mean()
    assert torch.equal(pooled[0, 0], ref)
    assert pooled[0, 0, 1, 2, 3, 0] == 1000 * 2.5 + 100 * 4.5 + 10 * 6.5 + 0.5

    up = unpool4d(pooled, 2)
    assert up.shape == v.shape
    for i1, j1, i2, j2 in itertools.product(range(8), repeat=4):
        if up[0, 0, i1, j1, i2, j2] != ref[i1 // 2, j1 // 2, i2 // 2, j2 // 2]:
            pytest.fail(f"unpooled entry {(i1, j1, i2, j2)} is not its own neighbourhood's value")


def test_interpolating_the_flattened_matrix_would_scramble_the_layout():
    v = _position_volume(8)
    ref = pool4d(v, 2)[0, 0]
    flat = v.reshape(1, 1, 64, 64)
    for mode in ("area", "bilinear"):
        kwargs = {} if mode == "area" else {"align_corners": False}
        wrong = F.interpolate(flat, size=(16, 16), mode=mode, **kwargs).reshape(4, 4, 4, 4)
        assert not torch.allclose(wrong, ref)


def test_pool4d_rejects_indivisible_sizes():
    with pytest.raises(ValueError, match=r"factor 2 does not divide.*\(4, 4, 4, 5\)"):
        pool4d(torch.zeros(1, 1, 4, 4, 4, 5), 2)
    with pytest.raises(ValueError, match="B, C, h1, w1, h2, w2"):
        pool4d(torch.zeros(1, 16, 16), 2)


# ---------------------------------------------------------------- center-pivot 4D conv


def _reference_conv4d(x, wt, we, bias):
    """Direct loops: out[o, p1, p2] = bias[o] + sum over the centred k x k windows in each grid."""
    bsz, cin, h1, w1, h2, w2 = x.shape
    cout, k = wt.shape[0], wt.shape[-1]
    r = k // 2
    out = torch.zeros(bsz, cout, h1, w1, h2, w2, dtype=torch.float64)

    def at(b, c, i1, j1, i2, j2):
        inside = 0 <= i1 < h1 and 0 <= j1 < w1 and 0 <= i2 < h2 and 0 <= j2 < w2
        return float(x[b, c, i1, j1, i2, j2]) if inside else 0.0

    for b, o, i1, j1, i2, j2 in itertools.product(range(bsz), range(cout), range(h1), range(w1), range(h2), range(w2)):
        s = float(bias[o])
        for c, u, t in itertools.product(range(cin), range(k), range(k)):
            s += float(wt[o, c, u, t]) * at(b, c, i1 + u - r, j1 + t - r, i2, j2)
            s += float(we[o, c, u, t]) * at(b, c, i1, j1, i2 + u - r, j2 + t - r)
        out[b, o, i1, j1, i2, j2] = s
    return out


def _set_conv(conv, wt, we, bias):
    with torch.no_grad():
        conv.target_conv.weight.copy_(wt)
        conv.exemplar_conv.weight.copy_(we)
        conv.bias.copy_(bias)


def test_center_pivot_conv_matches_direct_reference_one_channel():
    conv = CenterPivotConv4d(1, 1, 3)
    wt = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    we = -0.5 * torch.arange(9.0).reshape(1, 1, 3, 3) + 0.25
    bias = torch.tensor([0.5])
    _set_conv(conv, wt, we, bias)
    x = torch.randn(1, 1, 3, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(conv(x).double(), _reference_conv4d(x, wt, we, bias), rtol=1e-5, atol=1e-5)


def test_center_pivot_conv_matches_reference_rectangular_multichannel():
    # Unequal sizes catch swapped h/w or target/exemplar dims that a cube would hide.
    g = torch.Generator().manual_seed(1)
    conv = CenterPivotConv4d(2, 3, 3)
    wt, we, bias = torch.randn(3, 2, 3, 3, generator=g), torch.randn(3, 2, 3, 3, generator=g), torch.randn(3, generator=g)
    _set_conv(conv, wt, we, bias)
    x = torch.randn(2, 2, 3, 4, 2, 3, generator=g)
    torch.testing.assert_close(conv(x).double(), _reference_conv4d(x, wt, we, bias), rtol=1e-4, atol=1e-4)


def test_center_pivot_conv_shifts_with_its_input():
    conv = randomize(CenterPivotConv4d(2, 3, 3), seed=4)
    x = torch.randn(1, 2, 8, 8, 5, 6, generator=torch.Generator().manual_seed(2))
    y = conv(x)
    s1, s2 = 1, 2
    ys = conv(torch.roll(x, shifts=(s1, s2), dims=(2, 3)))
    # Away from borders (no padding, no wrap-around) the output moves with the target grid...
    torch.testing.assert_close(ys[:, :, s1 + 1 : 7, s2 + 1 : 7], y[:, :, 1 : 7 - s1, 1 : 7 - s2])
    # ...and does not stay put: the comparison above is not trivially true.
    assert not torch.allclose(ys[:, :, s1 + 1 : 7, s2 + 1 : 7], y[:, :, s1 + 1 : 7, s2 + 1 : 7])

    ye = conv(torch.roll(x, shifts=(1, 1), dims=(4, 5)))
    torch.testing.assert_close(ye[..., 2:4, 2:5], y[..., 1:3, 1:4])


def test_center_pivot_conv_gradients_pass_gradcheck():
    # The conv runs as 3D convs on views of the volume and sums in place: check its backward too,
    # against finite differences, for the input and all three parameters.
    g = torch.Generator().manual_seed(5)
    conv = CenterPivotConv4d(2, 2, 3).double()
    for p in conv.parameters():
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(1, 2, 3, 2, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    params = [conv.target_conv.weight, conv.exemplar_conv.weight, conv.bias]

    assert torch.autograd.gradcheck(lambda x: conv(x), (x,))
    out = conv(x)
    out.pow(2).sum().backward()
    analytic = [p.grad.clone() for p in params]
    eps = 1e-6
    for p, grad in zip(params, analytic):
        numeric = torch.zeros_like(p)
        flat = p.detach().view(-1)
        for i in range(flat.numel()):
            with torch.no_grad():
                flat[i] += eps
                up = conv(x).pow(2).sum()
                flat[i] -= 2 * eps
                down = conv(x).pow(2).sum()
                flat[i] += eps
            numeric.view(-1)[i] = (up - down) / (2 * eps)
        torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-6)
