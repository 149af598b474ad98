"""Lightning checkpoint I/O that a kill cannot corrupt, and that reads with amlight's one-line errors.

Lightning's own TorchCheckpointIO writes through an fsspec transaction whose temporary file lives in
the system temp dir: the final ``shutil.move`` is a copy when that is another filesystem, so a
SIGKILL during it leaves a cut-off ``last.ckpt``, and nothing is fsynced. Here the bytes go to a
temporary file beside the target, are fsynced, and ``os.replace`` puts them in place in one step:
a reader (or a resume after a crash) sees the previous complete file or the new complete file.
``save_last=True`` writes ``last.ckpt`` through the same path (a full save, not a copy or a link).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from amlight.utils.atomic_write import atomic_write
from amlight.checkpoints.files import load_torch_file


def _is_local(path) -> bool:
    return "://" not in str(path)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())

        # A kill during an earlier write left its temporary file behind (atomic_write names it
        # .<name>.*.tmp); it is never the checkpoint, so it goes before the next one is written.
        for stale in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):
            stale.unlink(missing_ok=True)
        target = atomic_write(path, write)
        _fsync_dir(target.parent)  # the rename itself survives a power cut

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if not _is_local(path) or weights_only is False:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        # --ckpt_path FILE: a missing, cut-off or foreign file is a one-line CheckpointError.
        # Loaded on the CPU: Lightning moves the weights and optimiser state to the module's device.
        return load_torch_file(path, what="--ckpt_path")
