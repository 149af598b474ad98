"""Stage 2: train only the AM-Adapter on top of a frozen stage-1 model."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from amlight.checkpoints.adapter_files import check_stage1_match
from amlight.checkpoints.stage1 import Stage1Model, load_stage1
from amlight.modules.adapter import AMAdapter
from amlight.modules.attention_modes import BLOCK_GROUPS, AttentionSettings, check_groups
from amlight.modules.exemplar_context import ExemplarRead
from amlight.pipeline.sampling import ddim_sample
from amlight.checkpoints.files import FORMAT_VERSION, plain
from amlight.stages.denoising_stage import DenoisingStage, randn_like, random_timesteps
from amlight.stages.frozen_parts import place_backbone, place_module


class AdapterStage(DenoisingStage):
    """Args:
        stage1_checkpoint: the GenerationStage checkpoint whose UNet and structure guidance stay frozen, or a
            pipeline folder (``python -m amlight export``) whose stage 1 is used the same way.
        base: the SD 1.5 folder to build the backbone from when the ``backbone_path`` stored in the stage-1
            checkpoint does not exist here (trained on another machine); not used with a pipeline folder.
        num_classes, ignore_index: linked from the data by the CLI; must match stage 1's.
        adapter_channels, adapter_layers, kernel_size, max_resolution: the adapter's 4D conv stack phi.
        attention_blocks: block groups whose self-attention reads the exemplar (and gets the adapter).
        checkpoint_attention: recompute each adapter attention layer in backward, so that training holds
            one layer's (heads, N, 2N) logits at a time instead of all of them (slower; for SD sizes).
        sample_steps, sample_guidance_scale: the DDIM sampler of validation grids.
    """

    def __init__(
        self,
        stage1_checkpoint: str,
        num_classes: int | None = None,
        ignore_index: int | None = None,
        adapter_channels: int = 16,
        adapter_layers: int = 3,
        kernel_size: int = 3,
        max_resolution: int = 32,
        attention_blocks: list[str] = list(BLOCK_GROUPS),
        checkpoint_attention: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 50,
        sample_steps: int = 25,
        sample_guidance_scale: float = 1.0,
        base: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_groups(attention_blocks)
        stage1 = load_stage1(stage1_checkpoint, base=base)
        for name, value, expected in [("num_classes", num_classes, stage1.num_classes),
                                      ("ignore_index", ignore_index, stage1.ignore_index)]:
            if value is not None and value != expected:
                raise ValueError(
                    f"the data has {name}={value} but stage 1 ({stage1_checkpoint}) was trained with {expected}: "
                    "train stage 2 on the label space of stage 1"
                )
        # A plain attribute, not a submodule: the frozen model stays out of checkpoints and DDP.
        self.__dict__["stage1"] = stage1
        self.adapter = AMAdapter(
            heads=stage1.heads, channels=adapter_channels, num_layers=adapter_layers,
            kernel_size=kernel_size, max_resolution=max_resolution, groups=tuple(attention_blocks),
        )
        self.train_scheduler = stage1.backbone.train_scheduler()

    def place_frozen(self) -> None:
        stage1 = self.__dict__.get("stage1")
        if stage1 is not None:  # None while __init__ builds the adapter
            # Each part by its own tensors: the shared backbone may have been moved without this UNet.
            place_module(stage1.model, self.device)
            place_backbone(stage1.backbone, self.device)

    def frozen(self) -> Stage1Model:
        # Normally a no-op (the parts followed the module's move); here for parts someone moved since.
        self.place_frozen()
        return self.stage1

    def attention_settings(self, mode: str = "adapter") -> AttentionSettings:
        """``mode`` read in the trained block groups (stage 2 trains adapter mode)."""
        return AttentionSettings(mode, frozenset(self.hparams.attention_blocks))

    def probe_parts(self):
        s1 = self.frozen()
        return s1.model, s1.backbone, self.adapter

    def denoising_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        s1 = self.frozen()
        bb, model = s1.backbone, s1.model
        latents = bb.encode(batch["image"], generator)
        ex_latents = bb.encode(batch["exemplar_image"], generator)
        batch_size = latents.shape[0]
        T = self.train_scheduler.config.num_train_timesteps
        t = random_timesteps(T, batch_size, self.device, generator)
        noise, ex_noise = randn_like(latents, generator), randn_like(ex_latents, generator)
        prompt = bb.prompt_batch(batch_size).to(latents)
        with torch.no_grad():  # the appearance branch is frozen and needs no graph
            bank = model.write_bank(self.train_scheduler.add_noise(ex_latents, ex_noise, t), t,
                                    batch["exemplar_labels"], prompt)
        read = ExemplarRead(bank, self.attention_settings(), exemplar_labels=batch["exemplar_labels"],
                            adapter=self.adapter, checkpoint_attention=self.hparams.checkpoint_attention)
        pred = model(self.train_scheduler.add_noise(latents, noise, t), t, batch["labels"], prompt, read)
        target = bb.training_target(self.train_scheduler, latents, noise, t)
        return F.mse_loss(pred.float(), target.float())

    @torch.no_grad()
    def generate(self, batch: dict, attention: str = "adapter", steps: int | None = None,
                 guidance_scale: float | None = None, seed: int = 0) -> torch.Tensor:
        s1 = self.frozen()
        hp = self.hparams
        return ddim_sample(
            s1.model, s1.backbone, batch["labels"].to(self.device),
            exemplar_images=batch["exemplar_image"].to(self.device),
            exemplar_labels=batch["exemplar_labels"].to(self.device),
            attention=self.attention_settings(attention), steps=steps or hp.sample_steps,
            guidance_scale=hp.sample_guidance_scale if guidance_scale is None else guidance_scale,
            seed=seed, adapter=self.adapter,
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["amlight"] = {
            "stage": "adapter",
            "format_version": FORMAT_VERSION,
            "stage1": {"path": self.stage1.path, "sha256": self.stage1.sha256},
            "adapter": plain(self.adapter.config),
            "hparams": plain(dict(self.hparams)),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_stage1_match(checkpoint.get("amlight", {}), self.stage1)
