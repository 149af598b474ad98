"""Inference pipeline: DDIM inversion, per-step exemplar banks, batched CFG (docs/method.md#part-7-inference)."""
import dataclasses
import json

import pytest
import torch
import torch.nn as nn

from amlight.pipeline.exemplar_banks import build_exemplar_banks
from amlight.pipeline.inversion import ddim_invert, sampling_timesteps
from amlight.pipeline.synthesis import AMPipeline

STEPS = 4


class OracleModel(nn.Module):
    """Predicts, in the schedule's parametrisation, exactly what a perfect model of one known x0 would."""

    def __init__(self, x0, alphas_cumprod, prediction_type):
        super().__init__()
        self.x0, self.alphas, self.kind = x0, alphas_cumprod, prediction_type
        self.calls = 0

    def forward(self, x, t, labels, prompt, **kwargs):
        self.calls += 1
        a = self.alphas[t.cpu()].view(-1, 1, 1, 1).to(x)
        eps = (x - a.sqrt() * self.x0) / (1 - a).sqrt()
        if self.kind == "epsilon":
            return eps
        if self.kind == "sample":
            return self.x0.expand_as(x)
        return a.sqrt() * eps - (1 - a).sqrt() * self.x0


@pytest.mark.parametrize("kind,spacing", [("epsilon", "leading"), ("v_prediction", "trailing"), ("sample", "leading")])
def test_inversion_oracle_round_trip(tiny_backbone, kind, spacing):
    backbone = dataclasses.replace(
        tiny_backbone,
        scheduler_config={**tiny_backbone.scheduler_config, "prediction_type": kind, "timestep_spacing": spacing},
    )
    steps = 10
    sampler = backbone.sample_scheduler()
    sampler.set_timesteps(steps)
    torch.manual_seed(0)
    x0 = torch.randn(2, 3, 8, 8)
    model = OracleModel(x0, sampler.alphas_cumprod, kind)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    trajectory = ddim_invert(model, backbone, x0, labels, steps=steps)
    assert len(trajectory) == steps and model.calls == steps
    assert torch.equal(sampling_timesteps(backbone, steps), sampler.timesteps)

    # Aligned: every trajectory[i] sits at the noise level of sampling timestep i, on one noise line.
    implied = []
    for x, t in zip(trajectory, sampler.timesteps):
        a = sampler.alphas_cumprod[t]
        implied.append((x - a.sqrt() * x0) / (1 - a).sqrt())
    for e in implied[1:]:
        torch.testing.assert_close(e, implied[0], atol=1e-3, rtol=1e-3)

    # Sampling from the inverted latent walks back through the trajectory and lands on x0.
    x = trajectory[0]
    for i, t in enumerate(sampler.timesteps):
        torch.testing.assert_close(x, trajectory[i], atol=1e-3, rtol=1e-3)
        x = sampler.step(model(x, t.expand(2), labels, None), t, x).prev_sample
    torch.testing.assert_close(x, x0, atol=1e-3, rtol=1e-3)

    again = ddim_invert(model, backbone, x0, labels, steps=steps)
    assert all(torch.equal(a, b) for a, b in zip(trajectory, again))


def _adapter(seed=1):
    from amlight.modules.adapter import AMAdapter

    torch.manual_seed(seed)
    adapter = AMAdapter(heads=2, channels=4, num_layers=2)
    # A fresh adapter is the identity: give it weights that change the attention.
    for p in adapter.parameters():
        p.data.normal_(0, 0.2)
    return adapter.eval().requires_grad_(False)


