"""LightningCLI configured for amlight: any stage, any DataModule, omegaconf YAML, linked arguments.

On top of Lightning's CLI (see README "Runs: one folder each, resuming"):
- the run directory is derived once, after the command line is merged (amlight.training.run_directory);
- `fit` into a folder that holds a run refuses unless it is resumed (``--ckpt_path last``), and a
  resumed run never replaces the first run's config.yaml (amlight.training.run_config);
- checkpoints are written atomically and read with one-line errors (amlight.training.checkpoint_io);
- errors about the user's input are one line (amlight.cli.lightning_errors), and a start that fails before
  training leaves nothing behind in the run directory;
- a run whose last step is not a validation step validates there too (a 30-step try of a config
  that validates every 250 steps still shows its loss and samples);
- on the CPU, torch uses one thread per core that other processes leave idle (``--threads N`` sets
  it), as generate and predict do (amlight.utils.cpu_threads);
- help says ``python -m amlight fit``, describes the stages' and the DataModule's arguments
  (``--model.help GenerationStage``, ``--data.help ExemplarPairDataModule``) and accepts the short
  class names (``--model AdapterStage``).
"""
from __future__ import annotations

import contextlib
import inspect
import re
import sys

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

# The stages and the DataModule are imported so that jsonargparse knows them as subclasses:
# `--model GenerationStage` and `--model.help AdapterStage` resolve the short names, and help lists them.
import amlight.apps.predict_module
import amlight.stages
from amlight.callbacks.progress_log import ProgressLog
from amlight.training.checkpoint_io import AtomicCheckpointIO
from amlight.checkpoints.files import STAGE_NAMES, CheckpointError, load_torch_file
from amlight.cli.lightning_errors import describe
from amlight.data.datamodule import ExemplarPairDataModule
from amlight.training.run_config import RunConfigCallback
from amlight.training.run_directory import FailedStartCleanup, RunComplete, check_fit_target, derive_run_layout
from amlight.stages.denoising_stage import DenoisingStage

_STAGE_OF_CLASS = {"amlight.stages.GenerationStage": "generation", "amlight.stages.generation.GenerationStage": "generation",
                   "amlight.stages.AdapterStage": "adapter", "amlight.stages.adapter.AdapterStage": "adapter"}
_SPECIAL_CKPT = ("last", "best", "hpc", "registry")
PROG = "python -m amlight"
# The subcommands that run a model on the Trainer's device and take --threads (predict's module has
# its own threads argument: model.init_args.threads).
_THREADED = ("fit", "validate", "test")
_DESCRIPTIONS = {
    "fit": "Train a stage (stage 1: amlight.stages.GenerationStage, stage 2: amlight.stages.AdapterStage) "
           "from a YAML config, e.g. --config configs/quickstart/stage1.yaml.",
    "validate": "Run validation of a stage on a config and checkpoint.",
    "test": "Run the test loop of a stage.",
    "predict": "Run the predict loop of a stage (amlight.apps.predict_module.SynthesisModule).",
}
_CLASS_HELP = ("The options of the model and of the data depend on their class: --model.help GenerationStage, "
               "--model.help AdapterStage and --data.help ExemplarPairDataModule list them with descriptions. "
               "Short class names work anywhere a class path does (--model AdapterStage).")


class AmlightArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose parsers, including those jsonargparse makes to print
    ``--model.help CLASS``, call the program ``python -m amlight <subcommand>`` rather than sys.argv[0]."""

    default_prog = PROG

    def __init__(self, *args, **kwargs):
        if not args:
            kwargs.setdefault("prog", type(self).default_prog)
        super().__init__(*args, **kwargs)


class AmlightCLI(LightningCLI):
    def __init__(self, args=None, run: bool = True, **kwargs):
        argv = sys.argv[1:] if args is None else args
        command = argv[0] if isinstance(argv, (list, tuple)) and argv and argv[0] in _DESCRIPTIONS else None
        AmlightArgumentParser.default_prog = f"{PROG} {command}" if command else PROG
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
                parser_kwargs={"parser_mode": "omegaconf", "prog": PROG,
                               **{name: {"description": f"{text} {_CLASS_HELP}"}
                                  for name, text in _DESCRIPTIONS.items()}},
                parser_class=AmlightArgumentParser,
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
        # Errors come back as exceptions (amlight.cli.lightning_errors words them) instead of a usage dump + exit.
        kwargs.setdefault("exit_on_error", False)
        parser = super().init_parser(**kwargs)
        if any(kwargs.get("description", "").startswith(_DESCRIPTIONS[name]) for name in _THREADED):
            parser.add_argument(
                "--threads", type=int | None, default=None,
                help="torch threads when the run is on the CPU (default: one per core that other processes "
                     "leave idle, as generate and predict choose; a busy core makes every extra thread wait)")
        return parser

    def setup_parser(self, add_subcommands, main_kwargs, subparser_kwargs) -> None:
        with _parseable_docstrings(_DOCUMENTED):
            super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        # jsonargparse names a subcommand's program "<prog> [options] <name>"; there are no options before it.
        for name, parser in (getattr(self, "_subcommand_parsers", None) or {}).items():
            parser.prog = f"{PROG} {name}"

    def add_arguments_to_parser(self, parser) -> None:
        # The model's label space comes from the data, so a config cannot get them out of step.
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.ignore_index", "model.init_args.ignore_index", apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        with _parseable_docstrings(_DOCUMENTED):  # `--model.help CLASS` prints while parsing
            super().parse_arguments(parser, args)

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
        self.trainer.callbacks.append(_ValidateAtLastStep())
        if self.subcommand in _THREADED:
            self.trainer.callbacks.append(_CpuThreads(self.config[self.subcommand].get("threads"), self.subcommand))

        ProgressLog.add_to(self.trainer)


class _TrainingWitness(L.Callback):
    """Counts the training batches this start ran: a failure after any of them keeps the run's files."""

    def __init__(self):
        self.batches = 0

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.batches += 1


# --- argument descriptions --------------------------------------------------------------------

_DOCUMENTED = (DenoisingStage, amlight.stages.GenerationStage, amlight.stages.AdapterStage,
               amlight.apps.predict_module.SynthesisModule, ExemplarPairDataModule)
_ENTRY = re.compile(r"^(?P<names>[A-Za-z_]\w*(?:\s*(?:,|/)\s*[A-Za-z_]\w*)*)\s*:\s*(?P<text>.*)$")


def parseable_docstring(cls: type) -> str | None:
    """``cls``'s docstring in the Google style that jsonargparse reads for argument descriptions, or None
    where it is that already (or has no Args block).

    amlight's classes document their arguments compactly: ``Args:`` as the first line and entries that
    name several arguments at once (``sample_steps, sample_guidance_scale: ...``, ``train_pairing /
    val_pairing: ...``). docstring_parser takes the first line for the summary and finds no argument
    in such a block; here every name gets its own entry with the shared text, and the summary line is
    the first sentence of the class's module docstring.
    """
    lines = (cls.__doc__ or "").expandtabs().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Args:"), None)
    if start is None:
        return None
    args_depth: int | None = len(lines[start]) - len(lines[start].lstrip())
    if start == 0:
        # "Args:" right after the quotes shows no indentation; the body's is that of the closing quotes'
        # line (where the docstring ends on its own line), else unknown: the block then ends where a
        # line is less indented than its first entry.
        args_depth = len(lines[-1]) if len(lines) > 1 and not lines[-1].strip() else None
    summary = inspect.cleandoc("\n".join(lines[:start]))
    if not summary:
        module_doc = inspect.cleandoc(sys.modules[cls.__module__].__doc__ or "").split("\n\n")[0]
        summary = " ".join(module_doc.split()) or cls.__name__
    entries: list[tuple[list[str], list[str]]] = []
    indent = None
    end = len(lines)
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent or (args_depth is not None and depth <= args_depth):
            end = i
            break
        match = _ENTRY.match(line.strip()) if depth == indent else None
        if match:
            names = [n.strip() for n in re.split(r"[,/]", match.group("names"))]
            shared = f"({match.group('names')}) " if len(names) > 1 else ""  # the group, as written
            entries.append((names, [shared + match.group("text")]))
        elif entries:
            entries[-1][1].append(line.strip())
    if not entries:
        return None
    body = [f"    {name}: {' '.join(text)}" for names, text in entries for name in names]
    rest = inspect.cleandoc("\n".join(lines[end:]))
    return "\n".join([summary, "", "Args:", *body] + (["", rest] if rest else []))


