"""Deterministic DDIM inversion of exemplar latents (METHOD.md part 7).

The inverted trajectory is what the appearance branch runs on at inference: at sampling step i it
sees the exemplar at exactly the noise level of the target latent at that step.

Alignment with diffusers' schedulers (checked against diffusers 0.42):
- ``DDIMInverseScheduler.timesteps`` is ascending and, for "leading" and "trailing" spacing, the same
  set as ``DDIMScheduler.timesteps`` (descending). We check this instead of assuming it.
- ``DDIMInverseScheduler.step(out, t, x)`` moves ``x`` *from* ``t - num_train_timesteps // steps``
  *to* ``t``; the returned sample sits exactly at ``alphas_cumprod[t]``. So the model has to be
  evaluated at the source timestep (where ``x`` is), not at ``t``: diffusers' own inversion pipelines
  evaluate at ``t``, an off-by-one-step approximation we avoid.
"""
from __future__ import annotations

import torch
from diffusers import DDIMInverseScheduler

from amlight.backbone import Backbone
from amlight.pipeline.finite import check_finite


def inverse_scheduler(backbone: Backbone, steps: int) -> DDIMInverseScheduler:
    # set_alpha_to_one=False identifies the clean latent with timestep 0: with alpha = 1 the first
    # step of a "sample"-predicting model would convert its output to epsilon by dividing by
    # sqrt(1 - alpha) = 0.
    scheduler = DDIMInverseScheduler.from_config(backbone.scheduler_config, set_alpha_to_one=False)
    scheduler.set_timesteps(steps)
    return scheduler


def sampling_timesteps(backbone: Backbone, steps: int) -> torch.Tensor:
    scheduler = backbone.sample_scheduler()
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.clone()


@torch.no_grad()
def ddim_invert(
    model,
    backbone: Backbone,
    latents: torch.Tensor,
    labels: torch.Tensor,
    steps: int = 20,
    prompt: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """The exemplar latent (B, C, h, w) carried up the noise schedule by deterministic DDIM.

    Returns ``trajectory`` with ``trajectory[i]`` the latent at ``DDIMScheduler.set_timesteps(steps)``'s
    i-th timestep (sampling order: ``trajectory[0]`` is the noisiest, where sampling starts), in
    float32 whatever the model's dtype: a half-precision trajectory drifts from the exemplar.
    ``prompt`` defaults to the empty (negative) prompt; structure guidance uses ``labels``; no bank,
    so self-attention is plain.
    """
    batch = latents.shape[0]
    device = latents.device
    if prompt is None:
        prompt = backbone.prompt_batch(batch, negative=True)
    prompt = prompt.to(device)
    scheduler = inverse_scheduler(backbone, steps)
    forward_timesteps = sampling_timesteps(backbone, steps)
    if not torch.equal(scheduler.timesteps.flip(0).cpu(), forward_timesteps.cpu()):
        raise ValueError(
            f"DDIM inversion cannot follow this schedule (timestep_spacing="
            f"{backbone.scheduler_config.get('timestep_spacing')!r}): inverse timesteps "
            f"{scheduler.timesteps.tolist()} are not the sampling timesteps reversed"
        )
    jump = scheduler.config.num_train_timesteps // steps
    x = latents.float()
    trajectory = []
    for i, t in enumerate(scheduler.timesteps):
        # The same source timestep step() uses for its alphas, clamped where it means "clean".
        source = torch.full((batch,), max(int(t) - jump, 0), device=device, dtype=torch.long)

        def output():
            return model(x, source, labels, prompt).float()

        out = output()
        check_finite(out, f"inversion step {i + 1}/{steps} (timestep {int(source[0])})", model, output)
        x = scheduler.step(out, int(t), x).prev_sample
        trajectory.append(x)
    return trajectory[::-1]
