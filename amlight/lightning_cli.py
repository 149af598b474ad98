"""LightningCLI configured for amlight: any stage, any DataModule, omegaconf YAML, linked arguments.

On top of Lightning's CLI (see README "Runs: one folder each, resuming"):
- the run directory is derived once, after the command line is merged (amlight.run_directory);
- `fit` into a folder that holds a run refuses unless it is resumed (``--ckpt_path last``), and a
  resumed run never replaces the first run's config.yaml (amlight.run_config);
- checkpoints are written atomically and read with one-line errors (amlight.checkpoint_io);
- errors about the user's input are one line (amlight.cli_errors), and a start that fails before
  training leaves nothing behind in the run directory.
"""
from __future__ import annotations

import sys

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.cli import LightningCLI

from amlight.callbacks.progress_log import ProgressLog
from amlight.checkpoint_io import AtomicCheckpointIO
from amlight.checkpoints.files import STAGE_NAMES, CheckpointError, load_torch_file
from amlight.cli_errors import describe
from amlight.run_config import RunConfigCallback
from amlight.run_directory import FailedStartCleanup, RunComplete, check_fit_target, derive_run_layout

_STAGE_OF_CLASS = {"amlight.stages.GenerationStage": "generation", "amlight.stages.generation.GenerationStage": "generation",
                   "amlight.stages.AdapterStage": "adapter", "amlight.stages.adapter.AdapterStage": "adapter"}
_SPECIAL_CKPT = ("last", "best", "hpc", "registry")


class AmlightCLI(LightningCLI):
    def __init__(self, args=None, run: bool = True, **kwargs):
        self._cleanup: FailedStartCleanup | None = None
        self._witness = _TrainingWitness()
        _LATEST[0] = self  # run_cli words errors with this instance's parser (its __init__ may raise)
        try:
            super().__init__(
                L.LightningModule,
                L.LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_callback=RunConfigCallback,
                save_config_kwargs={"overwrite": True},
                parser_kwargs={"parser_mode": "omegaconf"},
                seed_everything_default=0,
                args=args,
                run=run,
                **kwargs,
            )
        except BaseException:
            if self._cleanup is not None:
                self._cleanup.clean(steps_done=self._witness.batches)
            raise

    def init_parser(self, **kwargs):
        # Errors come back as exceptions (amlight.cli_errors words them) instead of a usage dump + exit.
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        # The model's label space comes from the data, so a config cannot get them out of step.
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.ignore_index", "model.init_args.ignore_index", apply_on="instantiate")

    def accepted_keys(self) -> list[str]:
        """Every option of the subcommand's parser (for "did you mean" on an unknown key)."""
        parsers = getattr(self, "_subcommand_parsers", {}) or {}
        keys = []
        for parser in [getattr(self, "parser", None), *parsers.values()]:
            for action in getattr(parser, "_actions", []):
                if action.dest and action.dest not in ("help", "==SUPPRESS=="):
                    keys.append(action.dest)
        return list(dict.fromkeys(keys))

    def _parse_ckpt_path(self) -> None:
        # Lightning torch.loads --ckpt_path FILE here for its hyper-parameters: a text or cut-off file
        # would surface as the unpickler's internals (KeyError: 101). Check it with amlight's loader.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and str(ckpt_path) not in _SPECIAL_CKPT:

            ckpt = load_torch_file(ckpt_path, what="--ckpt_path", mmap=True)
            found = (ckpt.get("amlight") or {}).get("stage") if isinstance(ckpt, dict) else None
            wanted = _STAGE_OF_CLASS.get(self.config[subcommand].get("model", {}).get("class_path", ""))
            if found and wanted and found != wanted:
                raise CheckpointError(f"--ckpt_path {ckpt_path} is a {STAGE_NAMES[found]} checkpoint, but this "
                                      f"config trains {STAGE_NAMES[wanted]}; give a checkpoint of the same stage")
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        layout = derive_run_layout(config)
        if self.subcommand == "fit":
            check_fit_target(layout, config.get("ckpt_path"), config.trainer.get("max_steps"))
            if config.get("ckpt_path") == "last" and layout.checkpoint_dirs and layout.last_checkpoint() is None:
                # "resume if there is something to resume" (make demo): a first start, said plainly
                # instead of Lightning's warning that no last checkpoint exists.
                print(f"amlight fit: no checkpoint in {layout.checkpoint_dirs[0]} yet: starting the run", file=sys.stderr)
                config.ckpt_path = None
            self._cleanup = FailedStartCleanup(layout)

    def after_instantiate_classes(self) -> None:
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()
        self.trainer.callbacks.append(self._witness)

        ProgressLog.add_to(self.trainer)


class _TrainingWitness(L.Callback):
    """Counts the training batches this start ran: a failure after any of them keeps the run's files."""

    def __init__(self):
        self.batches = 0

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.batches += 1


_LATEST: list[AmlightCLI | None] = [None]


def run_cli(argv: list[str] | None, command: str = "fit") -> int:
    """Run a Lightning subcommand; an error about the user's input is one line on stderr and exit 1."""

    _LATEST[0] = None
    try:
        AmlightCLI(args=argv)
    except RunComplete as done:
        print(f"amlight {command}: {done}")
        return 0
    except Exception as error:  # noqa: BLE001 - reworded or re-raised below
        cli = _LATEST[0]
        accepted = cli.accepted_keys() if cli is not None else []
        message = describe(error, list(sys.argv[1:] if argv is None else argv), accepted)
        if message is None:
            raise
        print(f"amlight {command}: error: {message}", file=sys.stderr)
        return 1
    return 0