@contextlib.contextmanager
def _parseable_docstrings(classes):
    """While the CLI parses (and prints help), ``classes`` carry :func:`parseable_docstring`'s form."""
    saved = {}
    for cls in classes:
        new = parseable_docstring(cls)
        if new is not None:
            saved[cls] = cls.__doc__
            cls.__doc__ = new
    try:
        yield
    finally:
        for cls, doc in saved.items():
            cls.__doc__ = doc


class _ValidateAtLastStep(L.Callback):
    """Validates at the run's last step (``max_steps``) when the validation interval would not.

    Lightning validates on ``(batch + 1) % val_check_interval == 0`` only, so a run shorter than its
    interval (``--trainer.max_steps 30`` with ``val_check_interval: 250``) ended with no validation
    loss and no sample grid, and a run of 300 steps ended 50 steps past its last look. Requesting a
    stop on the last step makes Lightning run validation there (as it does for early stopping); it
    runs once even where the interval falls on that step too.
    """

    def on_train_start(self, trainer, pl_module) -> None:
        interval, max_steps = trainer.val_check_batch, trainer.max_steps
        if (trainer.is_global_zero and max_steps and max_steps > 0 and isinstance(interval, int)
                and trainer.check_val_every_n_epoch is None and trainer.enable_validation
                and max_steps * trainer.accumulate_grad_batches < interval
                and trainer.global_step < max_steps):
            print(f"amlight fit: max_steps {max_steps} ends before the first validation (val_check_interval "
                  f"{trainer.val_check_interval}): validating at step {max_steps}", file=sys.stderr)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.max_steps and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True


class _CpuThreads(L.Callback):
    """On the CPU, torch's threads: ``threads`` when given, else one per core that other processes
    leave idle (amlight.utils.cpu_threads.default_threads, divided among the processes of a CPU DDP run).

    Torch's default is every core; when another job holds one of them, each op's thread barrier waits
    for a time slice (on 2 shared cores, 20 tiny-model steps took 25 s with 2 threads and 6 s with 1).
    The choice is printed at the start; the previous setting is restored at the end.
    """

    def __init__(self, threads: int | None, command: str = "fit"):
        if threads is not None and threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        self.threads = threads
        self.command = command
        self._before: int | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        import torch

        if not isinstance(trainer.accelerator, CPUAccelerator):
            return
        from amlight.utils.cpu_threads import available_cores, default_threads

        self._before = torch.get_num_threads()
        idle = None
        threads = self.threads
        if threads is None:
            processes = max(1, int(getattr(trainer, "num_devices", 1) or 1))
            free, idle = default_threads()
            threads = max(1, free // processes)
        torch.set_num_threads(int(threads))
        if trainer.is_global_zero:
            chosen = "--threads" if self.threads is not None else (
                f"{idle:.1f} of {available_cores()} core(s) idle" if idle is not None else f"{available_cores()} core(s)")
            per = " per process" if getattr(trainer, "num_devices", 1) > 1 else ""
            print(f"amlight {self.command}: on the CPU with {torch.get_num_threads()} torch thread(s){per} ({chosen}; "
                  "--threads N sets it)", file=sys.stderr)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._before is not None:
            import torch

            torch.set_num_threads(self._before)
            self._before = None


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
