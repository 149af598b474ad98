"""One run, one directory: where a `fit` writes, whether that place already holds a run, and
removing what a failed start wrote.

The layout is derived once from the parsed config, after the command line is merged (a YAML
interpolation such as ``${trainer.default_root_dir}/checkpoints`` is resolved when the file is read,
before ``--trainer.default_root_dir`` could change it)::

    <trainer.default_root_dir>/       the run directory
        config.yaml                   the resolved config (config.resume-N.yaml for each resume)
        hparams.yaml, events.out.*    TensorBoard (amlight.training.run_logger.RunLogger)
        checkpoints/last.ckpt, ...    ModelCheckpoint without its own dirpath
        samples/, attention/          the image callbacks (they follow the logger's log_dir)

A logger ``save_dir`` or a checkpoint ``dirpath`` given explicitly is kept as given.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from amlight.checkpoints.files import load_torch_file

RUN_LOGGERS = ("amlight.training.run_logger.RunLogger",)
# Subfolders of the run directory that hold run outputs and are searched in full for new files.
OUTPUT_FOLDERS = ("checkpoints", "samples", "attention")
_LAST = re.compile(r"^last(-v?\d+)?$")


class RunDirError(ValueError):
    """A run directory that cannot be used as asked; one line that says what to do instead."""


class RunComplete(Exception):
    """``fit --ckpt_path last`` on a run that already reached ``max_steps``: nothing to do (exit 0)."""


def _as_list(value) -> list:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _is_checkpoint_callback(class_path: str) -> bool:
    import importlib

    from lightning.pytorch.callbacks import ModelCheckpoint

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, ModelCheckpoint)


@dataclass
class RunLayout:
    """Where a run writes: ``log_dir`` (config, events, images; None if the logger versions its own
    folders) and the checkpoint folders."""

    log_dir: Path | None
    checkpoint_dirs: list[Path] = field(default_factory=list)

    @property
    def folders(self) -> list[Path]:
        return [p for p in [self.log_dir, *self.checkpoint_dirs] if p is not None]

    def last_checkpoint(self) -> Path | None:
        """The newest ``last*.ckpt``, as Lightning's ``ckpt_path="last"`` picks it."""
        found = [p for d in self.checkpoint_dirs if d.is_dir() for p in d.glob("*.ckpt") if _LAST.match(p.stem)]
        return max(found, key=lambda p: p.stat().st_mtime) if found else None

    def existing_run(self) -> list[str]:
        """Files showing that an earlier run wrote here (paths relative to the log dir where possible)."""
        found: list[Path] = []
        if self.log_dir is not None and self.log_dir.is_dir():
            found += [self.log_dir / n for n in ("config.yaml", "hparams.yaml") if (self.log_dir / n).is_file()]
            found += sorted(self.log_dir.glob("events.out.tfevents.*"))[:1]
        for folder in self.checkpoint_dirs:
            if folder.is_dir():
                found += sorted(folder.glob("*.ckpt"))
        return [_short(p, self.log_dir) for p in dict.fromkeys(found)]


