"""Half-precision inference: float32 scheduler and inversion arithmetic, float32 adapter statistics,
float16-safe attention logits, and NaN / inf as a one-line error naming the step and the layer."""
import math

import pytest
import torch

from amlight.modules.adapter import AMAdapter
from amlight.modules.exemplar_attention import ExemplarAttnProcessor
from amlight.modules.exemplar_context import ExemplarContext, ExemplarRead
from amlight.pipeline.finite import NonFiniteOutputError
from amlight.pipeline.inversion import ddim_invert
from amlight.pipeline.sampling import ddim_denoise

from helpers.tiny_models import make_batch

LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


def test_bf16_model_keeps_inversion_and_sampling_latents_in_float32(tiny_model, tiny_backbone):
    model = tiny_model.to(torch.bfloat16)
    batch = make_batch(2)
    latents = batch["exemplar_image"].to(torch.bfloat16)
    trajectory = ddim_invert(model, tiny_backbone, latents, batch["exemplar_labels"], steps=3)
    assert all(x.dtype == torch.float32 for x in trajectory)

    scheduler = tiny_backbone.sample_scheduler()
    scheduler.set_timesteps(3)
    seen = []
    step = scheduler.step
    scheduler.step = lambda out, t, x: seen.append((out.dtype, x.dtype)) or step(out, t, x)
    prompt = tiny_backbone.prompt_batch(2)
    x = ddim_denoise(model, scheduler, trajectory[0].to(torch.bfloat16), batch["labels"], prompt,
                     tiny_backbone.prompt_batch(2, negative=True), guidance_scale=2.0)
    assert x.dtype == torch.float32 and seen == [(torch.float32, torch.float32)] * 3


def test_bf16_adapter_pools_and_standardises_logits_in_float32():
    """Logits far from zero (as SD's are) leave bfloat16 sums of a pooled neighbourhood too few bits:
    phi's input must be the float32 statistics, rounded once."""
    torch.manual_seed(0)
    heads, size = 2, (8, 8)
    adapter = AMAdapter(heads=heads, max_resolution=4).to(torch.bfloat16)
    n = size[0] * size[1]
    logits = (60 + torch.randn(1, heads, n, n)).to(torch.bfloat16)
    cost = torch.rand(1, n, n) > 0.5
    seen = []
    adapter.phi["down"][0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        adapter("down", logits, cost, size)

    from amlight.modules.conv4d import pool4d
    a = pool4d(logits.double().reshape(1, heads, 8, 8, 8, 8), 2)
    mean, std = a.mean(dim=(2, 3, 4, 5), keepdim=True), a.std(dim=(2, 3, 4, 5), keepdim=True)
    expected = ((a - mean) / (std + 1e-5)).to(torch.bfloat16).float()
    got = seen[0][:, :heads].float()
    assert seen[0].dtype == torch.bfloat16
    assert (got - expected).abs().max() <= 0.02  # bfloat16 pooling: off by about 0.5


def _fp16_overflow_inputs(d=8, n=4):
    """Queries and keys whose unscaled product (131072) passes float16's 65504, the scaled one not."""
    q = torch.full((1, 1, n, d), 128.0, dtype=torch.float16)
    k = torch.full((1, 1, n, d), 64.0, dtype=torch.float16)
    k[..., 1, :] = 128.0  # the one target key every query prefers
    kx = torch.full((1, 1, n, d), 64.0, dtype=torch.float16)
    kx[..., 2, :] = 128.0  # and the one exemplar key
    v = torch.randn(1, 1, n, d).to(torch.float16)
    vx = torch.randn(1, 1, n, d).to(torch.float16)
    return q, k, v, kx, vx


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_explicit_attention_scales_queries_before_the_product_in_float16(grad):
    q, k, v, kx, vx = _fp16_overflow_inputs()
    scale = 1 / math.sqrt(q.shape[-1])
    assert torch.isinf(q[0, 0] @ k[0, 0].T).any()  # what the unscaled product does
    processor = ExemplarAttnProcessor(LAYER)
    ctx = ExemplarContext(mode="read", latent_size=(2, 2), read=ExemplarRead({}, "augmented"))
    with torch.set_grad_enabled(grad):
        out = processor._explicit(q, k, v, kx, vx, scale, None, (2, 2), lambda: None, ctx)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    # Two keys share all the probability: the mean of their values.
    expected = (v[..., 1, :] + vx[..., 2, :]).float() / 2
    torch.testing.assert_close(out.float(), expected.unsqueeze(-2).expand_as(out), atol=2e-3, rtol=2e-3)


def _nan_from_call(module, first_call):
    calls = []

    def hook(mod, args, output):
        calls.append(1)
        return output * float("nan") if len(calls) >= first_call else output

    return module.register_forward_hook(hook)


def test_nan_in_a_sampling_step_names_the_step_and_the_layer(tiny_model, tiny_backbone):
    layer = "unet.up_blocks.0.attentions.1.transformer_blocks.0.attn1"
    handle = _nan_from_call(tiny_model.get_submodule(layer), first_call=2)
    batch = make_batch(1)
    scheduler = tiny_backbone.sample_scheduler()
    scheduler.set_timesteps(3)
    with torch.no_grad(), pytest.raises(NonFiniteOutputError) as info:
        ddim_denoise(tiny_model, scheduler, torch.randn(1, 3, 16, 16), batch["labels"],
                     tiny_backbone.prompt_batch(1))
    handle.remove()
    message = str(info.value)
    assert "\n" not in message
    assert f"sampling step 2/3 (timestep {int(scheduler.timesteps[1])})" in message and layer in message


def test_nan_in_inversion_names_the_step_and_the_layer(tiny_model, tiny_backbone):
    layer = "unet.conv_out"
    handle = _nan_from_call(tiny_model.get_submodule(layer), first_call=1)
    batch = make_batch(1)
    with pytest.raises(NonFiniteOutputError, match=r"inversion step 1/2 .* first in layer unet\.conv_out$"):
        ddim_invert(tiny_model, tiny_backbone, batch["exemplar_image"], batch["exemplar_labels"], steps=2)
    handle.remove()


def test_generate_reports_nan_as_one_line_and_writes_no_image(stage1_ckpt, tmp_path, capsys, monkeypatch):
    from helpers.folder_datasets import make_dataset

    from amlight.cli.commands.generate import main
    from amlight.pipeline.synthesis import AMPipeline

    data = make_dataset(tmp_path / "data", n=2)
    v = data / "val"
    layer = "unet.mid_block.attentions.0.transformer_blocks.0.attn1"
    handles = []
    load = AMPipeline.from_checkpoints.__func__

    def with_nan(cls, *args, **kwargs):
        pipe = load(cls, *args, **kwargs)
        handles.append(_nan_from_call(pipe.model.get_submodule(layer), first_call=1))
        return pipe

    monkeypatch.setattr(AMPipeline, "from_checkpoints", classmethod(with_nan))
    out = tmp_path / "out"
    try:
        code = main(["--stage1", str(stage1_ckpt), "--data", str(data), "--out", str(out), "--steps", "2",
                     "--threads", "1", "--quiet", "--mode", "augmented",
                     "--exemplar", str(v / "images/s0.png"), "--exemplar-labels", str(v / "labels/s0.png"),
                     "--target-labels", str(v / "labels/s1.png")])
    finally:
        for h in handles:  # the stage-1 model is shared by the whole test session
            h.remove()
    assert code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "inversion step 1/2 (timestep 0)" in err[0] and layer in err[0]
    assert not list(out.glob("*.png"))
