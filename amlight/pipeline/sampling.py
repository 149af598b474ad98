"""The one sampling loop (any diffusers scheduler, classifier-free guidance included), and the
validation sampler on it.

Two callers share :func:`denoise` (also importable as ``ddim_denoise``, its name when it was DDIM
only) and differ only in where each step's exemplar bank comes from and whether guidance is batched:

- AMPipeline (docs/method.md#part-7-inference): the bank of step i is the bank of the exemplar inverted along the
  sampler's own timesteps (amlight.pipeline.inversion), at step i; guidance is batched, one UNet
  call over [unconditional ; conditional] rows per step.
- :func:`ddim_sample` (validation grids, quick looks during training; always DDIM): the bank is
  written from the exemplar latent noised to the step's timestep with one fixed noise draw;
  guidance makes two calls, as it always has, so validation images stay comparable across versions.

Guidance is combined on the raw model output. Whatever the prediction type, epsilon (and x0) are
affine in the output with coefficients that depend only on (x, t), which both halves share, and the
guidance weights (1 - s, s) sum to one: combining outputs is exactly combining epsilons.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from amlight.backbone import Backbone
from amlight.modules.attention_modes import BLOCK_GROUPS, AttentionSettings
from amlight.modules.exemplar_context import ExemplarRead
from amlight.modules.exemplar_unet import Bank, ExemplarUNet
from amlight.pipeline.finite import check_finite
from amlight.pipeline.inversion import timestep_text

# bank_at(i, t): the exemplar bank of sampling step i, at timestep t.
BankSource = Callable[[int, torch.Tensor], Bank]


def denoise(
    model: ExemplarUNet,
    scheduler,
    x: torch.Tensor,
    labels: torch.Tensor,
    prompt: torch.Tensor,
    negative_prompt: torch.Tensor | None = None,
    *,
    read: ExemplarRead | None = None,
    bank_at: BankSource | None = None,
    guidance_scale: float = 1.0,
    batch_guidance: bool = True,
    on_unet_call: Callable[[int], None] | None = None,
    on_step_end: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
    conditioning_scale: float | None = None,
) -> torch.Tensor:
    """Latents ``x`` (B, C, h, w) denoised over ``scheduler.timesteps`` (set by the caller), drawn as ``labels``.

    ``scheduler``: any diffusers scheduler, fresh (multistep samplers keep past outputs: one instance
    serves one call). ``x`` is in the variance-preserving scale (unit-variance noise, or an inverted
    latent at the first timestep); it is multiplied by ``scheduler.init_noise_sigma`` here, and the
    UNet sees ``scheduler.scale_model_input(x, t)`` at every step (Euler keeps x0 + sigma * eps and
    divides by sqrt(sigma^2 + 1)), i.e. the scale the exemplar banks were written in. Timesteps go to
    the UNet as the scheduler gives them (floats for Euler, never truncated).

    ``read``: how the conditional rows read the exemplar, its bank left out: step i reads
    ``bank_at(i, t)``. None: no exemplar, plain self-attention.
    ``guidance_scale`` != 1: classifier-free guidance away from the unconditional prediction
    (``negative_prompt``, plain self-attention). ``batch_guidance``: both halves in one UNet call of 2B
    rows (the unconditional rows' exemplar part masked off, which is exactly plain self-attention);
    else two calls of B rows.
    ``on_unet_call(rows)``: told the number of sample rows of every UNet call.
    ``on_step_end(i, t, x)``: called after step i with the scheduler's latents; a tensor it returns
    replaces them.
    ``conditioning_scale``: a ControlNet's residual weight in every UNet call (None: its configured one).
    The latents and the scheduler's arithmetic stay in float32 whatever the model's dtype (the model
    sees its own dtype): returns float32 latents. A step whose output holds NaN or inf raises
    :class:`~amlight.pipeline.finite.NonFiniteOutputError` naming the step and the layer.
    """
    n = x.shape[0]
    # init_noise_sigma is 1 for DDIM, DPM-Solver and UniPC (x * 1.0 is exact: DDIM's bytes do not change).
    x = x.float() * scheduler.init_noise_sigma
    cfg = guidance_scale != 1.0
    if cfg and negative_prompt is None:
        raise ValueError("classifier-free guidance needs a negative prompt")
    batched = cfg and batch_guidance
    if batched:
        prompt_rows, label_rows = torch.cat([negative_prompt, prompt]), torch.cat([labels, labels])
        read_rows = None if read is None else _with_unconditional_rows(read, n, x.device)
    else:
        prompt_rows, label_rows, read_rows = prompt, labels, read

    scale = {} if conditioning_scale is None else {"conditioning_scale": conditioning_scale}

    def unet(rows, t, labels, prompt, read=None):
        tt = torch.as_tensor(t).to(rows.device).expand(rows.shape[0])
        out = model(rows, tt, labels, prompt, read=read, **scale)
        if on_unet_call is not None:
            on_unet_call(rows.shape[0])
        return out

    steps = len(scheduler.timesteps)
    for i, t in enumerate(scheduler.timesteps):
        step_read = None if read_rows is None else read_rows.at(bank_at(i, t))
        x_in = scheduler.scale_model_input(x, t)

        def outputs():
            if batched:
                return unet(torch.cat([x_in, x_in]), t, label_rows, prompt_rows, step_read).float().chunk(2)
            out = unet(x_in, t, label_rows, prompt_rows, step_read).float()
            return (unet(x_in, t, labels, negative_prompt).float() if cfg else None), out

        out_uncond, out = outputs()
        if cfg:
            out = out_uncond + guidance_scale * (out - out_uncond)
        check_finite(out, f"sampling step {i + 1}/{steps} (timestep {timestep_text(t)})", model, outputs)
        x = scheduler.step(out, t, x).prev_sample
        if on_step_end is not None:
            replaced = on_step_end(i, t, x)
            x = x if replaced is None else replaced
    return x


ddim_denoise = denoise  # the name from when the loop was DDIM only; callers still import it


def _with_unconditional_rows(read: ExemplarRead, n: int, device) -> ExemplarRead:
    """``read`` over [unconditional ; conditional] rows: the first n read nothing (exemplar_keep
    False), the last n read as before. Unconditional rows still need a valid bank row to gather."""
    keep = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]).to(device)
    if read.exemplar_keep is not None:
        keep = keep & torch.cat([read.exemplar_keep, read.exemplar_keep]).to(device=device, dtype=torch.bool)
    index = read.exemplar_index
    index = torch.arange(n, device=device) if index is None else index
    match = read.match_labels
    return dataclasses.replace(
        read, exemplar_keep=keep, exemplar_index=torch.cat([index, index]),
        match_labels=None if match is None else torch.cat([match, match]),
    )


@torch.no_grad()
def ddim_sample(
    model: ExemplarUNet,
    backbone: Backbone,
    target_labels: torch.Tensor,
    exemplar_images: torch.Tensor | None = None,
    exemplar_labels: torch.Tensor | None = None,
    attention: AttentionSettings | str = "augmented",
    steps: int = 25,
    guidance_scale: float = 1.0,
    groups=BLOCK_GROUPS,
    seed: int = 0,
    adapter=None,
) -> torch.Tensor:
    """Images in [-1, 1] (B, 3, H, W) drawing ``target_labels`` (B, H, W) in the exemplars' appearance.

    Each step's bank is written from the exemplar latent noised to that step's timestep with one
    fixed noise draw. ``guidance_scale`` > 1: classifier-free guidance where the unconditional
    prediction uses plain self-attention (no exemplar) and the conditional one reads the exemplar;
    without an exemplar there is nothing to guide away from, and none is applied.
    ``attention``: settings, or a mode name read with ``groups``.
    """
    settings = AttentionSettings.of(attention, groups)
    device = target_labels.device
    batch, (height, width) = target_labels.shape[0], target_labels.shape[-2:]
    f = backbone.latent_downsample
    generator = torch.Generator().manual_seed(seed)
    scheduler = backbone.sample_scheduler()
    scheduler.set_timesteps(steps)
    dtype = next(model.parameters()).dtype
    shape = (batch, backbone.latent_channels, height // f, width // f)
    x = torch.randn(shape, generator=generator).to(device)
    prompt = backbone.prompt_batch(batch).to(device, dtype)
    read, bank_at = None, None
    if settings.reads_exemplar and exemplar_images is not None:
        exemplar_latents = backbone.encode(exemplar_images.to(device, dtype)).float()
        exemplar_noise = torch.randn(exemplar_latents.shape, generator=generator).to(device)

        def bank_at(i: int, t: torch.Tensor) -> Bank:
            tt = t.to(device).expand(batch)
            noisy_exemplar = scheduler.add_noise(exemplar_latents, exemplar_noise, tt)
            return model.write_bank(noisy_exemplar, tt, exemplar_labels, prompt)

        read = ExemplarRead(settings=settings, exemplar_labels=exemplar_labels, adapter=adapter)
    x = denoise(
        model, scheduler, x, target_labels, prompt, backbone.prompt_batch(batch, negative=True).to(device, dtype),
        read=read, bank_at=bank_at, guidance_scale=guidance_scale if read is not None else 1.0,
        batch_guidance=False,
    )
    return backbone.decode(x)