def _short(path: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return str(path.relative_to(base))
        except ValueError:
            pass
    return str(path)


def derive_run_layout(config) -> RunLayout:
    """Fill the run paths that the config leaves open from ``trainer.default_root_dir`` (in place) and
    return the layout. ``config`` is the parsed jsonargparse namespace of one subcommand."""
    trainer = config.trainer
    root = trainer.get("default_root_dir") or "."
    loggers = _as_list(trainer.get("logger"))
    log_dir: str | None = root if trainer.get("logger") is False else None
    for i, logger in enumerate(loggers):
        init = logger.get("init_args") if hasattr(logger, "get") else None
        if init is None:
            continue
        if "save_dir" in init and init.save_dir is None and logger.get("class_path") in RUN_LOGGERS:
            init.save_dir = root
        if i == 0:
            name, version = init.get("name", None), init.get("version", None)
            if init.get("save_dir") is not None and isinstance(name, str) and isinstance(version, str):
                log_dir = os.path.join(str(init.save_dir), name, version)
    # logger true or left out: Lightning's default TensorBoardLogger, which versions its own folders
    # (<root>/lightning_logs/version_N) and so never writes over an earlier run: log_dir stays None.
    checkpoint_dirs: list[str] = []
    for callback in _as_list(trainer.get("callbacks")):
        class_path = callback.get("class_path", "") if hasattr(callback, "get") else ""
        if not class_path or not _is_checkpoint_callback(class_path):
            continue
        init = callback.get("init_args")
        if init is not None and init.get("dirpath") is None and log_dir is not None:
            # What ModelCheckpoint derives itself, written out so that the saved config shows it.
            init.dirpath = os.path.normpath(os.path.join(log_dir, "checkpoints"))
        if init is not None and init.get("dirpath") is not None:
            checkpoint_dirs.append(str(init.dirpath))
    return RunLayout(Path(os.path.normpath(log_dir)) if log_dir is not None else None,
                     [Path(d) for d in checkpoint_dirs])


# Where launchers put a process's rank: torchrun and Lightning's DDP children (RANK, LOCAL_RANK,
# NODE_RANK, GROUP_RANK), srun (SLURM_PROCID: srun starts every task itself and sets no RANK), LSF's jsrun.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def _is_rank_zero() -> bool:
    # Every rank runs the command line; only the first process checks and cleans up.
    return all(os.environ.get(k, "0") in ("0", "") for k in _RANK_VARIABLES)


def check_fit_target(layout: RunLayout, ckpt_path: str | None, max_steps: int | None) -> None:
    """Refuse to start a new run where one exists; say so when a resume has nothing left to do."""
    if not _is_rank_zero():
        return
    if not ckpt_path:
        found = layout.existing_run()
        if found:
            where = layout.log_dir or layout.checkpoint_dirs[0]
            shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
            raise RunDirError(
                f"{where} already holds a run ({shown}); continue it with --ckpt_path last, or start a new run "
                "in another folder with --trainer.default_root_dir NEW_DIR (nothing was written)"
            )
        return
    if ckpt_path == "last":
        resume_from = layout.last_checkpoint()
    elif ckpt_path in ("best", "hpc", "registry"):
        return
    else:
        resume_from = Path(ckpt_path)
    if resume_from is None or not max_steps or max_steps < 0:
        return

    # mmap: only the small trainer record is read, not the weights.
    step = load_torch_file(resume_from, what="--ckpt_path", mmap=True).get("global_step", 0)
    if isinstance(step, int) and step >= max_steps:
        raise RunComplete(
            f"{resume_from} is at step {step}, and --trainer.max_steps is {max_steps}: the run is complete, "
            "nothing to do (a higher --trainer.max_steps trains on)"
        )


class FailedStartCleanup:
    """Remembers what the run's folders held before `fit` started; after a failure that came before
    the first checkpoint and the first optimiser step, removes what this start added (config.yaml,
    hparams.yaml, event files, empty folders) and leaves everything that was there untouched."""

    def __init__(self, layout: RunLayout):
        self.layout = layout
        self.before = self._listing()
        self.created = [self._first_missing(d) for d in layout.folders]

    def _listing(self) -> set[Path]:
        paths: set[Path] = set()
        for folder in self.layout.folders:
            if not folder.is_dir():
                continue
            paths.add(folder)
            for entry in folder.iterdir():
                paths.add(entry)
                if entry.is_dir() and (entry.name in OUTPUT_FOLDERS or entry in self.layout.checkpoint_dirs):
                    paths.update(entry.rglob("*"))
        return paths

    @staticmethod
    def _first_missing(folder: Path) -> Path | None:
        """The highest ancestor of ``folder`` (or itself) that does not exist yet."""
        folder = folder.absolute()
        missing = None
        for candidate in [folder, *folder.parents]:
            if candidate.exists():
                break
            missing = candidate
        return missing

    def clean(self, steps_done: int = 0) -> bool:
        """Remove this start's files if it wrote no checkpoint and did no step; True if it did."""
        if not _is_rank_zero():
            return False
        new = sorted(self._listing() - self.before, key=lambda p: len(p.parts), reverse=True)
        if steps_done > 0 or any(p.suffix == ".ckpt" for p in new):
            return False  # a run that trained keeps its logs and checkpoints: resume it
        for path in new:
            if path.is_dir():
                if not any(path.iterdir()):
                    path.rmdir()
            else:
                path.unlink(missing_ok=True)
        for top in self.created:
            if top is None or not top.exists():
                continue
            for folder in sorted((p for p in [top, *top.rglob("*")] if p.is_dir()),
                                 key=lambda p: len(p.parts), reverse=True):
                if not any(folder.iterdir()):
                    folder.rmdir()
        return True
