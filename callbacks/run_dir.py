"""Where a rank-zero callback writes its files."""
from __future__ import annotations

from pathlib import Path


def run_dir(trainer) -> Path | None:
    """The run's log folder, computed locally.

    ``trainer.log_dir`` broadcasts from rank zero, so calling it from code that only rank zero runs
    deadlocks a DDP job; the first logger's folder (or the root dir) gives the same answer without it.
    """
    for logger in trainer.loggers:
        if getattr(logger, "log_dir", None):
            return Path(logger.log_dir)
    return Path(trainer.default_root_dir) if trainer.default_root_dir else None
