"""The TensorBoard logger of amlight's configs: events go into the run directory itself."""
from __future__ import annotations

from lightning.pytorch.loggers import TensorBoardLogger


class RunLogger(TensorBoardLogger):
    """TensorBoardLogger whose ``log_dir`` is ``save_dir`` itself (no ``name/version_N`` subfolders).

    ``save_dir`` left out (as the shipped configs do): :class:`amlight.cli.lightning_cli.AmlightCLI` sets it
    to ``trainer.default_root_dir``, so ``--trainer.default_root_dir DIR`` moves the whole run (events,
    checkpoints, config.yaml, samples, attention maps) and no path in a YAML is resolved before the
    command line is read. ``--trainer.logger.init_args.save_dir DIR`` still wins when given.
    """

    def __init__(self, save_dir: str | None = None, name: str | None = "", version: int | str | None = "", **kwargs):
        if save_dir is None:
            raise ValueError("RunLogger needs save_dir (under `python -m amlight fit` it is trainer.default_root_dir)")
        super().__init__(save_dir, name=name, version=version, **kwargs)
