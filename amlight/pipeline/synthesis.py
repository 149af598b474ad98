"""The inference pipeline of METHOD.md part 7: inverted exemplar banks + batched classifier-free guidance.

Each denoising step is ONE UNet call over 2N rows [unconditional ; conditional]:
- unconditional rows: empty prompt and ``exemplar_keep=False``, i.e. plain self-attention (the
  exemplar part of their logits is -inf, so the adapter's refinement there has no effect);
- conditional rows: the fixed prompt, reading their exemplar's bank (``exemplar_index``) in ``mode``.

Guidance is combined on the raw model output. Whatever the prediction type, epsilon (and x0) are
affine in the output with coefficients that depend only on (x, t), which both halves share, and the
guidance weights (1 - s, s) sum to one: combining outputs is exactly combining epsilons.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from amlight.backbone import Backbone
from amlight.modules.attention_modes import BLOCK_GROUPS, check_groups, check_mode
from amlight.pipeline.exemplar_cache import ExemplarBanks, build_exemplar_banks


class AMPipeline:
    def __init__(self, model, backbone: Backbone, adapter=None):
        self.model = model
        self.backbone = backbone
        self.adapter = adapter
        # Work done by __call__ (accumulated): batched UNet calls and sample rows they evaluated.
        self.unet_calls = 0
        self.unet_rows = 0

    @classmethod
    def from_checkpoints(
        cls, stage1_path: str | Path, adapter_path: str | Path | None = None, device: str | torch.device | None = None
    ) -> "AMPipeline":
        from amlight.backbone.stage1_model import load_stage1
        from amlight.stages.adapter_io import load_adapter

        stage1 = load_stage1(stage1_path)
        if device is not None:
            stage1.to(device)
        adapter = None
        if adapter_path is not None:
            adapter = load_adapter(adapter_path, stage1)
            if device is not None:
                adapter = adapter.to(device)
        return cls(stage1.model, stage1.backbone, adapter)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def reset_counters(self) -> None:
        self.unet_calls = 0
        self.unet_rows = 0

    def build_banks(self, exemplar_images: torch.Tensor, exemplar_labels: torch.Tensor, steps: int = 20,
                    seed: int = 0) -> ExemplarBanks:
        return build_exemplar_banks(self.model, self.backbone, exemplar_images, exemplar_labels, steps, seed=seed)

    def _index(self, exemplar_index, banks: ExemplarBanks, n: int, device) -> torch.Tensor:
        if exemplar_index is None:
            if banks.batch == n:
                return torch.arange(n, device=device)
            if banks.batch == 1:
                return torch.zeros(n, dtype=torch.long, device=device)
            raise ValueError(
                f"{n} targets and {banks.batch} exemplars: give exemplar_index to say which exemplar each target uses"
            )
        index = torch.as_tensor(exemplar_index, device=device).long().reshape(-1)
        if index.shape[0] != n:
            raise ValueError(f"exemplar_index has {index.shape[0]} entries for {n} targets")
        if index.numel() and (index.min() < 0 or index.max() >= banks.batch):
            raise ValueError(f"exemplar_index must lie in [0, {banks.batch}), got {index.tolist()}")
        return index

    @torch.no_grad()
    def __call__(
        self,
        target_labels: torch.Tensor,
        banks: ExemplarBanks | None = None,
        exemplar_index: torch.Tensor | None = None,
        mode: str = "adapter",
        guidance_scale: float = 3.0,
        seed: int = 0,
        groups: Iterable[str] = BLOCK_GROUPS,
        steps: int | None = None,
    ) -> torch.Tensor:
        """Images in [-1, 1] (N, 3, H, W) drawing ``target_labels`` (N, H, W).

        The schedule is the banks' (``steps`` only matters for ``structure_only`` without banks).
        """
        check_mode(mode)
        groups = check_groups(groups)
        use_bank = mode != "structure_only"
        if use_bank and banks is None:
            raise ValueError(f"mode {mode!r} needs exemplar banks (build_exemplar_banks or generate)")
        if mode == "adapter" and self.adapter is None:
            raise ValueError("mode 'adapter' needs an adapter: pass adapter_path / adapter, or pick 'augmented'")
        device, dtype = self.device, self.dtype
        labels = target_labels.to(device)
        n, (height, width) = labels.shape[0], labels.shape[-2:]
        f = self.backbone.latent_downsample
        latent_size = (height // f, width // f)

        if banks is not None:
            if steps is not None and steps != banks.steps:
                raise ValueError(f"steps={steps} but the banks were built for {banks.steps} steps")
            steps = banks.steps
        steps = 20 if steps is None else steps
        scheduler = self.backbone.sample_scheduler()
        scheduler.set_timesteps(steps)
        if banks is not None and not torch.equal(scheduler.timesteps.cpu(), banks.timesteps.cpu()):
            raise ValueError("the banks were built on another schedule than this backbone's sampler")

        index = exemplar_labels = None
        if use_bank:
            if tuple(banks.latent_size) != latent_size:
                raise ValueError(f"targets have latent size {latent_size}, the exemplar banks {tuple(banks.latent_size)}")
            index = self._index(exemplar_index, banks, n, device)
            exemplar_labels = banks.exemplar_labels.to(device)

        generator = torch.Generator().manual_seed(seed)
        x = torch.randn((n, self.backbone.latent_channels, *latent_size), generator=generator).to(device, dtype)
        cond = self.backbone.prompt_batch(n).to(device, dtype)
        cfg = guidance_scale != 1.0
        if cfg:
            uncond = self.backbone.prompt_batch(n, negative=True).to(device, dtype)
            prompt = torch.cat([uncond, cond])
            row_labels = torch.cat([labels, labels])
            keep = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]).to(device)
            # Unconditional rows still need a valid bank row to gather; their exemplar part is masked.
            row_index = None if index is None else torch.cat([index, index])
        else:
            prompt, row_labels, keep, row_index = cond, labels, None, index
        adapter = self.adapter if mode == "adapter" else None

        for i, t in enumerate(scheduler.timesteps):
            rows = torch.cat([x, x]) if cfg else x
            tt = torch.full((rows.shape[0],), int(t), device=device, dtype=torch.long)
            if use_bank:
                out = self.model(
                    rows, tt, row_labels, prompt, bank=banks.banks[i], exemplar_labels=exemplar_labels,
                    attention=mode, groups=groups, exemplar_keep=keep, exemplar_index=row_index, adapter=adapter,
                )
            else:
                out = self.model(rows, tt, row_labels, prompt)
            self.unet_calls += 1
            self.unet_rows += rows.shape[0]
            if cfg:
                out_uncond, out_cond = out.chunk(2)
                out = out_uncond + guidance_scale * (out_cond - out_uncond)
            x = scheduler.step(out.to(x.dtype), t, x).prev_sample
        return self.backbone.decode(x)

    def generate(
        self,
        exemplar_images: torch.Tensor,
        exemplar_labels: torch.Tensor,
        target_labels: torch.Tensor,
        exemplar_index: torch.Tensor | None = None,
        steps: int = 20,
        mode: str = "adapter",
        **kwargs,
    ) -> torch.Tensor:
        """Build the exemplars' banks once, then draw every target with them."""
        banks = None if mode == "structure_only" else self.build_banks(exemplar_images, exemplar_labels, steps)
        return self(target_labels, banks, exemplar_index, mode=mode, steps=steps, **kwargs)
