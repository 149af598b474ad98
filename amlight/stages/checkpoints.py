"""Reading amlight checkpoints safely: ``torch.load(weights_only=True)``, never arbitrary unpickling."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    pass


def read_checkpoint(path: str | Path, expect_stage: str | None = None) -> dict[str, Any]:
    """Load a Lightning checkpoint written by an amlight stage, restricted to tensors and primitives."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated files, unsafe globals
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}. "
            "Is it a complete amlight checkpoint (.ckpt)? Only tensors and plain values are loaded."
        ) from None
    info = ckpt.get("amlight") if isinstance(ckpt, dict) else None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path} is not an amlight checkpoint (no 'amlight' record)")
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {info.get('format_version')}, newer than this amlight understands "
            f"({FORMAT_VERSION}); upgrade amlight"
        )
    if expect_stage is not None and info.get("stage") != expect_stage:
        found, wanted = _STAGE_NAMES.get(info.get("stage"), repr(info.get("stage"))), _STAGE_NAMES.get(expect_stage, expect_stage)
        raise CheckpointError(f"{path} is a {found} checkpoint, but a {wanted} checkpoint is needed here")
    return ckpt


_STAGE_NAMES = {"generation": "stage-1 (generation)", "adapter": "stage-2 (adapter)"}


def plain(value: Any) -> Any:
    """Turn hyper-parameters into plain Python values (dict/list/str/number/bool/None) for safe loading."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)
