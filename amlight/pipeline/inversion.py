"""Deterministic DDIM inversion of exemplar latents along any sampler's timesteps (docs/method.md#part-7-inference).

The inverted trajectory is what the appearance branch runs on at inference: at sampling step i it
sees the exemplar at exactly the noise level of the target latent at that step, whatever the
sampler (DDIM, DPM-Solver++, Euler, UniPC, ...): the inversion walks up the sampler's own timestep
sequence, in reverse.

Alignment (the off-by-one that diffusers' own inversion pipelines accept, avoided here): step k
moves ``x`` from the noise level of its *source* (the clean latent for k = 0, else the sampler's
timestep one below) to the level of the next sampler timestep, and the model is evaluated at the
source timestep, where ``x`` is. The clean latent sits at ``alphas_cumprod[0]`` and timestep 0
(as ``DDIMInverseScheduler(set_alpha_to_one=False)``: with alpha = 1 the first step of a
"sample"-predicting model would divide by sqrt(1 - alpha) = 0). For DDIM this is, byte for byte,
``DDIMInverseScheduler.step`` along ``DDIMScheduler.timesteps`` reversed (tests/pipeline/test_schedulers.py).

Noise levels: a sampler that defines ``sigmas`` (Euler, DPM-Solver, UniPC, ...) assumes
alpha_bar = 1 / (1 + sigma^2) at its step i (its timesteps may be floats, sigmas interpolated);
others (DDIM) use ``alphas_cumprod`` at the integer timestep. The trajectory is in the
variance-preserving scale, which is what the UNet sees at every step of every sampler: a sampler
that keeps x in another scale (Euler: x0 + sigma * eps) maps it back with ``scale_model_input``
before each UNet call (amlight.pipeline.sampling), so the banks need no rescaling.
"""
from __future__ import annotations

import torch
from diffusers import DDIMInverseScheduler

from amlight.backbone import Backbone
from amlight.pipeline.finite import check_finite
from amlight.pipeline.schedulers import fresh_scheduler


def inverse_scheduler(backbone: Backbone, steps: int) -> DDIMInverseScheduler:
    """diffusers' DDIM inverse scheduler on the backbone's schedule: the reference the generic
    inversion matches for DDIM (tests), and a check of the timestep alignment."""
    scheduler = DDIMInverseScheduler.from_config(backbone.scheduler_config, set_alpha_to_one=False)
    scheduler.set_timesteps(steps)
    return scheduler


def sampling_timesteps(backbone: Backbone, steps: int, scheduler=None) -> torch.Tensor:
    """The timesteps ``scheduler`` (default: the backbone's DDIM) visits in ``steps`` steps, highest first."""
    return fresh_scheduler(scheduler if scheduler is not None else backbone.sample_scheduler(), steps).timesteps.clone()


def noise_levels(scheduler) -> torch.Tensor:
    """alpha_bar (float32, CPU) at each of ``scheduler.timesteps`` (set_timesteps done), as the sampler assumes it."""
    config = scheduler.config
    if config.get("use_flow_sigmas") or config.get("prediction_type") == "flow_prediction":
        raise ValueError(f"{type(scheduler).__name__} with flow-matching sigmas has no DDIM inversion here")
    timesteps = scheduler.timesteps.cpu()
    n = len(timesteps)
    sigmas = getattr(scheduler, "sigmas", None)
    if isinstance(sigmas, torch.Tensor) and sigmas.numel() >= n:
        sigma = sigmas[:n].cpu().to(torch.float32)
        return 1.0 / (1.0 + sigma * sigma)
    if timesteps.is_floating_point() and not torch.equal(timesteps, timesteps.round()):
        raise ValueError(f"{type(scheduler).__name__} has non-integer timesteps and no sigmas: "
                         "cannot tell their noise levels")
    return scheduler.alphas_cumprod.cpu()[timesteps.long()]


