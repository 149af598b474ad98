"""Self-sim: how far the output's structure is from the target's real image, seen by DINO-ViT.

The paper's structure metric (after Splicing ViT, Tumanyan et al. 2022): the cosine self-similarity
matrix of a DINO-ViT's last-layer patch features describes an image's layout independent of its
appearance; the distance between those matrices of the output and of the real image of the target
layout is low when the output has the target's structure.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from amlight.metrics.images import check_pair
from amlight.metrics.pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MetricWeightsError,
    load_model,
    model_type,
    read_model_config,
    read_preprocess,
    resolve_device,
)

FEATURES = ("keys", "tokens")
_EXPECTED = ("a DINO ViT folder saved with save_pretrained (ViTModel, e.g. facebook/dino-vitb8 as in the paper, "
             "or Dinov2Model), with config.json and model.safetensors")


class SelfSimilarityDistance:
    """Self-sim distance per image pair, lower is better (0 for identical images).

    ``model_path``: a local ``save_pretrained`` folder of a ViT (``vit``: DINO v1 such as
    facebook/dino-vitb8; ``dinov2``/``dinov2_with_registers``). Images are resized to the model's
    input size (preprocessor_config.json's size if saved, else config.image_size; the whole image
    is resized, no crop, so every region of the layout counts) and normalised with the saved mean/std
    (ImageNet's if none).

    ``features``: "keys" (default, as in Splicing ViT and the paper) takes the key projections of
    the last attention layer (all heads concatenated) at the patch tokens; "tokens" takes the last
    layer's output patch tokens instead. With F (N, P, D) the patch features, S = cos-sim(F, F)
    (P, P) per image, and the distance is ``mean((S_pred - S_target) ** 2)`` over the P x P entries
    (the squared Frobenius norm over P^2).
    """

    def __init__(self, model_path: str | Path, *, features: str = "keys", device: str | torch.device | None = None,
                 batch_size: int = 8):
        if features not in FEATURES:
            raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
        folder, config = read_model_config(model_path, "Self-sim (DINO ViT)", _EXPECTED)
        kind = model_type(config)
        from transformers import AutoModel, Dinov2Model, ViTModel

        if kind == "vit":
            self.model = load_model(ViTModel.from_pretrained, folder, "a ViT", _EXPECTED, add_pooling_layer=False)
        elif kind == "dinov2":
            self.model = load_model(Dinov2Model.from_pretrained, folder, "a DINOv2 ViT", _EXPECTED)
        elif kind == "dinov2_with_registers":
            self.model = load_model(AutoModel.from_pretrained, folder, "a DINOv2 ViT", _EXPECTED)
        else:
            raise MetricWeightsError(folder, f"holds a {kind or 'model without model_type'!r} model, not a ViT",
                                     _EXPECTED)
        self.features = features
        self.patch_size = int(getattr(self.model.config, "patch_size"))
        image_size = getattr(self.model.config, "image_size", 224)
        self.preprocess = read_preprocess(folder, image_size, IMAGENET_MEAN, IMAGENET_STD, crop=False)
        if self.preprocess.size is None:  # a processor that does not resize: the model's own size
            self.preprocess = replace(self.preprocess, size=_as_pair(image_size))
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.batch_size = int(batch_size)
        self._key_proj = _last_key_projection(self.model) if features == "keys" else None
        if features == "keys" and self._key_proj is None:
            raise MetricWeightsError(folder, "no key projection (k_proj / key) found in the model's last layer",
                                     _EXPECTED + "; or use features='tokens'")
        height, width = self.preprocess.size
        if height % self.patch_size or width % self.patch_size:
            raise MetricWeightsError(folder, f"input size {height}x{width} is not a multiple of the patch size "
                                             f"{self.patch_size}", _EXPECTED)

    @torch.no_grad()
    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, P, D) last-layer patch features (keys or tokens) of float (N, 3, H, W) images in [-1, 1]."""
        x = self.preprocess(images, self.device)
        patches = (x.shape[-2] // self.patch_size) * (x.shape[-1] // self.patch_size)
        captured: list[torch.Tensor] = []
        handle = None
        if self._key_proj is not None:
            handle = self._key_proj.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            kwargs = {}
            if getattr(self.model.config, "model_type", "") == "vit":
                kwargs["interpolate_pos_encoding"] = tuple(x.shape[-2:]) != _as_pair(self.model.config.image_size)
            out = self.model(pixel_values=x, **kwargs)
        finally:
            if handle is not None:
                handle.remove()
        feats = captured[-1] if captured else out.last_hidden_state
        if feats.ndim == 4:  # (N, heads, T, d) layouts: concatenate heads
            feats = feats.transpose(1, 2).flatten(2)
        # patch tokens come last (after CLS and any register tokens)
        return feats[:, -patches:, :].float()

    def self_similarity(self, images: torch.Tensor) -> torch.Tensor:
        """(N, P, P) cosine self-similarity of the patch features."""
        feats = F.normalize(self.patch_features(images), dim=-1)
        return feats @ feats.transpose(1, 2)

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        """Per-pair distance (N,): ``mean((S(pred) - S(target))**2)``; ``target`` is the real image of the
        target layout. Both float (N, 3, H, W) in [-1, 1]."""
        check_pair(pred, target)
        out = []
        for start in range(0, len(pred), self.batch_size):
            a = self.self_similarity(pred[start:start + self.batch_size])
            b = self.self_similarity(target[start:start + self.batch_size])
            out.append(((a - b) ** 2).mean(dim=(1, 2)).double().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0)


def _last_key_projection(model: torch.nn.Module) -> torch.nn.Module | None:
    found = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("k_proj", "key"):
            found = module
    return found


def _as_pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return tuple(int(v) for v in size)  # type: ignore[return-value]
