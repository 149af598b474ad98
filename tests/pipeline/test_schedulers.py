"""Any diffusers scheduler: exemplar banks on the sampler's own timesteps, a fresh sampler state per call
and chunk, init_noise_sigma / scale_model_input honoured, DDIM unchanged, ``--scheduler NAME``."""
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from amlight.pipeline.exemplar_banks import build_exemplar_banks
from amlight.pipeline.inversion import ddim_invert, inverse_scheduler, sampling_timesteps
from amlight.pipeline.sampling import _with_unconditional_rows, ddim_denoise, denoise
from amlight.pipeline.schedulers import SCHEDULERS, fresh_scheduler, scheduler_by_name

STEPS = 5
NAMES = ("ddim", "dpm++", "euler", "unipc")


def _draw(pipe, *args, **kwargs):
    """The low-level call with ready banks (``draw``; ``__call__`` before the diffusers-style call)."""
    return (pipe.draw if hasattr(pipe, "draw") else pipe)(*args, **kwargs)


def _data(m, n, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(m, 3, size, size, generator=g) * 2 - 1
    ex_labels = torch.randint(0, 5, (m, size, size), generator=g)
    targets = torch.randint(0, 5, (n, size, size), generator=g)
    return images, ex_labels, targets


# --- the noise levels and the alignment, with an oracle model -----------------------------------------


class Oracle(nn.Module):
    """A perfect epsilon model of one known x0 on the variance-preserving scale, at any (float)
    timestep: alpha_bar(t) from the training schedule's sigma interpolated linearly in t, as Euler
    does (independent of amlight's code). Records the inputs it sees."""

    def __init__(self, x0, alphas_cumprod):
        super().__init__()
        self.x0 = x0.double()
        self.sigma = ((1 - alphas_cumprod.double()) / alphas_cumprod.double()).sqrt().numpy()
        self.seen = []

    def alpha(self, t):
        sigma = np.interp(np.atleast_1d(t.double().cpu().numpy()), np.arange(len(self.sigma)), self.sigma)
        return torch.from_numpy(1 / (1 + sigma**2)).view(-1, 1, 1, 1)

    def forward(self, x, t, labels, prompt, read=None):
        self.seen.append(x.clone())
        a = self.alpha(t)
        return ((x.double() - a.sqrt() * self.x0) / (1 - a).sqrt()).float()


def _epsilon_config(tiny_backbone, **extra):
    return {**tiny_backbone.scheduler_config, "prediction_type": "epsilon", **extra}


@pytest.mark.parametrize("name,extra", [("ddim", {}), ("dpm++", {}), ("euler", {}), ("unipc", {}),
                                        ("euler", {"timestep_spacing": "leading"})])
def test_oracle_inversion_is_aligned_and_sampling_sees_it_and_returns(tiny_backbone, name, extra):
    """Inverted along the sampler's timesteps, each latent sits at that step's noise level; sampling
    from the first one, the UNet sees exactly the trajectory at every step (the scale the banks are
    written in: init_noise_sigma and scale_model_input honoured) and lands on x0."""
    scheduler = scheduler_by_name(name, _epsilon_config(tiny_backbone, **extra))
    torch.manual_seed(0)
    x0 = torch.randn(2, 3, 8, 8)
    model = Oracle(x0, scheduler.alphas_cumprod)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    prompt = torch.zeros(2, 4, 32)
    trajectory = ddim_invert(model, tiny_backbone, x0, labels, steps=STEPS, prompt=prompt, scheduler=scheduler)
    sampler = fresh_scheduler(scheduler, STEPS)
    if name == "euler" and not extra:
        assert not torch.equal(sampler.timesteps, sampler.timesteps.round())  # fractional timesteps covered
    # On one noise line: (x_i - sqrt(a_i) x0) / sqrt(1 - a_i) is the same for every step.
    lines = [(x.double() - model.alpha(t).sqrt() * x0) / (1 - model.alpha(t)).sqrt()
             for x, t in zip(trajectory, sampler.timesteps)]
    for line in lines[1:]:
        torch.testing.assert_close(line, lines[0], atol=2e-3, rtol=2e-3)

    model.seen.clear()
    x = denoise(model, sampler, trajectory[0], labels, prompt)
    assert len(model.seen) == STEPS
    for seen, expected in zip(model.seen, trajectory):
        torch.testing.assert_close(seen, expected, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(x, x0, atol=2e-3, rtol=2e-3)


def test_the_unet_sees_unit_variance_noise_at_the_first_step(tiny_backbone):
    """Euler keeps x at sigma scale: without init_noise_sigma the UNet would see noise / sigma, without
    scale_model_input noise * sigma."""
    noise = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for name in NAMES:
        model = Oracle(torch.zeros(1, 3, 8, 8), tiny_backbone.sample_scheduler().alphas_cumprod)
        sampler = fresh_scheduler(scheduler_by_name(name, _epsilon_config(tiny_backbone)), 3)
        denoise(model, sampler, noise, torch.zeros(1, 8, 8, dtype=torch.long), torch.zeros(1, 4, 32))
        torch.testing.assert_close(model.seen[0], noise, atol=1e-3, rtol=1e-3, msg=name)


# --- DDIM unchanged: the generic code against the DDIM-only code it replaced ---------------------------


def _reference_ddim_invert(model, backbone, latents, labels, steps):
    """The inversion as it was: diffusers' DDIMInverseScheduler, the model at t - num_train // steps."""
    scheduler = inverse_scheduler(backbone, steps)
    jump = scheduler.config.num_train_timesteps // steps
    prompt = backbone.prompt_batch(latents.shape[0], negative=True)
    x, trajectory = latents.float(), []
    for t in scheduler.timesteps:
        source = torch.full((latents.shape[0],), max(int(t) - jump, 0), dtype=torch.long)
        x = scheduler.step(model(x, source, labels, prompt).float(), int(t), x).prev_sample
        trajectory.append(x)
    return trajectory[::-1]


def _reference_ddim_loop(model, scheduler, x, labels, prompt, negative, read, banks, guidance_scale):
    """The sampling loop as it was: DDIM, batched guidance, integer timesteps."""
    n = x.shape[0]
    rows = _with_unconditional_rows(read, n, x.device)
    for i, t in enumerate(scheduler.timesteps):
        tt = torch.full((2 * n,), int(t), dtype=torch.long)
        u, c = model(torch.cat([x, x]), tt, torch.cat([labels, labels]), torch.cat([negative, prompt]),
                     read=rows.at(banks[i])).float().chunk(2)
        x = scheduler.step(u + guidance_scale * (c - u), t, x).prev_sample
    return x


@pytest.mark.parametrize("extra", [{}, {"prediction_type": "epsilon", "steps_offset": 1}])
def test_ddim_inversion_banks_and_sampling_are_unchanged_to_the_bit(tiny_model, tiny_backbone, extra):
    from amlight.modules.attention_modes import AttentionSettings
    from amlight.modules.exemplar_context import ExemplarRead

    backbone = dataclasses.replace(tiny_backbone, scheduler_config={**tiny_backbone.scheduler_config, **extra})
    images, ex_labels, targets = _data(2, 2)
    expected = _reference_ddim_invert(tiny_model, backbone, images, ex_labels, STEPS)
    trajectory = ddim_invert(tiny_model, backbone, images, ex_labels, steps=STEPS)
    assert all(torch.equal(a, b) for a, b in zip(trajectory, expected))

    banks = build_exemplar_banks(tiny_model, backbone, images, ex_labels, STEPS)
    timesteps = sampling_timesteps(backbone, STEPS)
    assert torch.equal(banks.timesteps, timesteps)
    prompt = backbone.prompt_batch(2)
    for bank, x, t in zip(banks.banks, expected, timesteps):
        old = tiny_model.write_bank(x, torch.full((2,), int(t), dtype=torch.long), ex_labels, prompt)
        assert bank.keys() == old.keys() and all(torch.equal(bank[k], old[k]) for k in old)

    read = ExemplarRead(settings=AttentionSettings.of("augmented"), exemplar_labels=ex_labels,
                        exemplar_index=torch.tensor([1, 0]), match_labels=targets)
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    negative = backbone.prompt_batch(2, negative=True)
    with torch.no_grad():
        old = _reference_ddim_loop(tiny_model, fresh_scheduler(backbone.sample_scheduler(), STEPS), noise, targets,
                                   prompt, negative, read, banks.banks, 3.0)
        new = ddim_denoise(tiny_model, fresh_scheduler(backbone.sample_scheduler(), STEPS), noise, targets, prompt,
                           negative, read=read, bank_at=lambda i, t: banks.banks[i], guidance_scale=3.0)
    assert torch.equal(new, old)


def test_validation_sampler_still_draws_with_ddim(tiny_model, tiny_backbone):
    from amlight.pipeline.sampling import ddim_sample

    images, ex_labels, targets = _data(2, 2)
    a = ddim_sample(tiny_model, tiny_backbone, targets, images, ex_labels, steps=3, guidance_scale=2.0)
    assert a.shape == (2, 3, 16, 16) and torch.isfinite(a).all()
    again = ddim_sample(tiny_model, tiny_backbone, targets, images, ex_labels, steps=3, guidance_scale=2.0)
    assert torch.equal(a, again)


# --- every scheduler through the pipeline --------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(stage1_ckpt):
    from amlight.pipeline.synthesis import AMPipeline

    return AMPipeline.from_checkpoints(stage1_ckpt)


@pytest.mark.parametrize("name", NAMES)
def test_each_scheduler_draws_with_banks_on_its_own_timesteps(pipe, name):
    images, ex_labels, targets = _data(2, 3)
    default = pipe.scheduler
    pipe.scheduler = scheduler_by_name(name, default.config)
    try:
        banks = pipe.build_banks(images, ex_labels, STEPS)
        sampler = fresh_scheduler(pipe.scheduler, STEPS)
        assert torch.equal(banks.timesteps, sampler.timesteps) and banks.timesteps.dtype == sampler.timesteps.dtype
        assert banks.steps == STEPS and banks.meta["scheduler"] == type(pipe.scheduler).__name__
        index = torch.tensor([0, 1, 0])
        a = _draw(pipe, targets, banks, index, attention="augmented", seed=[1, 2, 3])
        assert a.shape == (3, 3, 16, 16) and torch.isfinite(a).all() and a.min() >= -1 and a.max() <= 1
        # A fresh sampler state per call: the second call gives the same bytes (multistep history reset).
        assert torch.equal(_draw(pipe, targets, banks, index, attention="augmented", seed=[1, 2, 3]), a)
        # ... and per chunk: one target per UNet call gives the images of all at once.
        chunked = _draw(pipe, targets, banks, index, attention="augmented", seed=[1, 2, 3], batch_size=1)
        torch.testing.assert_close(chunked, a, atol=1e-4, rtol=1e-4)  # batched matmul order only
        if name != "ddim":  # the banks of another sampler are refused, not read at the wrong noise levels
            pipe.scheduler = default
            with pytest.raises(ValueError, match="schedule"):
                _draw(pipe, targets, banks, index, attention="augmented")
    finally:
        pipe.scheduler = default


def test_scheduler_names():
    from amlight.cli.commands.generate import SCHEDULER_NAMES

    assert tuple(SCHEDULERS) == SCHEDULER_NAMES == NAMES
    config = DDIMScheduler().config
    assert isinstance(scheduler_by_name("Euler", config), EulerDiscreteScheduler)
    assert scheduler_by_name("dpm++", config).config.algorithm_type == "dpmsolver++"
    with pytest.raises(ValueError) as info:
        scheduler_by_name("heun", config)
    assert "\n" not in str(info.value) and all(n in str(info.value) for n in NAMES)


def test_fresh_scheduler_is_a_new_state():
    template = scheduler_by_name("dpm++", DDIMScheduler().config)
    a, b = fresh_scheduler(template, 4), fresh_scheduler(template, 4)
    a.step(torch.zeros(1, 3, 2, 2), a.timesteps[0], torch.zeros(1, 3, 2, 2))
    assert a is not b and a.step_index == 1 and b.step_index is None and template.step_index is None


# --- the commands ------------------------------------------------------------------------------------


def test_generate_scheduler_flag_draws_and_records_it(stage1_ckpt, tmp_path, capsys):
    from helpers.folder_datasets import make_dataset

    from amlight.cli.commands.generate import main

    data = make_dataset(tmp_path / "data", n=2)
    common = ["--stage1", str(stage1_ckpt), "--data", str(data), "--pairs", str(data / "val" / "pairs.json"),
              "--mode", "augmented", "--steps", "3", "--threads", "1", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "ddim")]) == 0
    assert main([*common, "--out", str(tmp_path / "dpm"), "--scheduler", "dpm++"]) == 0
    summary = json.loads((tmp_path / "dpm" / "summary.json").read_text())
    assert summary["settings"]["scheduler"] == "dpm++"
    assert json.loads((tmp_path / "ddim" / "summary.json").read_text())["settings"]["scheduler"] == "ddim"
    ddim, dpm = (sorted(p.read_bytes() for p in (tmp_path / d).rglob("*.png")) for d in ("ddim", "dpm"))
    assert len(ddim) == len(dpm) > 0 and ddim != dpm
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "bad"), "--scheduler", "heun"]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(error) == 1 and "--scheduler" in error[0] and all(n in error[0] for n in NAMES)


