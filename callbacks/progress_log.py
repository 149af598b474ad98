"""Plain progress lines for ``fit`` when its output is not a terminal (a log file, a pipe, CI).

Lightning's progress bar redraws one line with carriage returns: on a terminal that is right, in a
log it is either silent for long stretches or a wall of half-lines. When stdout (where the tqdm and
rich bars draw) is not a terminal, this callback turns the bar off and prints instead, every
``every_n_steps`` optimizer steps or ``every_seconds``, whichever comes first::

    [fit] step 50/1000  loss 0.1432  3.21 it/s  ETA 04:55

plus a line when validation starts and ends, and at the end of each epoch when epochs are long. On a
terminal it does nothing. ``amlight fit`` adds it by default (:meth:`ProgressLog.add_to`).
"""
from __future__ import annotations

import math
import sys
import time

import lightning as L
import torch


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _loss_of(outputs) -> float | None:
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return float(loss.detach())
    return float(loss) if isinstance(loss, (int, float)) else None


class ProgressLog(L.Callback):
    """Args:
        every_n_steps: steps between lines (default: about 20 lines per run, from the step budget).
        every_seconds: a line at least this often while steps finish (default 30 s).
        when: ``"not_a_terminal"`` (default: only when stdout is no terminal, replacing the bar),
            ``"always"`` or ``"never"``.
    """

    def __init__(self, every_n_steps: int | None = None, every_seconds: float = 30.0, when: str = "not_a_terminal"):
        if when not in ("not_a_terminal", "always", "never"):
            raise ValueError(f"ProgressLog: when must be not_a_terminal, always or never, got {when!r}")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"ProgressLog: every_n_steps must be at least 1, got {every_n_steps}")
        self.every_n_steps, self.every_seconds, self.when = every_n_steps, every_seconds, when
        self.active = False
        self._interval = 1
        self._total: int | None = None

    @classmethod
    def add_to(cls, trainer: L.Trainer) -> None:
        """Append a default ProgressLog to the trainer's callbacks unless the config already has one."""
        if not any(isinstance(c, cls) for c in trainer.callbacks):
            trainer.callbacks.append(cls())

    def _print(self, text: str) -> None:
        print(f"[fit] {text}", file=sys.stdout, flush=True)

    def setup(self, trainer, pl_module, stage: str) -> None:
        on_terminal = bool(getattr(sys.stdout, "isatty", lambda: False)())
        self.active = stage == "fit" and trainer.is_global_zero and (
            self.when == "always" or (self.when == "not_a_terminal" and not on_terminal)
        )
        bar = trainer.progress_bar_callback
        if self.active and bar is not None and not on_terminal:
            bar.disable()  # its carriage-return redraws only garble a log; these lines replace it

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.active:
            return
        total = trainer.estimated_stepping_batches
        self._total = int(total) if total is not None and math.isfinite(total) and total > 0 else None
        self._interval = self.every_n_steps or (max(1, round(self._total / 20)) if self._total else 50)
        self._start = self._last_time = time.perf_counter()
        self._last_step = trainer.global_step
        self._first_step = trainer.global_step  # a resumed run starts past 0
        self._printed_step = None
        self._print(f"training: {self._total if self._total else 'unknown'} steps"
                    + (f", from step {self._first_step}" if self._first_step else "")
                    + f"; a line every {self._interval} steps or {self.every_seconds:g} s")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.active:
            return
        step = trainer.global_step
        now = time.perf_counter()
        due = step % self._interval == 0 or now - self._last_time >= self.every_seconds or step == self._total
        if step == self._printed_step or not due or step == self._last_step:
            return
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        overall = (step - self._first_step) / max(now - self._start, 1e-9)
        parts = [f"step {step}/{self._total}" if self._total else f"step {step}"]
        loss = _loss_of(outputs)
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        parts.append(f"{rate:.2f} it/s")
        if self._total and overall > 0:
            parts.append(f"ETA {_format_duration(max(self._total - step, 0) / overall)}")
        self._print("  ".join(parts))
        self._last_step, self._last_time, self._printed_step = step, now, step

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Short epochs (a small dataset) would flood the log with these; long ones deserve a line.
        if self.active and isinstance(trainer.num_training_batches, int) and trainer.num_training_batches >= self._interval:
            self._print(f"epoch {trainer.current_epoch} done at step {trainer.global_step}")

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.active and not trainer.sanity_checking:
            self._val_start = time.perf_counter()
            self._print(f"validation at step {trainer.global_step} ...")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self.active or trainer.sanity_checking:
            return
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        shown = "  ".join(f"{k} {float(v):.4f}" for k, v in sorted(metrics.items())[:4]
                          if isinstance(v, torch.Tensor) and v.numel() == 1)
        took = time.perf_counter() - self._val_start
        self._print(f"validation done in {took:.1f} s" + (f"  {shown}" if shown else ""))
        self._last_time += took  # validation time is not training speed (nor in the ETA's rate)
        self._start += took

    def on_train_end(self, trainer, pl_module) -> None:
        if self.active:
            self._print(f"training done: step {trainer.global_step} in {_format_duration(time.perf_counter() - self._start)}")
