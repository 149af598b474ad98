"""Saving the resolved config of a run without ever replacing an earlier one."""
from __future__ import annotations

import os

from lightning.pytorch.cli import SaveConfigCallback


def free_config_name(log_dir: str, base: str = "config.yaml") -> str:
    """``config.yaml``, or ``config.resume-N.yaml`` with the first free N when a run is resumed."""
    if not os.path.exists(os.path.join(log_dir, base)):
        return base
    stem, ext = os.path.splitext(base)
    n = 1
    while os.path.exists(os.path.join(log_dir, f"{stem}.resume-{n}{ext}")):
        n += 1
    return f"{stem}.resume-{n}{ext}"


def config_name(log_dir: str, stage: str) -> str:
    """Where the config of a ``stage`` run goes in ``log_dir`` without replacing a training run's."""
    stage = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn enum
    if stage == "fit":
        return free_config_name(log_dir)
    holds_training_run = os.path.isfile(os.path.join(log_dir, "config.yaml")) and \
        os.path.isdir(os.path.join(log_dir, "checkpoints"))
    # validate/test on a run's folder: their own file; predict into an output folder: config.yaml
    # (a repeated predict resumes the same outputs, so its config is the same run's).
    return f"config.{stage}.yaml" if holds_training_run else "config.yaml"


class RunConfigCallback(SaveConfigCallback):
    """SaveConfigCallback that never replaces the ``config.yaml`` of a training run: `fit` writes it only
    into a folder without one (a resumed run records its command line as ``config.resume-N.yaml``), and
    validate/test/predict pointed at a run's folder write ``config.<stage>.yaml``."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir:
            log_dir = trainer.log_dir  # broadcast from rank zero, like the parent does
            if log_dir is not None:
                name = config_name(log_dir, stage) if trainer.is_global_zero else self.config_filename
                self.config_filename = trainer.strategy.broadcast(name)
        super().setup(trainer, pl_module, stage)
