"""The frozen stage-1 model (UNet + structure guidance) that stage 2 and inference build on.

Loaded once per process and checkpoint, like the backbone, and never a submodule of a stage-2
LightningModule: it stays out of stage-2 checkpoints and out of DDP's gradient synchronisation.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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
        # Outside inference mode even when called inside it: this model is shared, and weights copied
        # under inference mode would make every later training step through it fail in backward.
        with torch.inference_mode(False):
            self.model.to(device)
            self.backbone.to(device)
        return self


# Keyed by (resolved path, size, mtime): an unchanged file is neither read nor hashed again.
_CACHE: dict[tuple[str, int, int], Stage1Model] = {}
_SHA256: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_key(path: Path) -> tuple[str, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None  # read_checkpoint says what is wrong with it
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def cached_sha256(path: str | Path) -> str:
    """``file_sha256``, computed once per process for an unchanged file (a stage-1 file is gigabytes)."""
    key = _file_key(Path(path))
    if key is None:
        return file_sha256(path)
    if key not in _SHA256:
        _SHA256[key] = file_sha256(path)
    return _SHA256[key]


def load_stage1(path: str | Path) -> Stage1Model:
    """The frozen stage-1 model of a GenerationStage checkpoint, cached per process while the file is
    unchanged (same resolved path, size and modification time)."""
    path = Path(path)
    key = _file_key(path)
    if key is not None and key in _CACHE:
        return _CACHE[key]
    # mmap: only the tensors used are read from disk (not the optimiser state a resumable checkpoint holds).
    ckpt = read_checkpoint(path, expect_stage="generation", mmap=True)
    sha = cached_sha256(path)
    hp = ckpt["amlight"]["hparams"]
    # Built outside inference mode even when loaded inside it (a pipeline, predict): the model is shared
    # through the cache, and inference-tensor weights would break any later training through it.
    with torch.inference_mode(False):
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
    del ckpt, state  # drops the file mapping
    stage1 = Stage1Model(str(path), sha, backbone, freeze(model), hp)
    for stale in [k for k in _CACHE if k[0] == key[0]]:
        del _CACHE[stale]  # an earlier version of this file
    _CACHE[key] = stage1
    return stage1
