"""The frozen stage-1 model (UNet + structure guidance) that stage 2 and inference build on.

Loaded once per process and checkpoint, like the backbone, and never a submodule of a stage-2
LightningModule: it stays out of stage-2 checkpoints and out of DDP's gradient synchronisation.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amlight.backbone.backbone import Backbone, freeze
from amlight.backbone.registry import backbone_from_spec
from amlight.checkpoints.files import CheckpointError, read_checkpoint
from amlight.modules.exemplar_unet import build_exemplar_unet


@dataclass
class Stage1Model:
    path: str
    sha256: str
    backbone: Backbone
    model: Any  # ExemplarUNet, frozen
    hparams: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return int(self.hparams["num_classes"])

    @property
    def ignore_index(self) -> int:
        return int(self.hparams.get("ignore_index", 255))

    @property
    def heads(self) -> int:
        heads = {p.heads for n, p in self.model.unet.named_modules() if n.endswith("attn1")}
        if len(heads) != 1:
            raise ValueError(f"the stage-1 UNet has self-attention layers with different head counts {sorted(heads)}")
        return heads.pop()

    def to(self, device) -> "Stage1Model":
        self.model.to(device)
        self.backbone.to(device)
        return self


_CACHE: dict[tuple[str, str], Stage1Model] = {}


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_stage1(path: str | Path) -> Stage1Model:
    """The frozen stage-1 model of a GenerationStage checkpoint (cached per path and content hash)."""
    path = Path(path)
    ckpt = read_checkpoint(path, expect_stage="generation")
    sha = file_sha256(path)
    key = (str(path.resolve()), sha)
    if key in _CACHE:
        return _CACHE[key]
    hp = ckpt["amlight"]["hparams"]
    backbone = backbone_from_spec(ckpt["amlight"]["backbone"])
    model = build_exemplar_unet(
        backbone, hp["num_classes"], hp.get("ignore_index", 255),
        guidance_channels=hp.get("guidance_channels", 32), guidance_scale=hp.get("guidance_scale", 1.0),
    )
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model its settings describe: {str(e)[:500]}") from None
    stage1 = Stage1Model(str(path), sha, backbone, freeze(model), hp)
    _CACHE[key] = stage1
    return stage1
