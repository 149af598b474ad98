"""Stage 1: train structure guidance and the UNet to denoise, reading a self-pair exemplar's bank."""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from amlight.backbone import Backbone, get_backbone
from amlight.modules.attention_modes import BLOCK_GROUPS, AttentionMode, AttentionSettings
from amlight.modules.exemplar_context import ExemplarRead
from amlight.modules.exemplar_unet import build_exemplar_unet
from amlight.pipeline.sampling import ddim_sample
from amlight.checkpoints.files import FORMAT_VERSION, plain
from amlight.stages.denoising_stage import DenoisingStage, randn_like, random_timesteps, random_uniform
from amlight.stages.frozen_parts import place_backbone

Trainable = Literal["all", "attention", "guidance"]


class GenerationStage(DenoisingStage):
    """Args:
        num_classes, ignore_index: of the label maps (the CLI links them from the DataModule).
        backbone, backbone_path, backbone_options, prompt, seed: which frozen backbone (see amlight.backbone).
        guidance_channels: width of the structure-guidance conv net that reads the one-hot label map (more
            channels: more weights and memory).
        guidance_scale: weight of the guidance output (brought to the UNet features' mean and std) added to
            the UNet's features right after conv_in.
        trainable: "all" (UNet + guidance), "attention" (guidance + the UNet's attention blocks), "guidance".
        attention: how the generation branch reads the exemplar while training; "structure_only" trains
            without the exemplar branch.
        attention_blocks: which UNet block groups read the exemplar bank (down, mid, up).
        exemplar_dropout: share of samples trained without the exemplar, so that classifier-free guidance
            has an unconditional (no exemplar) prediction to push away from.
        appearance_grad: let gradients flow through the appearance branch (slower; the bank learns too).
        gradient_checkpointing: recompute the UNet's activations in the backward pass: less memory, slower steps.
        sample_steps, sample_guidance_scale: the DDIM sampler of validation grids.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        backbone: str = "tiny",
        backbone_path: str | None = None,
        backbone_options: dict[str, Any] | None = None,
        prompt: str = "",
        seed: int = 0,
        guidance_channels: int = 32,
        guidance_scale: float = 1.0,
        trainable: Trainable = "all",
        attention: AttentionMode = "augmented",
        attention_blocks: list[str] = list(BLOCK_GROUPS),
        exemplar_dropout: float = 0.1,
        appearance_grad: bool = False,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        gradient_checkpointing: bool = False,
        sample_steps: int = 25,
        sample_guidance_scale: float = 1.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if self.attention_settings.uses_adapter:
            raise ValueError("stage 1 trains without the adapter; use 'augmented' or 'hard_mask' (AdapterStage adds it)")
        self.backbone: Backbone = get_backbone(backbone, path=backbone_path, prompt=prompt, seed=seed, options=backbone_options)
        self.model = build_exemplar_unet(
            self.backbone, num_classes, ignore_index, guidance_channels=guidance_channels, guidance_scale=guidance_scale
        )
        self.train_scheduler = self.backbone.train_scheduler()
        self._set_trainable(trainable)
        if gradient_checkpointing:
            self.model.unet.enable_gradient_checkpointing()

    def _set_trainable(self, trainable: str) -> None:
        unet = self.model.unet
        unet.requires_grad_(trainable == "all")
        if trainable == "attention":
            for name, p in unet.named_parameters():
                p.requires_grad_("attentions." in name)
        elif trainable not in ("all", "guidance"):
            raise ValueError(f"unknown trainable {trainable!r}; choose all, attention or guidance")

    # --- frozen parts follow the module's device (they are not submodules, so Lightning does not move them)
    def place_frozen(self) -> None:
        backbone = self.__dict__.get("backbone")
        if backbone is not None:  # None while __init__ runs
            place_backbone(backbone, self.device)

    def frozen(self) -> Backbone:
        self.place_frozen()
        return self.backbone

    def probe_parts(self):
        """(ExemplarUNet, Backbone, adapter or None): what attention probes and callbacks run."""
        return self.model, self.frozen(), None

    @property
    def attention_settings(self) -> AttentionSettings:
        """How the generation branch reads the exemplar, from the hyper-parameters (validated there)."""
        hp = self.hparams
        return AttentionSettings(hp.attention, frozenset(hp.attention_blocks))

    @property
    def uses_exemplar(self) -> bool:
        return self.attention_settings.reads_exemplar

    def denoising_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        bb = self.frozen()
        hp = self.hparams
        latents = bb.encode(batch["image"], generator)
        batch_size = latents.shape[0]
        T = self.train_scheduler.config.num_train_timesteps

        t = random_timesteps(T, batch_size, self.device, generator)
        noise = randn_like(latents, generator)
        noisy = self.train_scheduler.add_noise(latents, noise, t)
        prompt = bb.prompt_batch(batch_size).to(latents)
        read = None
        if self.uses_exemplar:
            ex_latents = bb.encode(batch["exemplar_image"], generator)
            # The exemplar is noised to the same timestep as the target, with its own noise.
            ex_noisy = self.train_scheduler.add_noise(ex_latents, randn_like(ex_latents, generator), t)
            with torch.set_grad_enabled(hp.appearance_grad and torch.is_grad_enabled()):
                bank = self.model.write_bank(ex_noisy, t, batch["exemplar_labels"], prompt)
            keep = None
            if hp.exemplar_dropout > 0 and self.training:
                keep = random_uniform(batch_size, self.device, generator) >= hp.exemplar_dropout
            read = ExemplarRead(bank, self.attention_settings, exemplar_labels=batch["exemplar_labels"],
                                exemplar_keep=keep)
        pred = self.model(noisy, t, batch["labels"], prompt, read)
        target = bb.training_target(self.train_scheduler, latents, noise, t)
        return F.mse_loss(pred.float(), target.float())

    @torch.no_grad()
    def generate(self, batch: dict, attention: str | None = None, steps: int | None = None,
                 guidance_scale: float | None = None, seed: int = 0) -> torch.Tensor:
        """Images in [-1, 1] for the batch's target labels in the batch's exemplars' appearance."""
        hp = self.hparams
        settings = self.attention_settings if attention is None else self.attention_settings.replace(mode=attention)
        return ddim_sample(
            self.model, self.frozen(), batch["labels"].to(self.device),
            exemplar_images=batch["exemplar_image"].to(self.device),
            exemplar_labels=batch["exemplar_labels"].to(self.device),
            attention=settings, steps=steps or hp.sample_steps,
            guidance_scale=hp.sample_guidance_scale if guidance_scale is None else guidance_scale, seed=seed,
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # A plain record next to Lightning's own keys: enough to rebuild the model with weights_only loading.
        checkpoint["amlight"] = {
            "stage": "generation",
            "format_version": FORMAT_VERSION,
            "backbone": plain(self.backbone.spec),
            "hparams": plain(dict(self.hparams)),
        }

