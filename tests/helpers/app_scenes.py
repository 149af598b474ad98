"""A tiny random-weight stage 1 + adapter on the synthetic dataset's classes, and label/image files,
shared by the app tests (tests/apps/test_app_logic.py, tests/apps/test_app_browser.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from helpers.tiny_models import TINY_OPTIONS as TINY


def tiny_checkpoints(folder: Path) -> tuple[Path, Path]:
    from amlight.apps.notebook_helpers import _save_through_lightning
    from amlight.checkpoints.adapter_files import export_adapter
    from amlight.data.synthetic import SYNTHETIC_METADATA
    from amlight.stages import AdapterStage, GenerationStage

    n = SYNTHETIC_METADATA.num_classes
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        s1 = _save_through_lightning(GenerationStage(num_classes=n, backbone_options=TINY, guidance_channels=16),
                                     folder / "stage1.ckpt")
        s2 = _save_through_lightning(AdapterStage(str(s1), num_classes=n, adapter_channels=4, adapter_layers=1,
                                                  max_resolution=8), folder / "stage2.ckpt")
    return s1, export_adapter(s2, folder / "adapter.safetensors")


def scene_labels(size: int = 16) -> torch.Tensor:
    """Sky (0) over road (1) with two separate cars (5)."""
    labels = torch.zeros(size, size, dtype=torch.long)
    labels[size // 2:] = 1
    labels[10:13, 2:5] = 5
    labels[10:13, 10:14] = 5
    return labels


def write_scene(folder: Path, metadata, size: int = 16) -> tuple[Path, Path]:
    """An exemplar image and its palette-colour label PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = scene_labels(size).numpy()
    colours = metadata.palette()[labels]
    image = np.clip(colours.astype(int) + np.random.default_rng(0).integers(-20, 20, colours.shape), 0, 255)
    Image.fromarray(image.astype(np.uint8)).save(folder / "exemplar.png")
    Image.fromarray(colours.astype(np.uint8)).save(folder / "exemplar_labels.png")
    return folder / "exemplar.png", folder / "exemplar_labels.png"
