"""Reading amlight checkpoints safely: ``torch.load(weights_only=True)``, never arbitrary unpickling.

The reading itself lives in :mod:`amlight.checkpoint_files` (one loader and one wording for every
command); this module keeps the stages' names for it and the hyper-parameter helper.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from amlight.checkpoint_files import FORMAT_VERSION, CheckpointError, load_torch_file, read_checkpoint

__all__ = ["FORMAT_VERSION", "CheckpointError", "load_torch_file", "plain", "read_checkpoint"]


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
