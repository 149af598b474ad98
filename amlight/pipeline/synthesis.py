"""The inference pipeline of METHOD.md part 7: inverted exemplar banks + batched classifier-free guidance.

Each denoising step is ONE UNet call over 2N rows [unconditional ; conditional] (the loop is
amlight.pipeline.sampling's ``ddim_denoise``):
- unconditional rows: empty prompt and ``exemplar_keep=False``, i.e. plain self-attention (the
  exemplar part of their logits is -inf, so the adapter's refinement there has no effect);
- conditional rows: the fixed prompt, reading their exemplar's bank (``exemplar_index``) as ``attention`` says.
Why combining raw outputs is exact guidance: see amlight.pipeline.sampling.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch

from amlight.backbone import Backbone
from amlight.checkpoints.adapter_files import load_adapter
from amlight.checkpoints.stage1 import load_stage1
from amlight.modules.attention_modes import AttentionSettings
from amlight.modules.exemplar_context import ExemplarRead
from amlight.pipeline.exemplar_banks import ExemplarBanks, build_exemplar_banks
from amlight.pipeline.finite import check_finite
from amlight.pipeline.sampling import ddim_denoise


class AMPipeline:
    def __init__(self, model, backbone: Backbone, adapter=None, attention_chunk: int | None = None):
        self.model = model
        self.backbone = backbone
        self.adapter = adapter
        # Memory option: target queries per chunk in mask-based exemplar attention (None: all at once).
        self.attention_chunk = attention_chunk
        # Work done by __call__ (accumulated): batched UNet calls and sample rows they evaluated.
        self.unet_calls = 0
        self.unet_rows = 0

    @classmethod
    def from_checkpoints(
        cls,
        stage1_path: str | Path,
        adapter_path: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        attention_chunk: int | None = None,
        offload_vae: bool = False,
    ) -> "AMPipeline":
        """A pipeline on a stage-1 checkpoint and (optionally) an adapter file or stage-2 checkpoint.

        Memory options for small GPUs: ``dtype`` (torch.bfloat16 / float16) casts the UNet, guidance,
        adapter and VAE; ``attention_chunk`` computes mask-based exemplar attention a chunk of target
        queries at a time; ``offload_vae`` keeps the VAE on the CPU (it runs only to encode exemplars
        and decode results). The stage-1 model is shared with every other user of ``load_stage1`` in
        this process, so the cast and move apply to them too.
        """
        stage1 = load_stage1(stage1_path)
        # Shared with training stages: a move under inference mode would make its weights inference tensors.
        with torch.inference_mode(False):
            if device is not None or dtype is not None:
                target = torch.device(device) if device is not None else stage1.backbone.device
                stage1.model.to(device=target, dtype=dtype)
                stage1.backbone.to(target, dtype)
            if offload_vae and stage1.backbone.vae is not None:
                stage1.backbone.vae.to("cpu")
        adapter = None
        if adapter_path is not None:
            adapter = load_adapter(adapter_path, stage1)
            param = next(stage1.model.parameters())
            adapter = adapter.to(device=param.device, dtype=param.dtype)
        return cls(stage1.model, stage1.backbone, adapter, attention_chunk=attention_chunk)

    @property
    def num_classes(self) -> int:
        return int(self.model.guidance.num_classes)

    @property
    def ignore_index(self) -> int:
        return int(self.model.ignore_index)

    @property
    def resolution(self) -> tuple[int, int]:
        """The image size (H, W) the backbone was built for."""
        size = self.model.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else size
        f = self.backbone.latent_downsample
        return int(h) * f, int(w) * f

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def auto_batch_size(self, size: tuple[int, int], steps: int, attentions, cap: int) -> tuple[int, str | None]:
        """Targets per batch that fit this device's free memory at image ``size`` (H, W), ``cap`` at
        most, for the attention settings or mode names ``attentions``; and a note saying how it was
        chosen. On a CPU: ``cap`` and no note."""
        from amlight.pipeline.memory import GiB, batch_size_for, describe, free_device_memory, target_memory

        free = free_device_memory(self.device)
        if free is None:
            return cap, None
        adapter_reads = [a for a in map(AttentionSettings.of, attentions) if a.uses_adapter]
        explicit = bool(adapter_reads) and self.adapter is not None
        max_resolution = max((a.max_resolution or 0 for a in adapter_reads), default=0) or None
        vae = self.backbone.vae
        on_device = vae is not None and next(vae.parameters()).device == self.device
        f = self.backbone.latent_downsample
        per_target = target_memory(self.model, vae if on_device else None, (size[0] // f, size[1] // f), steps,
                                   explicit, self.adapter if explicit else None, max_resolution)
        batch = batch_size_for(free, per_target, cap)
        return batch, (f"batch size {batch} (auto, at most {cap}): {free / GiB:.1f} GiB free on {self.device}, "
                       f"about {describe(per_target)} at {size[0]}x{size[1]}")

    def reset_counters(self) -> None:
        self.unet_calls = 0
        self.unet_rows = 0

    def build_banks(self, exemplar_images: torch.Tensor, exemplar_labels: torch.Tensor, steps: int = 20,
                    seed: int = 0, match_labels: torch.Tensor | None = None) -> ExemplarBanks:
        return build_exemplar_banks(self.model, self.backbone, exemplar_images, exemplar_labels, steps, seed=seed,
                                    match_labels=match_labels)

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
        attention: AttentionSettings | str = "adapter",
        guidance_scale: float = 3.0,
        seed: int | Sequence[int] = 0,
        steps: int | None = None,
        target_match_labels: torch.Tensor | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Images in [-1, 1] (N, 3, H, W) drawing ``target_labels`` (N, H, W).

        The schedule is the banks' (``steps`` only matters for ``structure_only`` without banks).
        ``seed``: one int (every target starts from the noise of ``Generator().manual_seed(seed)``)
        or one seed per target. Either way a target's image does not depend on which other targets
        share its batch, so ``batch_size`` (targets per UNet call, None: all) only trades memory for
        speed, and a resumed run redraws exactly the images it skipped.
        ``attention``: how the conditional rows read the exemplar (mode, block groups, appearance
        strength, the adapter's pooling size for this call); a mode name means its defaults.
        ``target_match_labels``: what the categorical cost compares with the banks' labels (one-to-one
        mapping); defaults to ``target_labels``.
        """
        settings = AttentionSettings.of(attention)
        use_bank = settings.reads_exemplar
        if use_bank and banks is None:
            raise ValueError(f"mode {settings.mode!r} needs exemplar banks (build_exemplar_banks or generate)")
        if settings.uses_adapter and self.adapter is None:
            raise ValueError("mode 'adapter' needs an adapter: pass adapter_path / adapter, or pick 'augmented'")
        if target_labels.ndim != 3:
            raise ValueError(f"target_labels must be (N, H, W), got shape {tuple(target_labels.shape)}")
        device = self.device
        labels = target_labels.to(device)
        match = labels if target_match_labels is None else target_match_labels.to(device)
        if match.shape != labels.shape:
            raise ValueError(f"target_match_labels {tuple(match.shape)} and target_labels {tuple(labels.shape)} differ")
        n, (height, width) = labels.shape[0], labels.shape[-2:]
        f = self.backbone.latent_downsample
        if height % f or width % f:
            raise ValueError(f"image size {height}x{width} is not a multiple of the backbone's {f}-pixel latent cells")
        latent_size = (height // f, width // f)
        seeds = _per_target_seeds(seed, n)

        if banks is not None:
            if steps is not None and steps != banks.steps:
                raise ValueError(f"steps={steps} but the banks were built for {banks.steps} steps")
            steps = banks.steps
        steps = 20 if steps is None else steps
        scheduler = self.backbone.sample_scheduler()
        scheduler.set_timesteps(steps)
        if banks is not None and not torch.equal(scheduler.timesteps.cpu(), banks.timesteps.cpu()):
            raise ValueError("the banks were built on another schedule than this backbone's sampler")

        index = None
        if use_bank:
            if tuple(banks.latent_size) != latent_size:
                raise ValueError(f"targets have latent size {latent_size}, the exemplar banks {tuple(banks.latent_size)}")
            index = self._index(exemplar_index, banks, n, device)
            _warn_uncovered(match, banks.exemplar_labels.to(device)[index], self.ignore_index)

        chunk = n if not batch_size else int(batch_size)
        images = []
        for start in range(0, n, chunk):
            rows = slice(start, min(start + chunk, n))
            images.append(self._denoise(
                scheduler, labels[rows], match[rows], seeds[rows], banks, None if index is None else index[rows],
                settings, guidance_scale, latent_size,
            ))
        return torch.cat(images)

    def _denoise(self, scheduler, labels, match, seeds, banks, index, settings: AttentionSettings, guidance_scale,
                 latent_size) -> torch.Tensor:
        device, dtype = self.device, self.dtype
        n = labels.shape[0]
        shape = (1, self.backbone.latent_channels, *latent_size)
        x = torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)
        read = None
        if index is not None:
            read = ExemplarRead(
                settings=settings, exemplar_labels=banks.exemplar_labels.to(device), exemplar_index=index,
                match_labels=match, adapter=self.adapter if settings.uses_adapter else None,
                query_chunk=self.attention_chunk,
            )
        x = ddim_denoise(
            self.model, scheduler, x, labels, self.backbone.prompt_batch(n).to(device, dtype),
            self.backbone.prompt_batch(n, negative=True).to(device, dtype),
            read=read, bank_at=lambda i, t: banks.banks[i], guidance_scale=guidance_scale, batch_guidance=True,
            on_unet_call=self._count,
        )
        images = self.backbone.decode(x)
        if self.backbone.vae is not None:
            check_finite(images, "VAE decoding", self.backbone.vae, lambda: self.backbone.decode(x))
        return images

    def _count(self, rows: int) -> None:
        self.unet_calls += 1
        self.unet_rows += rows

    def generate(
        self,
        exemplar_images: torch.Tensor,
        exemplar_labels: torch.Tensor,
        target_labels: torch.Tensor,
        exemplar_index: torch.Tensor | None = None,
        steps: int = 20,
        attention: AttentionSettings | str = "adapter",
        exemplar_match_labels: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Build the exemplars' banks once, then draw every target with them (kwargs: see __call__)."""
        settings = AttentionSettings.of(attention)
        banks = None
        if settings.reads_exemplar:
            banks = self.build_banks(exemplar_images, exemplar_labels, steps, match_labels=exemplar_match_labels)
        return self(target_labels, banks, exemplar_index, attention=settings, steps=steps, **kwargs)


class UncoveredClassWarning(UserWarning):
    """A target region whose class its exemplar lacks: nothing to copy there, it is drawn from the prior."""


def uncovered_classes(target_labels, exemplar_labels, ignore_index: int = 255) -> list[int]:
    """Classes of one target label map (H, W) that its exemplar's label map does not contain."""
    target = set(torch.as_tensor(target_labels).unique().tolist())
    exemplar = set(torch.as_tensor(exemplar_labels).unique().tolist())
    return sorted(target - exemplar - {ignore_index})


def _warn_uncovered(target_labels: torch.Tensor, exemplar_labels: torch.Tensor, ignore_index: int) -> None:
    missing = {i: m for i in range(target_labels.shape[0])
               if (m := uncovered_classes(target_labels[i], exemplar_labels[i], ignore_index))}
    if missing:
        listing = "; ".join(f"target {i}: {m}" for i, m in list(missing.items())[:8])
        more = f" (and {len(missing) - 8} more targets)" if len(missing) > 8 else ""
        warnings.warn(
            f"{len(missing)} target(s) have classes their exemplar lacks ({listing}{more}): those regions have "
            "nothing to copy and are drawn from the prior", UncoveredClassWarning, stacklevel=3,
        )


def _per_target_seeds(seed, n: int) -> list[int]:
    if isinstance(seed, int):
        return [seed] * n
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} targets")
    return seeds
