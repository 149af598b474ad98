"""I_CLIP: how much the output looks like its exemplar, by CLIP image embeddings (higher is better)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from amlight.metrics.images import check_images
from amlight.metrics.pretrained import (
    CLIP_MEAN,
    CLIP_STD,
    MetricWeightsError,
    load_model,
    model_type,
    read_model_config,
    read_preprocess,
    resolve_device,
)

_EXPECTED = ("a CLIP folder saved with save_pretrained: a full CLIPModel (e.g. openai/clip-vit-large-patch14) "
             "or a CLIPVisionModelWithProjection, with config.json and model.safetensors")


class ClipImageSimilarity:
    """I_CLIP per pair: cosine similarity, in [-1, 1], of the CLIP image embeddings (the projected
    pooled output, ``image_embeds``) of the output and of its exemplar.

    ``model_path``: a local folder of a ``CLIPModel`` (model_type "clip"; only its vision tower and
    visual projection are used) or a ``CLIPVisionModelWithProjection`` ("clip_vision_model").
    Preprocessing as CLIP's image processor: the short side resized to the input size (bicubic,
    antialiased) and centre-cropped, CLIP's mean/std; preprocessor_config.json overrides these when saved.
    """

    def __init__(self, model_path: str | Path, *, device: str | torch.device | None = None, batch_size: int = 16):
        folder, config = read_model_config(model_path, "I_CLIP (CLIP image encoder)", _EXPECTED)
        kind = model_type(config)
        from transformers import CLIPModel, CLIPVisionModelWithProjection

        if kind == "clip":
            model = load_model(CLIPModel.from_pretrained, folder, "a CLIP model", _EXPECTED)
        elif kind == "clip_vision_model":
            model = load_model(CLIPVisionModelWithProjection.from_pretrained, folder,
                               "a CLIP vision model with projection", _EXPECTED)
        else:
            raise MetricWeightsError(folder, f"holds a {kind or 'model without model_type'!r} model, not CLIP",
                                     _EXPECTED)
        self.vision_model = model.vision_model
        self.projection = model.visual_projection
        image_size = model.config.vision_config.image_size if kind == "clip" else model.config.image_size
        settings = read_preprocess(folder, image_size, CLIP_MEAN, CLIP_STD, crop=True)
        if not (folder / "preprocessor_config.json").is_file():
            settings = replace(settings, mode="bicubic")
        self.preprocess = settings
        self.device = resolve_device(device)
        self.vision_model.to(self.device)
        self.projection.to(self.device)
        self.batch_size = int(batch_size)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(N, d) unit-length image embeddings of float (N, 3, H, W) images in [-1, 1]."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            x = self.preprocess(images[start:start + self.batch_size], self.device)
            pooled = self.vision_model(pixel_values=x).pooler_output
            chunks.append(F.normalize(self.projection(pooled).float(), dim=-1))
        return torch.cat(chunks) if chunks else torch.zeros(0, self.projection.out_features)

    def __call__(self, pred: torch.Tensor, exemplar: torch.Tensor) -> np.ndarray:
        """Per-pair cosine similarity (N,) between ``pred[i]`` and ``exemplar[i]``; the two may differ in
        size (each is preprocessed on its own) but not in number."""
        if len(pred) != len(exemplar):
            raise ValueError(f"{len(pred)} outputs but {len(exemplar)} exemplars")
        check_images(pred, "pred")
        check_images(exemplar, "exemplar")
        sims = (self.embed(pred) * self.embed(exemplar)).sum(dim=-1).clamp(-1.0, 1.0)
        return sims.double().cpu().numpy()
