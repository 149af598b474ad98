"""Adapter files: export a stage-2 checkpoint to safetensors, load an adapter for a stage-1 model.

The safetensors file holds the adapter's weights and, as string metadata, its configuration and the
path and hash of the stage-1 checkpoint it was trained on. Loading checks both: a different stage-1
checkpoint warns; an adapter that does not fit the model (other head count, other groups) fails.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from amlight.utils.atomic_write import atomic_write
from amlight.checkpoints.stage1 import Stage1Model
from amlight.modules.adapter import AMAdapter
from amlight.checkpoints.files import CheckpointError, check_safetensors_file, read_checkpoint


def _adapter_state(ckpt: dict) -> dict[str, torch.Tensor]:
    return {k.removeprefix("adapter."): v for k, v in ckpt["state_dict"].items() if k.startswith("adapter.")}


def export_adapter(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the adapter of a stage-2 checkpoint to a safetensors file (atomically)."""
    ckpt = read_checkpoint(checkpoint, expect_stage="adapter")
    record = ckpt["amlight"]
    metadata = {
        "amlight_stage": "adapter",
        "adapter_config": json.dumps(record["adapter"]),
        "stage1": json.dumps(record.get("stage1", {})),
    }
    state = {k: v.contiguous() for k, v in _adapter_state(ckpt).items()}
    out = atomic_write(out, lambda tmp: save_file(state, tmp, metadata=metadata))
    return out


def read_adapter_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, record with 'adapter' config and 'stage1' reference) from a .safetensors or stage-2 .ckpt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"adapter file {path} does not exist")
    if path.suffix == ".safetensors":
        meta = check_safetensors_file(path)  # one-line error for a truncated or foreign file
        try:
            state = load_file(path)
        except (SafetensorError, ValueError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path} is truncated or not a safetensors file ({first})") from None
        if meta.get("amlight_stage") != "adapter":
            raise CheckpointError(f"{path} is not an amlight adapter file (no adapter metadata)")
        return state, {"adapter": json.loads(meta["adapter_config"]), "stage1": json.loads(meta.get("stage1", "{}"))}
    ckpt = read_checkpoint(path, expect_stage="adapter")
    return _adapter_state(ckpt), ckpt["amlight"]


def load_adapter(path: str | Path, stage1: Stage1Model) -> AMAdapter:
    """An adapter ready to use with ``stage1``: fails clearly if it cannot fit, warns if trained elsewhere."""
    state, record = read_adapter_file(path)
    config = record["adapter"]
    if config.get("heads") != stage1.heads:
        raise CheckpointError(
            f"adapter {path} was built for {config.get('heads')} attention heads, but the stage-1 model "
            f"{stage1.path} has {stage1.heads}: it belongs to another architecture"
        )
    # Private keys (``_name_or_path`` of an adapter loaded from a pipeline folder) are not arguments.
    adapter = AMAdapter(**{k: v for k, v in config.items() if not k.startswith("_")})
    try:
        adapter.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"adapter {path} does not match its own configuration: {str(e)[:300]}") from None
    check_stage1_match(record, stage1)
    return adapter.eval().requires_grad_(False)


def check_stage1_match(record: dict[str, Any], stage1: Stage1Model) -> None:
    """Warn when an adapter meets a stage-1 model other than the one it was trained with."""
    trained_on = (record.get("stage1") or {}).get("sha256")
    # A pipeline folder exported from a checkpoint names that checkpoint's hash (``source_sha256``).
    if trained_on and trained_on not in (stage1.sha256, stage1.hparams.get("source_sha256")):
        warnings.warn(
            f"this adapter was trained on the stage-1 checkpoint {record['stage1'].get('path')} "
            f"(sha256 {trained_on[:12]}...), not on {stage1.path} (sha256 {stage1.sha256[:12]}...); "
            "results may be poor",
            stacklevel=2,
        )