def _inversion_step(out: torch.Tensor, x: torch.Tensor, alpha_source: torch.Tensor, alpha_target: torch.Tensor,
                    config) -> torch.Tensor:
    """Deterministic DDIM (eta 0) from ``alpha_source`` up to ``alpha_target``: the arithmetic of
    ``DDIMInverseScheduler.step``, in its order, so DDIM's trajectory is unchanged to the bit."""
    beta_source = 1 - alpha_source
    kind = config.prediction_type
    if kind == "epsilon":
        x0 = (x - beta_source ** (0.5) * out) / alpha_source ** (0.5)
        eps = out
    elif kind == "sample":
        x0 = out
        eps = (x - alpha_source ** (0.5) * x0) / beta_source ** (0.5)
    elif kind == "v_prediction":
        x0 = (alpha_source**0.5) * x - (beta_source**0.5) * out
        eps = (alpha_source**0.5) * out + (beta_source**0.5) * x
    else:
        raise ValueError(f"unsupported prediction type {kind!r}")
    if config.get("clip_sample", False):
        x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    direction = (1 - alpha_target) ** (0.5) * eps
    return alpha_target ** (0.5) * x0 + direction


@torch.no_grad()
def invert(model, scheduler, latents: torch.Tensor, labels: torch.Tensor, prompt: torch.Tensor,
           conditioning_scale: float | None = None) -> list[torch.Tensor]:
    """The exemplar latent (B, C, h, w) carried up ``scheduler``'s timesteps (``set_timesteps`` done;
    a fresh instance: only its timesteps, sigmas and alphas are read, its state is not touched).

    Returns ``trajectory`` with ``trajectory[i]`` the latent at ``scheduler.timesteps[i]`` (sampling
    order: ``trajectory[0]`` is the noisiest, where sampling starts), float32 whatever the model's
    dtype (a half-precision trajectory drifts from the exemplar). ``prompt``: (B, tokens, dim);
    structure guidance uses ``labels``; no bank, so self-attention is plain. ``conditioning_scale``: a
    ControlNet's residual weight (None: its configured one); the banks written on this trajectory are
    guided at the same scale as the sampling they serve.
    """
    scale = {} if conditioning_scale is None else {"conditioning_scale": conditioning_scale}
    batch, device = latents.shape[0], latents.device
    prompt = prompt.to(device)
    timesteps = scheduler.timesteps.cpu()
    steps = len(timesteps)
    targets = noise_levels(scheduler)
    # Ascending: from the clean latent (timestep 0, alphas_cumprod[0]) up to the sampler's first timestep.
    up_timesteps, up_alphas = timesteps.flip(0), targets.flip(0)
    source_t, source_alpha = torch.zeros((), dtype=timesteps.dtype), scheduler.alphas_cumprod.cpu()[0]
    x = latents.float()
    trajectory = []
    for k in range(steps):
        source = source_t.to(device).expand(batch)

        def output():
            return model(x, source, labels, prompt, **scale).float()

        out = output()
        check_finite(out, f"inversion step {k + 1}/{steps} (timestep {timestep_text(source_t)})", model, output)
        x = _inversion_step(out, x, source_alpha, up_alphas[k], scheduler.config)
        trajectory.append(x)
        source_t, source_alpha = up_timesteps[k], up_alphas[k]
    return trajectory[::-1]


def timestep_text(t) -> str:
    """A timestep for messages: integers as such, fractional ones (Euler) with two decimals."""
    value = float(t)
    return str(int(value)) if value == int(value) else f"{value:.2f}"


@torch.no_grad()
def ddim_invert(
    model,
    backbone: Backbone,
    latents: torch.Tensor,
    labels: torch.Tensor,
    steps: int = 20,
    prompt: torch.Tensor | None = None,
    scheduler=None,
    conditioning_scale: float | None = None,
) -> list[torch.Tensor]:
    """:func:`invert` along the timesteps of ``scheduler`` (a template; default: the backbone's DDIM)
    in ``steps`` steps. ``prompt`` defaults to the empty (negative) prompt."""
    if prompt is None:
        prompt = backbone.prompt_batch(latents.shape[0], negative=True)
    template = scheduler if scheduler is not None else backbone.sample_scheduler()
    return invert(model, fresh_scheduler(template, steps), latents, labels, prompt, conditioning_scale)
