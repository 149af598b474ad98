"""The inference pipeline of docs/method.md#part-7-inference: inverted exemplar banks + batched classifier-free guidance.

:class:`AMPipeline` is a ``diffusers.DiffusionPipeline``: a pipeline folder (``model_index.json`` and
one subfolder per component, safetensors) loads with ``AMPipeline.from_pretrained(DIR)`` and is written
with ``save_pretrained(DIR)``; ``pipe(target_labels, exemplar_image, exemplar_labels)`` is the
diffusers-style call (PIL images, arrays, tensors or file paths in; ``.images`` out). Below it,
``build_banks`` + ``draw`` are the exemplar cache (M exemplars, N targets: M inversions).

Each denoising step is ONE UNet call over 2N rows [unconditional ; conditional] (the loop is
amlight.pipeline.sampling's ``ddim_denoise``):
- unconditional rows: empty prompt and ``exemplar_keep=False``, i.e. plain self-attention (the
  exemplar part of their logits is -inf, so the adapter's refinement there has no effect);
- conditional rows: the fixed prompt, reading their exemplar's bank (``exemplar_index``) as ``attention`` says.
Why combining raw outputs is exact guidance: see amlight.pipeline.sampling.
"""
from __future__ import annotations

import weakref
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput

from amlight.backbone import Backbone
from amlight.backbone.backbone import backbone_from_parts
from amlight.checkpoints.adapter_files import load_adapter
from amlight.checkpoints.stage1 import Stage1Model, load_stage1
from amlight.modules.adapter import AMAdapter
from amlight.modules.attention_modes import AttentionSettings
from amlight.modules.exemplar_context import ExemplarRead
from amlight.modules.exemplar_unet import ExemplarUNet
from amlight.modules.controlnet_guidance import ControlNetGuidance
from amlight.modules.structure_guidance import StructureGuidance
from amlight.pipeline.exemplar_banks import ExemplarBanks, build_exemplar_banks
from amlight.pipeline.finite import check_finite
from amlight.pipeline.label_space import PipelineLabelSpace
from amlight.pipeline.prompt import PromptEmbeddings
from amlight.pipeline.sampling import ddim_denoise
from amlight.pipeline.schedulers import fresh_scheduler

# The ExemplarUNet (attention processors + conv_in hook) and backbone already built around a UNet,
# so that a pipeline over a shared stage-1 model wraps it once, not once per pipeline.
_BUILT: "weakref.WeakKeyDictionary[UNet2DConditionModel, tuple[ExemplarUNet, Backbone]]" = weakref.WeakKeyDictionary()


