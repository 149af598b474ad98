"""The trainer's precision for work that callbacks do outside the training and validation steps."""
from __future__ import annotations

import contextlib


def trainer_precision(trainer):
    """The context Lightning runs steps in (autocast under ``*-mixed`` precision; nothing for 32-true).

    Hooks such as ``on_validation_epoch_end`` run outside it: without it, images and attention maps
    would be made in fp32 on rank 0, slower and with more memory than training, while the other ranks wait.
    """
    plugin = getattr(trainer, "precision_plugin", None)
    return plugin.forward_context() if plugin is not None else contextlib.nullcontext()
