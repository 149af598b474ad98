"""Log a grid of samples at every validation: exemplar | target labels | generated | real."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from amlight.utils.visualize import colorize, column_grid, save_png, to_uint8
from amlight.callbacks.precision import trainer_precision
from amlight.callbacks.run_dir import run_dir


class SampleGrid(L.Callback):
    """Args:
        num_samples: rows of the grid, taken from the first validation batch (the same rows every time).
        upscale: nearest-neighbour zoom of the saved grid (tiny images are hard to see).
        save_png: also write ``<log_dir>/samples/step_XXXXXX.png``.
    """

    def __init__(self, num_samples: int = 8, upscale: int = 4, save_png: bool = True):
        self.num_samples, self.upscale, self.save = num_samples, upscale, save_png
        self._batch: dict | None = None
        self.last_path: Path | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and dataloader_idx == 0 and self._batch is None:
            n = self.num_samples
            self._batch = {k: (v[:n].detach().cpu() if isinstance(v, torch.Tensor) else v[:n]) for k, v in batch.items()}

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or self._batch is None or not hasattr(pl_module, "generate"):
            return
        grid = self.render(trainer, pl_module, self._batch)
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples/exemplar|labels|generated|real", grid, step)
        if self.save and run_dir(trainer) is not None:
            self.last_path = save_png(grid, run_dir(trainer) / "samples" / f"step_{step:06d}.png")

    @torch.no_grad()
    def render(self, trainer, pl_module, batch: dict) -> torch.Tensor:
        metadata = getattr(trainer.datamodule, "metadata", None) if trainer.datamodule is not None else None
        with trainer_precision(trainer):
            generated = pl_module.generate(batch)
        columns = [
            to_uint8(batch["exemplar_image"]),
            colorize(batch["labels"], metadata),
            to_uint8(generated),
            to_uint8(batch["image"]),
        ]
        return column_grid(columns, upscale=self.upscale)
