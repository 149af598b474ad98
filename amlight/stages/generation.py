"""Stage 1: train structure guidance and the UNet to denoise, reading a self-pair exemplar's bank."""
from __future__ import annotations

from pathlib import Path
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
Guidance = Literal["structure", "controlnet"]


class GenerationStage(DenoisingStage):
    """Args:
        num_classes, ignore_index: of the label maps (the CLI links them from the DataModule).
        backbone, backbone_path, backbone_options, prompt, seed: which frozen backbone (see amlight.backbone).
        init_from: a pipeline folder (``python -m amlight export`` or ``assemble``) to start from: its VAE,
            prompt and scheduler are the backbone, and its UNet and structure guidance are the starting
            weights, with the folder's guidance kind, colours, scale and width (``guidance_scale`` and
            ``guidance_channels`` are not used); ``backbone``, ``backbone_path`` and ``backbone_options`` stay
            unset, and ``guidance`` / ``controlnet_colors`` may only repeat what the folder holds.
        guidance_channels: width of the structure-guidance conv net that reads the one-hot label map (more
            channels: more weights and memory).
        guidance_scale: weight of the guidance output (brought to the UNet features' mean and std) added to
            the UNet's features right after conv_in; with ``guidance: controlnet``, the ControlNet's
            conditioning scale.
        guidance: "structure" (the ControlNeXt-style conv net) or "controlnet" (a ControlNet copied from the
            UNet's encoder, reading the label map drawn in ``controlnet_colors``); unset: "structure", or
            the kind ``init_from``'s folder holds.
        controlnet_colors: with ``guidance: controlnet``, how classes are drawn for it: a dataset name with a
            shipped colour map (cityscapes, bdd100k, ade20k) or one [r, g, b] per class; None: the first
            ADE20K colours, one per class (distinct colours, for a ControlNet trained from scratch).
        guidance_trainable: train the structure guidance (false: it stays as initialised or loaded).
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
        init_from: str | None = None,
        guidance_channels: int = 32,
        guidance_scale: float = 1.0,
        guidance: Guidance | None = None,
        controlnet_colors: str | list[list[int]] | None = None,
        guidance_trainable: bool = True,
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
        if init_from is not None:
            self._init_from_folder(init_from, num_classes, guidance, controlnet_colors,
                                   backbone, backbone_path, backbone_options, gradient_checkpointing)
            self._set_trainable(trainable)
            self.model.guidance.requires_grad_(guidance_trainable)
            return
        if backbone == "pipeline":
            raise ValueError("backbone 'pipeline' is a pipeline folder's own: set init_from to the folder instead")
        guidance = guidance or "structure"
        self.hparams["guidance"] = guidance  # resolved: what load_stage1 rebuilds
        self.backbone: Backbone = get_backbone(backbone, path=backbone_path, prompt=prompt, seed=seed, options=backbone_options)
        class_colors = None
        if guidance == "controlnet":
            class_colors = stage1_class_colors(controlnet_colors, num_classes)
            # Kept with the hyper-parameters: what load_stage1 rebuilds the guidance with.
            self.hparams["class_colors"] = class_colors
        self.model = build_exemplar_unet(
            self.backbone, num_classes, ignore_index, guidance_channels=guidance_channels, guidance_scale=guidance_scale,
            guidance=guidance, class_colors=class_colors,
        )
        self.train_scheduler = self.backbone.train_scheduler()
        self._set_trainable(trainable)
        self.model.guidance.requires_grad_(guidance_trainable)
        if gradient_checkpointing:
            self.model.unet.enable_gradient_checkpointing()

    def _init_from_folder(self, folder, num_classes, guidance, controlnet_colors, backbone, backbone_path,
                          backbone_options, gradient_checkpointing) -> None:
        """The backbone, UNet and structure guidance of a pipeline folder, as trainable copies; the
        hyper-parameters rewritten to what the folder holds, so that load_stage1 rebuilds the model."""
        from amlight.backbone.registry import backbone_from_spec
        from amlight.checkpoints.pipeline_folder import check_pipeline_folder
        from amlight.checkpoints.stage1 import guidance_hparams, load_folder_guidance
        from amlight.modules.exemplar_unet import ExemplarUNet

        folder = str(folder)
        if backbone not in ("tiny", "pipeline") or backbone_path is not None or backbone_options:
            raise ValueError(f"init_from {folder}: the folder carries its own backbone; leave backbone, "
                             "backbone_path and backbone_options unset")
        # check_pipeline_folder accepts only the structure-guidance classes amlight knows.
        index = check_pipeline_folder(Path(folder))
        kind = index["structure_guidance"][1]
        folder_guidance = "controlnet" if kind == "ControlNetGuidance" else "structure"
        if guidance is not None and guidance != folder_guidance:
            raise ValueError(f"init_from {folder} holds {folder_guidance!r} guidance ({kind}), but guidance is "
                             f"{guidance!r}: drop guidance or make it match")
        # Plain weights, not the frozen, cached stage-1 model: this one trains.
        net = load_folder_guidance(Path(folder), index).train()
        config = net.config
        if int(config.num_classes) != num_classes:
            raise ValueError(f"init_from {folder}: its structure guidance reads {config.num_classes} classes, "
                             f"but num_classes is {num_classes} (the data's)")
        described = guidance_hparams(net)
        if folder_guidance == "controlnet":
            if controlnet_colors is not None and \
                    stage1_class_colors(controlnet_colors, num_classes) != described["class_colors"]:
                raise ValueError(f"init_from {folder}: controlnet_colors differ from the folder's class colours "
                                 "(structure_guidance/config.json); drop controlnet_colors")
        elif controlnet_colors is not None:
            raise ValueError(f"init_from {folder} holds 'structure' guidance: controlnet_colors has no use")
        self.hparams.update(described, backbone="pipeline", backbone_path=folder)
        self.backbone = backbone_from_spec({"preset": "pipeline", "path": folder})
        self.model = ExemplarUNet(self.backbone.new_unet(), net, ignore_index=int(config.ignore_index))
        self.train_scheduler = self.backbone.train_scheduler()
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



def stage1_class_colors(colors, num_classes: int) -> list[list[int]]:
    """One [r, g, b] per class for ControlNet guidance (see GenerationStage's ``controlnet_colors``)."""
    if colors is None:
        from amlight.data.datasets.ade20k import COLORS

        if num_classes > len(COLORS):
            raise ValueError(f"{num_classes} classes but only {len(COLORS)} default colours: give controlnet_colors")
        return [list(c) for c in COLORS[:num_classes]]
    if isinstance(colors, str):
        from amlight.data.controlnet_colors import controlnet_color_map
        from amlight.data.registry import get_dataset_entry

        metadata = get_dataset_entry(colors).metadata
        if metadata is not None and len(metadata.class_names) != num_classes:
            # Otherwise the first num_classes colours of another label space would be used silently.
            raise ValueError(f"controlnet_colors {colors!r}: {colors} has {len(metadata.class_names)} classes but "
                             f"num_classes is {num_classes}; give one [r, g, b] per class instead")
        table = controlnet_color_map(colors)
        return [[int(v) for v in table[i]] for i in range(num_classes)]
    colors = [[int(v) for v in c] for c in colors]
    if len(colors) != num_classes:
        raise ValueError(f"controlnet_colors holds {len(colors)} colours for {num_classes} classes")
    return colors
