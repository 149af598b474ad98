"""Per-step exemplar banks: the inverted exemplar's self-attention tokens at every sampling step.

A bank depends only on the exemplar (its image, labels, the schedule), never on the target, so one
exemplar's banks are computed once and then serve any number of targets through ``exemplar_index``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from amlight.backbone import Backbone
from amlight.pipeline.inversion import invert
from amlight.pipeline.schedulers import fresh_scheduler

Bank = dict[str, torch.Tensor]


@dataclass
class ExemplarBanks:
    timesteps: torch.Tensor  # (steps,) sampling order, highest first
    banks: list[Bank]  # banks[i]: layer -> (Bx, tokens, channels) at timesteps[i]
    # (Bx, H, W): the labels the categorical cost reads (the match labels of a one-to-one mapping,
    # otherwise the exemplar's own labels)
    exemplar_labels: torch.Tensor
    latent_size: tuple[int, int]
    unet_calls: int = 0  # batched UNet calls spent building these banks (inversion + bank writing)
    unet_rows: int = 0  # the same in sample rows
    meta: dict = field(default_factory=dict)

    @property
    def controlnet_scale(self) -> float | None:
        """The ControlNet conditioning scale the banks were written at (None: no ControlNet)."""
        return self.meta.get("controlnet_scale")

    @property
    def steps(self) -> int:
        return len(self.banks)

    @property
    def batch(self) -> int:
        return int(self.exemplar_labels.shape[0])

    def __len__(self) -> int:
        return self.steps


def _model_device_dtype(model, fallback: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    param = next(iter(model.parameters()), None)
    return (fallback.device, fallback.dtype) if param is None else (param.device, param.dtype)


def _check_match(match_labels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if tuple(match_labels.shape) != tuple(labels.shape):
        raise ValueError(f"match labels have shape {tuple(match_labels.shape)}, the exemplar labels {tuple(labels.shape)}")
    return match_labels


@torch.no_grad()
def build_exemplar_banks(
    model,
    backbone: Backbone,
    exemplar_images: torch.Tensor,
    exemplar_labels: torch.Tensor,
    steps: int = 20,
    seed: int = 0,
    match_labels: torch.Tensor | None = None,
    scheduler=None,
    conditioning_scale: float | None = None,
) -> ExemplarBanks:
    """Encode, invert (deterministic DDIM along the sampler's timesteps) and write the banks of
    ``exemplar_images`` (Bx, 3, H, W) in [-1, 1].

    Structure guidance reads ``exemplar_labels``; the categorical cost later reads ``match_labels``
    when given (same shape: one-to-one mapping), else ``exemplar_labels``.

    ``scheduler``: the sampler the banks will serve (a template, any diffusers scheduler; None: the
    backbone's DDIM). Bank i is written at its i-th timestep of ``steps``, on the inverted latent in
    the scale the UNet sees there (see amlight.pipeline.inversion).

    ``conditioning_scale``: with ControlNet guidance, its residual weight in the inversion and the bank
    writing (None: its configured one), recorded in ``meta["controlnet_scale"]``: banks written at one
    scale are refused by a draw at another (the appearance branch's tokens depend on it).

    Costs 2 * ``steps`` batched UNet calls over the Bx exemplars, whatever the number of targets.
    """
    device, dtype = _model_device_dtype(model, exemplar_images)
    # The scale actually used (None without a ControlNet; giving one then is a ValueError), checked
    # before any work.
    scale = model.controlnet_scale(conditioning_scale) if hasattr(model, "controlnet_scale") else conditioning_scale
    # Encoded from float32 images, the latents come back in float32 (the VAE runs in its own dtype)
    # and so does the inversion that starts from them.
    images = exemplar_images.to(device).float()
    labels = exemplar_labels.to(device)
    # A VAE encoder samples its posterior: a fixed generator keeps the banks reproducible.
    latents = backbone.encode(images, generator=torch.Generator().manual_seed(seed))
    batch = latents.shape[0]
    template = scheduler if scheduler is not None else backbone.sample_scheduler()
    sampler = fresh_scheduler(template, steps)
    trajectory = invert(model, sampler, latents, labels, backbone.prompt_batch(batch, negative=True), scale)
    # The appearance branch writes under the conditional prompt, as in training (inversion alone
    # uses the empty prompt).
    prompt = backbone.prompt_batch(batch).to(device, dtype)
    timesteps = sampler.timesteps.clone()
    banks = []
    for x, t in zip(trajectory, timesteps):
        # The timestep as the sampler gives it (a float for Euler): what the UNet sees when sampling.
        banks.append(model.write_bank(x, t.to(device).expand(batch), labels, prompt,
                                      **({} if scale is None else {"conditioning_scale": scale})))
    calls = 2 * steps
    return ExemplarBanks(
        timesteps=timesteps,
        banks=banks,
        exemplar_labels=labels if match_labels is None else _check_match(match_labels, labels).to(device),
        latent_size=tuple(latents.shape[-2:]),
        unet_calls=calls,
        unet_rows=calls * batch,
        meta={"seed": seed, "scheduler": type(template).__name__, "controlnet_scale": scale},
    )