class AMPipeline(DiffusionPipeline):
    """Exemplar-based semantic image synthesis: a stage-1 UNet with structure guidance, optionally the
    AM-Adapter, the latent codec (``vae``; None in pixel space), the fixed prompt's embeddings, the
    sampler (``scheduler``: any diffusers scheduler) and the label space that reads label PNGs."""

    # enable_model_cpu_offload: the UNet (and a text encoder) go to the accelerator when called and back
    # after the call. The rest stays on the accelerator whole: small parts, or parts used outside their
    # own forward (the adapter inside the UNet's, the VAE through amlight's encode/decode, the prompt and
    # the palette as tensors), which offload hooks would not move in time.
    model_cpu_offload_seq = "text_encoder->unet"
    _exclude_from_cpu_offload = ["structure_guidance", "am_adapter", "prompt_embeddings", "label_space", "vae"]
    _optional_components = ["prompt_embeddings", "label_space", "am_adapter", "vae", "text_encoder", "tokenizer"]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        structure_guidance: StructureGuidance | ControlNetGuidance,
        scheduler,
        prompt_embeddings: PromptEmbeddings | None = None,
        label_space: PipelineLabelSpace | None = None,
        am_adapter: AMAdapter | None = None,
        vae=None,
        text_encoder=None,
        tokenizer=None,
        stage1_sha256: str | None = None,
    ):
        super().__init__()
        self.register_modules(
            unet=unet, structure_guidance=structure_guidance, scheduler=scheduler, prompt_embeddings=prompt_embeddings,
            label_space=label_space, am_adapter=am_adapter, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        )
        # The sha256 of the stage-1 checkpoint this folder was exported from (adapters trained on it fit).
        self.register_to_config(stage1_sha256=stage1_sha256)
        built = _BUILT.get(unet)
        if built is not None and built[0].guidance is structure_guidance:
            self.model, self.backbone = built
        else:
            if prompt_embeddings is None:
                prompt_embeddings = _encode_prompt(text_encoder, tokenizer, label_space)
                self.register_modules(prompt_embeddings=prompt_embeddings)
            ignore_index = int(structure_guidance.ignore_index)
            self.model = ExemplarUNet(unet, structure_guidance, ignore_index=ignore_index).eval()
            self.backbone = backbone_from_parts(
                unet, dict(scheduler.config), prompt_embeddings.prompt_embeds, prompt_embeddings.negative_prompt_embeds,
                vae=vae, spec={"preset": "pipeline", "prompt": prompt_embeddings.config.prompt},
            )
            _BUILT[unet] = (self.model, self.backbone)
        # Memory option: target queries per chunk in mask-based exemplar attention (None: all at once).
        self.attention_chunk = None
        # Work done by draw (accumulated): batched UNet calls and sample rows they evaluated.
        self.unet_calls = 0
        self.unet_rows = 0

    # --- construction ---------------------------------------------------------------------------

    @property
    def adapter(self) -> AMAdapter | None:
        return self.am_adapter

    @adapter.setter
    def adapter(self, value: AMAdapter | None) -> None:
        self.register_modules(am_adapter=value)

    @classmethod
    def from_model(cls, model: ExemplarUNet, backbone: Backbone, adapter: AMAdapter | None = None,
                   attention_chunk: int | None = None, label_space: PipelineLabelSpace | None = None,
                   stage1_sha256: str | None = None) -> "AMPipeline":
        """A pipeline on an ExemplarUNet and its backbone as they are (shared, not copied): the sampler
        is the backbone's DDIM."""
        _BUILT[model.unet] = (model, backbone)
        prompt = PromptEmbeddings.from_tensors(backbone.prompt_embeds.detach().cpu(),
                                               backbone.negative_prompt_embeds.detach().cpu(),
                                               prompt=str(backbone.spec.get("prompt", "")))
        pipe = cls(model.unet, model.guidance, backbone.sample_scheduler(), prompt_embeddings=prompt,
                   label_space=label_space, am_adapter=adapter, vae=backbone.vae, stage1_sha256=stage1_sha256)
        pipe.attention_chunk = attention_chunk
        return pipe

    @classmethod
    def from_stage1(cls, stage1: Stage1Model, adapter: AMAdapter | None = None,
                    label_space: PipelineLabelSpace | None = None, attention_chunk: int | None = None) -> "AMPipeline":
        """A pipeline on a loaded stage-1 model (``load_stage1``), an adapter and a label space."""
        source = stage1.hparams.get("source_sha256") or stage1.sha256
        return cls.from_model(stage1.model, stage1.backbone, adapter, attention_chunk, label_space, source)

    @classmethod
    def from_checkpoints(
        cls,
        stage1_path: str | Path,
        adapter_path: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        attention_chunk: int | None = None,
        offload_vae: bool = False,
        label_space: PipelineLabelSpace | None = None,
        base: str | Path | None = None,
    ) -> "AMPipeline":
        """A pipeline on a stage-1 checkpoint and (optionally) an adapter file or stage-2 checkpoint.

        Memory options for small GPUs: ``dtype`` (torch.bfloat16 / float16) casts the UNet, guidance,
        adapter and VAE; ``attention_chunk`` computes mask-based exemplar attention a chunk of target
        queries at a time; ``offload_vae`` keeps the VAE on the CPU (it runs only to encode exemplars
        and decode results). The stage-1 model is shared with every other user of ``load_stage1`` in
        this process, so the cast and move apply to them too. ``base``: the SD folder to use when the
        checkpoint's stored backbone path is gone.
        """
        stage1 = load_stage1(stage1_path) if base is None else load_stage1(stage1_path, base=base)
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
            # nn.Module.to, not ModelMixin.to: diffusers 0.42's warns about float32-kept modules on every
            # dtype cast, even with none listed (the adapter keeps none), and every command printed it.
            adapter = torch.nn.Module.to(adapter, device=param.device, dtype=param.dtype)
        return cls.from_stage1(stage1, adapter, label_space, attention_chunk=attention_chunk)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "AMPipeline":
        """A pipeline folder (or a hub id the user names: that downloads). A local folder is checked
        first: a missing component or a foreign config is a one-line
        :class:`~amlight.checkpoints.pipeline_folder.PipelineFolderError` naming the file."""
        from amlight.checkpoints.pipeline_folder import PipelineFolderError, check_pipeline_folder, own_memory

        path = Path(str(pretrained_model_name_or_path)).expanduser()
        local = path.exists()
        if local:
            check_pipeline_folder(path)
            pretrained_model_name_or_path = str(path.resolve())
        kwargs.setdefault("low_cpu_mem_usage", _accelerate_available())
        try:
            pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
            if not local or isinstance(e, PipelineFolderError):
                raise
            text = str(e).strip().splitlines()
            why = f"{type(e).__name__}: {text[0] if text else ''}"
            raise PipelineFolderError(f"{path}: cannot be loaded ({why})") from None
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                own_memory(component)
        return pipe

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """diffusers' save_pretrained (safetensors); an SD-size pipeline whose backbone dropped its text
        encoder gets it back from the backbone's folder first, so that the folder is complete."""
        self._attach_text_parts()
        kwargs.setdefault("safe_serialization", True)
        super().save_pretrained(save_directory, *args, **kwargs)

    def _attach_text_parts(self) -> None:
        if self.text_encoder is not None or self.backbone.spec.get("preset") != "sd15":
            return
        path = self.backbone.spec.get("path")
        if not path or not Path(path).expanduser().is_dir():
            warnings.warn(f"the backbone folder {path!r} is not here: the pipeline is saved without its text encoder "
                          "and tokenizer (its prompt embeddings are saved, so it still draws the same images)",
                          stacklevel=3)
            return
        from transformers import CLIPTextModel, CLIPTokenizer

        where = Path(path).expanduser()
        self.register_modules(
            text_encoder=CLIPTextModel.from_pretrained(where, subfolder="text_encoder", local_files_only=True),
            tokenizer=CLIPTokenizer.from_pretrained(where, subfolder="tokenizer", local_files_only=True),
        )

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

    def _onload_unet(self) -> None:
        """Under enable_model_cpu_offload, bring the UNet onto the accelerator now: the bank code takes
        its device from the model's weights, which an offloaded UNet keeps on the CPU until called."""
        hook = getattr(self.unet, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):
            hook.pre_forward(self.unet)

    @property
    def is_controlnet(self) -> bool:
        """Whether the structure guidance is a ControlNet (``controlnet_conditioning_scale`` applies)."""
        return self.model.is_controlnet

    def build_banks(self, exemplar_images: torch.Tensor, exemplar_labels: torch.Tensor, steps: int = 20,
                    seed: int = 0, match_labels: torch.Tensor | None = None,
                    controlnet_conditioning_scale: float | None = None) -> ExemplarBanks:
        """The exemplars' banks (see build_exemplar_banks); ``controlnet_conditioning_scale``: the
        ControlNet's weight in their inversion and writing (None: the folder's), recorded in them."""
        scale = self.model.controlnet_scale(controlnet_conditioning_scale)  # refused without a ControlNet
        self._onload_unet()
        return build_exemplar_banks(self.model, self.backbone, exemplar_images, exemplar_labels, steps, seed=seed,
                                    match_labels=match_labels, scheduler=self.scheduler, conditioning_scale=scale)

    def _check_bank_scale(self, banks: ExemplarBanks, scale: float | None) -> None:
        """Banks written at another ControlNet scale would silently mix two guidance strengths: refuse them."""
        built = banks.controlnet_scale
        if built is None and scale is None:
            return
        if scale is None:
            raise ValueError(f"the exemplar banks were built with a ControlNet (scale {built:g}) but this pipeline's "
                             "structure guidance is not a ControlNet: build them with this pipeline")
        if built is None or float(built) != float(scale):
            have = "no recorded ControlNet scale" if built is None else f"controlnet_conditioning_scale={built:g}"
            raise ValueError(f"the exemplar banks were built with {have} but this draw uses {scale:g}: rebuild them "
                             f"with build_banks(..., controlnet_conditioning_scale={scale:g})")

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
    def draw(
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
        *,
        output_latents: bool = False,
        on_step_end: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
        controlnet_conditioning_scale: float | None = None,
    ) -> torch.Tensor:
        """Images in [-1, 1] (N, 3, H, W) drawing ``target_labels`` (N, H, W): the low-level call.

        The schedule is the banks' (``steps`` only matters for ``structure_only`` without banks).
        ``seed``: one int (every target starts from the noise of ``Generator().manual_seed(seed)``)
        or one seed per target. Either way a target's image does not depend on which other targets
        share its batch, so ``batch_size`` (targets per UNet call, None: all) only trades memory for
        speed, and a resumed run redraws exactly the images it skipped.
        ``attention``: how the conditional rows read the exemplar (mode, block groups, appearance
        strength, the adapter's pooling size for this call); a mode name means its defaults.
        ``target_match_labels``: what the categorical cost compares with the banks' labels (one-to-one
        mapping); defaults to ``target_labels``.
        ``output_latents``: the final latents instead of decoded images. ``on_step_end(step, timestep,
        latents)``: called after every sampling step with the new latents of the chunk of targets being
        drawn; what it returns (a tensor of their shape) replaces them.
        ``controlnet_conditioning_scale``: the ControlNet's residual weight for this call (None: the
        folder's); banks that read the exemplar must have been built at the same scale (else ValueError).
        """
        settings = AttentionSettings.of(attention)
        use_bank = settings.reads_exemplar
        scale = self.model.controlnet_scale(controlnet_conditioning_scale)  # refused without a ControlNet
        if use_bank and banks is None:
            raise ValueError(f"mode {settings.mode!r} needs exemplar banks (build_exemplar_banks or generate)")
        if settings.uses_adapter and self.adapter is None:
            raise ValueError("mode 'adapter' needs an adapter: pass adapter_path / adapter, or pick 'augmented'")
        if target_labels.ndim != 3:
            raise ValueError(f"target_labels must be (N, H, W), got shape {tuple(target_labels.shape)}")
        device = self._execution_device
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
        scheduler = fresh_scheduler(self.scheduler, steps)
        if banks is not None and not torch.equal(scheduler.timesteps.cpu(), banks.timesteps.cpu()):
            raise ValueError("the banks were built on another schedule than this backbone's sampler")

        index = None
        if use_bank:
            if tuple(banks.latent_size) != latent_size:
                raise ValueError(f"targets have latent size {latent_size}, the exemplar banks {tuple(banks.latent_size)}")
            self._check_bank_scale(banks, scale)
            index = self._index(exemplar_index, banks, n, device)
            _warn_uncovered(match, banks.exemplar_labels.to(device)[index], self.ignore_index)

        chunk = n if not batch_size else int(batch_size)
        images = []
        for start in range(0, n, chunk):
            rows = slice(start, min(start + chunk, n))
            images.append(self._denoise(
                fresh_scheduler(self.scheduler, steps), labels[rows], match[rows], seeds[rows], banks,
                None if index is None else index[rows], settings, guidance_scale, latent_size, output_latents,
                on_step_end, scale,
            ))
        return torch.cat(images)

    @torch.no_grad()
    def __call__(
        self,
        target_labels,
        exemplar_image=None,
        exemplar_labels=None,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        mode: str = "adapter",
        appearance_strength: float = 1.0,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["AMPipeline", int, Any, dict], dict | None] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        exemplar_index: Sequence[int] | None = None,
        batch_size: int | None = None,
        controlnet_conditioning_scale: float | None = None,
    ):
        """Draw ``target_labels`` in the appearance of ``exemplar_image`` (whose layout is ``exemplar_labels``).

        Inputs: single items or lists; images as PIL images, uint8 arrays, float arrays/tensors in
        [0, 1] or file paths; label maps as index or palette-colour images (decoded with
        ``pipe.label_space``; without one, index maps only), integer arrays/tensors, or file paths.
        One exemplar serves every target, or give one per target (or ``exemplar_index``). Inputs at
        another size than ``pipe.resolution`` are resized to it with a warning.
        ``mode``: adapter, augmented, hard_mask, structure_only (no exemplar needed), ...
        ``generator``: its seed (``initial_seed()``) picks the noise; a list gives one per target
        (the first also seeds the exemplars' VAE encoding, as ``generate --seed`` does).
        Each target's noise is drawn on the CPU from that seed, so an image depends neither on the
        device nor on the other targets, and ``generator=torch.Generator().manual_seed(s)`` draws
        what ``generate --seed s`` draws. None: seed 0.
        ``output_type``: "pil" (list of PIL images, the bytes ``generate`` writes), "np" (float
        (N, H, W, 3) in [0, 1]), "pt" (float (N, 3, H, W) in [0, 1]) or "latent" (the final latents).
        ``callback_on_step_end(pipe, step, timestep, {"latents": ...})``: after every sampling step;
        a returned dict's "latents" replace them.
        ``controlnet_conditioning_scale``: with ControlNet structure guidance, the weight of its residuals
        in this call, exemplar inversion included (None: the folder's configured value); ValueError on a
        pipeline without a ControlNet.
        Returns :class:`AMPipelineOutput` (``.images``), or a tuple ``(images,)`` without ``return_dict``.
        """
        from amlight.pipeline.call_inputs import (
            image_items, label_items, load_image_item, load_label_item, per_item, to_output,
        )

        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        unknown = set(callback_on_step_end_tensor_inputs) - {"latents"}
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs can only hold 'latents', got {sorted(unknown)}")
        settings = AttentionSettings(mode, appearance_strength=appearance_strength)
        scale = self.model.controlnet_scale(controlnet_conditioning_scale)  # before any input is read
        if settings.uses_adapter and self.adapter is None:  # before any input is read or exemplar inverted
            raise ValueError("mode 'adapter' needs an adapter (this pipeline has none): pick mode='augmented'")
        size = self.resolution
        space = self.label_space
        targets = label_items(target_labels)
        if not targets:
            raise ValueError("no target label maps given")
        classes = (self.num_classes, self.ignore_index)
        labels = torch.stack([load_label_item(v, size, f"target label map {i}", space, *classes)
                              for i, v in enumerate(targets)])
        n = labels.shape[0]
        generators = list(generator) if isinstance(generator, (list, tuple)) else [generator]
        seeds = [0 if g is None else int(g.initial_seed()) for g in per_item(generators, n, "generators")]
        banks = None
        if settings.reads_exemplar:
            images, maps = image_items(exemplar_image), label_items(exemplar_labels)
            if not images or len(images) != len(maps):
                raise ValueError(f"mode {mode!r} needs exemplar images and their label maps, one each: got "
                                 f"{len(images)} image(s) and {len(maps)} label map(s)")
            ex_images = torch.stack([load_image_item(v, size, f"exemplar image {i}") for i, v in enumerate(images)])
            ex_labels = torch.stack([load_label_item(v, size, f"exemplar label map {i}", space, *classes)
                                     for i, v in enumerate(maps)])
            banks = self.build_banks(ex_images, ex_labels, num_inference_steps, seed=seeds[0],
                                     controlnet_conditioning_scale=scale)

        chunks = -(-n // (batch_size or n))
        with self.progress_bar(total=num_inference_steps * chunks) as bar:
            def on_step_end(i, t, latents):
                bar.update()
                if callback_on_step_end is None:
                    return None
                result = callback_on_step_end(self, i, t, {"latents": latents})
                return None if not result else result.get("latents")

            out = self.draw(labels, banks, exemplar_index, attention=settings, guidance_scale=guidance_scale,
                            seed=seeds, steps=num_inference_steps, batch_size=batch_size,
                            output_latents=output_type == "latent", on_step_end=on_step_end,
                            controlnet_conditioning_scale=scale)
        self.maybe_free_model_hooks()
        images = out if output_type == "latent" else to_output(out, output_type)
        if not return_dict:
            return (images,)
        return AMPipelineOutput(images=images)

    def _denoise(self, scheduler, labels, match, seeds, banks, index, settings: AttentionSettings, guidance_scale,
                 latent_size, output_latents: bool = False, on_step_end=None,
                 controlnet_scale: float | None = None) -> torch.Tensor:
        device, dtype = self._execution_device, self.dtype
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
            on_unet_call=self._count, on_step_end=on_step_end, conditioning_scale=controlnet_scale,
        )
        if output_latents:
            return x
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
        controlnet_conditioning_scale: float | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Build the exemplars' banks once, then draw every target with them (kwargs: see draw), both
        at ``controlnet_conditioning_scale`` (None: the folder's)."""
        settings = AttentionSettings.of(attention)
        banks = None
        if settings.reads_exemplar:
            banks = self.build_banks(exemplar_images, exemplar_labels, steps, match_labels=exemplar_match_labels,
                                     controlnet_conditioning_scale=controlnet_conditioning_scale)
        return self.draw(target_labels, banks, exemplar_index, attention=settings, steps=steps,
                         controlnet_conditioning_scale=controlnet_conditioning_scale, **kwargs)


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


@dataclass
class AMPipelineOutput(BaseOutput):
    """``images``: a list of PIL images, a float array (N, H, W, 3) or tensor (N, 3, H, W) in [0, 1],
    or latents, as ``output_type`` asked."""

    images: Any


def _encode_prompt(text_encoder, tokenizer, label_space) -> PromptEmbeddings:
    """The prompt component of a folder that has a text encoder but no encoded prompt."""
    if text_encoder is None or tokenizer is None:
        raise ValueError("an AMPipeline needs prompt_embeddings, or a text_encoder and tokenizer to encode its prompt")
    prompt = "" if label_space is None else label_space.prompt
    max_length = min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings)

    def encode(text: str) -> torch.Tensor:
        ids = tokenizer([text], padding="max_length", max_length=max_length, truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            return text_encoder(ids.to(text_encoder.device))[0].float().cpu()

    return PromptEmbeddings.from_tensors(encode(prompt), encode(""), prompt=prompt)


def _accelerate_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None