def _data(m, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(m, 3, 16, 16, generator=g) * 2 - 1
    ex_labels = torch.randint(0, 5, (m, 16, 16), generator=g)
    targets = torch.randint(0, 5, (n, 16, 16), generator=g)
    return images, ex_labels, targets


def test_pipeline_is_deterministic_per_seed(tiny_model, tiny_backbone):
    pipe = AMPipeline.from_model(tiny_model, tiny_backbone, adapter=_adapter())
    images, ex_labels, targets = _data(1, 2)
    banks = build_exemplar_banks(tiny_model, tiny_backbone, images, ex_labels, STEPS)
    a = pipe.draw(targets, banks, seed=3)
    b = pipe.draw(targets, banks, seed=3)
    c = pipe.draw(targets, banks, seed=4)
    assert a.shape == (2, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
    rebuilt = build_exemplar_banks(tiny_model, tiny_backbone, images, ex_labels, STEPS)
    assert torch.equal(pipe.draw(targets, rebuilt, seed=3), a)


def test_banks_built_once_for_many_targets(tiny_model, tiny_backbone):
    images, ex_labels, targets = _data(2, 4)
    calls = []
    handle = tiny_model.unet.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    try:
        banks = build_exemplar_banks(tiny_model, tiny_backbone, images, ex_labels, STEPS)
        # M=2 exemplars: 2*steps batched calls (inversion + banks), each over the 2 exemplars.
        assert calls == [2] * (2 * STEPS)
        assert banks.unet_calls == 2 * STEPS and banks.unet_rows == 2 * 2 * STEPS and banks.steps == STEPS
        calls.clear()
        pipe = AMPipeline.from_model(tiny_model, tiny_backbone)
        out = pipe.draw(targets, banks, torch.tensor([1, 1, 1, 1]), attention="augmented")
        # N=4 targets reuse the banks: one 2N-row call per step, no more bank building.
        assert calls == [8] * STEPS
        assert pipe.unet_rows == 8 * STEPS and pipe.unet_calls == STEPS
        assert banks.unet_calls == 2 * STEPS

        # exemplar_index picks the bank rows: the same as banks of exemplar 1 alone, broadcast.
        single = build_exemplar_banks(tiny_model, tiny_backbone, images[1:], ex_labels[1:], STEPS)
        alone = pipe.draw(targets, single, attention="augmented")
        torch.testing.assert_close(out, alone, atol=1e-4, rtol=1e-4)
        mixed = pipe.draw(targets, banks, torch.tensor([0, 1, 0, 1]), attention="augmented")
        assert (mixed[0] - out[0]).abs().max() > 1e-4
        torch.testing.assert_close(mixed[1], out[1], atol=1e-4, rtol=1e-4)
    finally:
        handle.remove()


@pytest.mark.parametrize("mode", ["adapter", "hard_mask"])
def test_uncond_rows_are_plain_self_attention(tiny_model, tiny_backbone, mode):
    images, ex_labels, targets = _data(1, 2)
    banks = build_exemplar_banks(tiny_model, tiny_backbone, images, ex_labels, STEPS)
    pipe = AMPipeline.from_model(tiny_model, tiny_backbone, adapter=_adapter())
    seen = []
    handle = tiny_model.register_forward_hook(
        lambda mod, args, kwargs, out: seen.append((args, out)), with_kwargs=True
    )
    try:
        pipe.draw(targets, banks, attention=mode, guidance_scale=3.0)
    finally:
        handle.remove()
    assert len(seen) == STEPS
    for (x, t, labels, prompt), out in seen[:2]:
        n = x.shape[0] // 2
        assert torch.equal(prompt[:n], tiny_backbone.prompt_batch(n, negative=True))
        with torch.no_grad():
            plain = tiny_model(x[:n], t[:n], labels[:n], prompt[:n])
            plain_cond = tiny_model(x[n:], t[n:], labels[n:], prompt[n:])
        assert (out[:n] - plain).abs().max() < 1e-5
        # The conditional half does read the exemplar.
        assert (out[n:] - plain_cond).abs().max() > 1e-4


def test_structure_only_ignores_banks(tiny_model, tiny_backbone):
    pipe = AMPipeline.from_model(tiny_model, tiny_backbone)
    images, ex_labels, targets = _data(2, 2)
    banks = build_exemplar_banks(tiny_model, tiny_backbone, images, ex_labels, STEPS)
    other = build_exemplar_banks(tiny_model, tiny_backbone, -images, ex_labels.flip(-1), STEPS)
    a = pipe.draw(targets, banks, attention="structure_only")
    assert torch.equal(a, pipe.draw(targets, other, attention="structure_only"))
    assert torch.equal(a, pipe.draw(targets, None, attention="structure_only", steps=STEPS))
    assert (a - pipe.draw(targets, banks, attention="augmented")).abs().max() > 1e-4
    with pytest.raises(ValueError, match="banks"):
        pipe.draw(targets, None, attention="augmented")
    with pytest.raises(ValueError, match="adapter"):
        pipe.draw(targets, banks, attention="adapter")


def test_from_checkpoints(stage1_ckpt, tmp_path):
    from safetensors.torch import save_file

    pipe = AMPipeline.from_checkpoints(stage1_ckpt)
    assert pipe.adapter is None
    images, ex_labels, targets = _data(1, 3)
    out = pipe.generate(images, ex_labels, targets, steps=3, attention="augmented", guidance_scale=2.0)
    assert out.shape == (3, 3, 16, 16) and torch.isfinite(out).all()

    adapter = _adapter()
    path = tmp_path / "adapter.safetensors"
    config = {"heads": 2, "channels": 4, "num_layers": 2}
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(path), metadata={
        "amlight_stage": "adapter", "adapter_config": json.dumps(config), "stage1": json.dumps({}),
    })
    with_adapter = AMPipeline.from_checkpoints(stage1_ckpt, path)
    assert with_adapter.adapter is not None
    out = with_adapter.generate(images, ex_labels, targets, steps=3, seed=1)
    assert out.shape == (3, 3, 16, 16) and torch.isfinite(out).all()


def test_loading_an_adapter_prints_no_diffusers_cast_warning(stage1_ckpt, tmp_path):
    """diffusers' ModelMixin.to warns about float32-kept modules on any dtype cast (0.42, none listed):
    every generate and evaluate printed it for the adapter."""
    from safetensors.torch import save_file

    path = tmp_path / "adapter.safetensors"
    save_file({k: v.contiguous() for k, v in _adapter().state_dict().items()}, str(path), metadata={
        "amlight_stage": "adapter", "adapter_config": json.dumps({"heads": 2, "channels": 4, "num_layers": 2}),
        "stage1": json.dumps({}),
    })
    import logging

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("diffusers.models.modeling_utils")
    logger.addHandler(handler)
    try:
        pipe = AMPipeline.from_checkpoints(stage1_ckpt, path)
    finally:
        logger.removeHandler(handler)
    assert next(pipe.adapter.parameters()).dtype == next(pipe.model.parameters()).dtype
    assert not [m for m in messages if "should be kept in float32" in m], messages


def test_attention_settings_max_resolution_lasts_one_call(tiny_model, tiny_backbone):
    from amlight.modules.attention_modes import AttentionSettings

    class PoolingSpy:
        """An adapter that adds nothing and notes the pooling size it runs with."""

        def __init__(self):
            self.max_resolution, self.seen = 32, set()

        def refine(self, group, logits, cost, size, *, max_resolution=None, inplace=False):
            self.seen.add(self.max_resolution if max_resolution is None else max_resolution)
            return logits

    spy = PoolingSpy()
    pipe = AMPipeline.from_model(tiny_model, tiny_backbone, adapter=spy)
    images, ex_labels, targets = _data(1, 1)
    banks = build_exemplar_banks(tiny_model, tiny_backbone, images, ex_labels, STEPS)
    pipe.draw(targets, banks, attention=AttentionSettings("adapter", max_resolution=2))
    assert spy.seen == {2} and spy.max_resolution == 32
    spy.seen.clear()
    pipe.draw(targets, banks, attention="adapter")
    assert spy.seen == {32}