def test_evaluate_scheduler_flag_keys_the_cache_and_records_it(stage1_ckpt, tmp_path, capsys):
    from helpers.folder_datasets import make_paired_dataset

    from amlight.cli.commands.evaluate import main
    from amlight.metrics.evaluation import EvaluationError, Settings

    data = make_paired_dataset(tmp_path / "data")
    common = ["--stage1", str(stage1_ckpt), "--data", str(data), "--steps", "2", "--batch-size", "4",
              "--modes", "structure_only,augmented", "--max-pairs", "2", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "ddim")]) == 0
    assert main([*common, "--out", str(tmp_path / "unipc"), "--scheduler", "unipc"]) == 0
    ddim = json.loads((tmp_path / "ddim" / "results.json").read_text())
    unipc = json.loads((tmp_path / "unipc" / "results.json").read_text())
    assert ddim["settings"]["scheduler"] == "ddim" and unipc["settings"]["scheduler"] == "unipc"
    for mode in ("structure_only", "augmented"):
        assert ddim["modes"][mode]["cache_key"] != unipc["modes"][mode]["cache_key"]
        config = {run: json.loads((tmp_path / run / "cache" / record["modes"][mode]["cache_key"] / "config.json")
                                  .read_text()) for run, record in (("ddim", ddim), ("unipc", unipc))}
        assert config["unipc"]["scheduler"] == "unipc"
        # DDIM's keys are those of runs before --scheduler existed (no "scheduler" entry).
        assert "scheduler" not in config["ddim"]
    assert ddim["modes"]["augmented"]["metrics"]["psnr"] != unipc["modes"]["augmented"]["metrics"]["psnr"]
    with pytest.raises(EvaluationError, match=r"unknown scheduler 'heun'; choose one of: ddim, dpm\+\+, euler, unipc"):
        Settings(scheduler="heun")
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "bad"), "--scheduler", "heun"]) == 2
    assert "invalid choice: 'heun'" in capsys.readouterr().err
