"""Files in, files out: what ``python -m amlight generate`` does, as one typed Python function.

:func:`generate_files` reads the inputs (exemplar images and label maps, a pairs file, or exemplars
retrieved from a dataset), checks all of them before any model runs, draws every pair that is not in
``out`` yet (:func:`amlight.apps.outputs.generate_pairs`) and writes the results, ``summary.json``
and ``grid.png``. Bad input raises :class:`GenerateError` (or the reader's own ``ValueError``:
a missing or mis-sized file, colours outside the palette, an adapter of another architecture, an
unwritable ``out``) with a one-line message, before anything is drawn or written. Messages name the
options by their command-line flags (``--exemplar-labels`` is ``exemplar_labels=``).

Python::

    from amlight.apps.generate_files import generate_files

    result = generate_files("runs/gen", stage1="runs/quickstart/stage1/checkpoints/last.ckpt",
                            adapter="runs/quickstart/stage2/checkpoints/last.ckpt",
                            pairs="data/synthetic/val/pairs.json", triplets=True)
    print(result.written, result.summary)

The command line parses its arguments into :class:`GenerateOptions` and runs the same two steps,
:func:`prepare_generation` (every check; nothing drawn) and :func:`draw_files`.

Importing this module loads no torch (the command's ``--help`` imports it).
"""
from __future__ import annotations

import dataclasses
import math
import operator
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

from amlight.modules.attention_modes import ATTENTION_MODES, AttentionMode
from amlight.pipeline.model_options import model_arguments_problem

# amlight.pipeline.schedulers.SCHEDULERS' names: that module loads diffusers, and the command's `--help`
# must not (tests/test_startup.py); tests/test_schedulers.py keeps them equal.
SCHEDULER_NAMES = ("ddim", "dpm++", "euler", "unipc")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
AUTO_BATCH_CAP = 8

PathLike = str | Path


class GenerateError(ValueError):
    """Bad input to :func:`generate_files`, said in one line."""


# --- options -------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class GenerateOptions:
    """Everything :func:`generate_files` takes (the fields are its keyword arguments; the command
    line's flags with ``_`` for ``-``). Checked when made: :class:`GenerateError` if a value is bad."""

    # model: an exported pipeline folder, or a stage-1 checkpoint [+ adapter]
    pipeline: PathLike | None = None
    stage1: PathLike | None = None  # default with an adapter: the stage 1 it was trained on
    adapter: PathLike | None = None
    base: PathLike | None = None  # the SD 1.5 folder, when the stage-1 checkpoint's stored one is gone
    data: str | None = None  # the dataset whose palette decodes the label files (default: the model's)
    # inputs: exemplars x targets, a pairs file, or retrieved exemplars
    exemplar: Sequence[PathLike] | None = None
    exemplar_labels: Sequence[PathLike] | None = None
    target_labels: Sequence[PathLike] | None = None
    target_images: Sequence[PathLike] | None = None
    pairs: PathLike | None = None
    retrieve: str | None = None
    retrieve_split: str = "val"
    top_k: int = 1
    # applications
    link: Sequence[str] = ()  # "EX_MASK:TGT_MASK"
    paint: Sequence[str] = ()  # "CLASS@x0,y0,x1,y1"
    # sampling
    mode: AttentionMode = "adapter"
    steps: int = 20
    scheduler: str = "ddim"
    guidance_scale: float = 3.0
    seed: int = 0
    strength: float = 1.0
    controlnet_scale: float | None = None
    size: Sequence[int] | None = None  # (H, W); default: the model's resolution
    batch_size: int | Literal["auto"] = "auto"
    device: str | None = None
    dtype: str = "fp32"
    threads: int | None = None
    # output
    out: PathLike
    triplets: bool = False
    overwrite: bool = False
    quiet: bool = False  # no progress bar

    def __post_init__(self):
        for name in ("exemplar", "exemplar_labels", "target_labels", "target_images"):
            value = getattr(self, name)
            if isinstance(value, (str, Path)):
                raise GenerateError(f"{name} takes a list of files, got one: {value!r} (write [{value!r}])")
            if value is not None:
                setattr(self, name, [str(v) for v in value] or None)
        for name in ("link", "paint"):
            value = getattr(self, name)
            setattr(self, name, [value] if isinstance(value, str) else [str(v) for v in value])
        for name in ("pipeline", "stage1", "adapter", "base", "pairs", "out"):
            if getattr(self, name) is not None:
                setattr(self, name, str(getattr(self, name)))
        if self.mode not in ATTENTION_MODES:
            raise GenerateError(f"unknown mode {self.mode!r}; choose one of {', '.join(sorted(ATTENTION_MODES))}")
        self.scheduler = str(self.scheduler).lower()
        if self.scheduler not in SCHEDULER_NAMES:
            raise GenerateError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULER_NAMES)}")
        if self.dtype not in DTYPES:
            raise GenerateError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(sorted(DTYPES))}")
        self.steps = _integer("steps", self.steps, 1)
        self.top_k = _integer("top_k", self.top_k, 1)
        self.seed = _integer("seed", self.seed, None)
        if self.threads is not None:
            self.threads = _integer("threads", self.threads, 1)
        if self.batch_size != "auto":
            self.batch_size = _integer("batch_size", self.batch_size, 1, "'auto' or ")
        if self.size is not None:
            if len(self.size) != 2:
                raise GenerateError(f"size must be (height, width), got {self.size!r}")
            self.size = [_integer("size", s, 1) for s in self.size]
        self.guidance_scale = _number("guidance_scale", self.guidance_scale)
        self.strength = _number("strength", self.strength)
        if self.controlnet_scale is not None:
            self.controlnet_scale = _number("controlnet_scale", self.controlnet_scale)

    @property
    def attention(self):
        """The run's :class:`~amlight.modules.attention_modes.AttentionSettings` (mode and strength)."""
        from amlight.modules.attention_modes import AttentionSettings

        return AttentionSettings(self.mode, appearance_strength=self.strength)

    def input_kind(self) -> str:
        """Which input form the options use ('exemplars', 'pairs', 'retrieve'); GenerateError if inconsistent."""
        attention = self.attention
        given = [name for name, value in (("--exemplar", self.exemplar), ("--pairs", self.pairs),
                                          ("--retrieve", self.retrieve)) if value]
        if len(given) > 1:
            raise GenerateError(f"{' and '.join(given)} are alternatives: give one of them")
        if not given:
            raise GenerateError("no inputs: give --exemplar IMG --exemplar-labels LBL --target-labels LBL, "
                                "or --pairs pairs.json, or --target-labels LBL --retrieve DATASET")
        if self.exemplar_labels and not self.exemplar:
            raise GenerateError("--exemplar-labels needs --exemplar (the images they belong to)")
        problem = model_arguments_problem(self.stage1, self.adapter, self.pipeline, self.base)
        if problem:
            raise GenerateError(problem)
        if attention.uses_adapter and not self.adapter and not self.pipeline:
            raise GenerateError("--mode adapter needs --adapter (a stage-2 checkpoint or exported adapter); "
                                "without one use --mode augmented (augmented self-attention, no adapter)")
        if self.target_images and not self.target_labels:
            raise GenerateError("--target-images needs --target-labels (one label map per image)")
        if self.target_images and len(self.target_images) != len(self.target_labels):
            raise GenerateError(f"{len(self.target_images)} --target-images for {len(self.target_labels)} "
                                "--target-labels: give one image per label map, in the same order")
        kind = {"--exemplar": "exemplars", "--pairs": "pairs", "--retrieve": "retrieve"}[given[0]]
        if kind == "exemplars":
            if not self.exemplar_labels:
                raise GenerateError("--exemplar needs --exemplar-labels (one label map per exemplar image)")
            if len(self.exemplar) != len(self.exemplar_labels):
                raise GenerateError(f"{len(self.exemplar)} --exemplar image(s) but {len(self.exemplar_labels)} "
                                    "--exemplar-labels: give one label map per image, in the same order")
            if not self.target_labels and not self.paint:
                raise GenerateError("nothing to draw: give --target-labels, or --paint to edit the exemplars' own "
                                    "labels")
        if kind == "pairs" and self.target_labels:
            raise GenerateError("--pairs lists its targets: drop --target-labels")
        if kind == "retrieve":
            if not self.target_labels:
                raise GenerateError("--retrieve needs --target-labels (the label maps to find exemplars for)")
            if self.link:
                raise GenerateError("--link needs known exemplars: use --exemplar, not --retrieve")
        if self.link and not attention.needs_labels:
            raise GenerateError(f"--link works through the categorical cost, which --mode {self.mode} does not use: "
                                "pick --mode adapter or hard_mask")
        if self.top_k != 1 and kind != "retrieve":
            raise GenerateError("--top-k only applies with --retrieve")
        return kind



def _integer(name: str, value, low: int | None, alternatives: str = "") -> int:
    try:
        if isinstance(value, bool):  # an int to Python, never meant as one here
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise GenerateError(f"{name} must be {alternatives}an integer, got {value!r}") from None
    if low is not None and number < low:
        raise GenerateError(f"{name} must be {alternatives}an integer >= {low}, got {number}")
    return number


def _number(name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise GenerateError(f"{name} must be a number >= 0, got {value!r}") from None
    if isinstance(value, bool) or not (number >= 0 and math.isfinite(number)):
        raise GenerateError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


# --- the two steps -------------------------------------------------------------------------------


@dataclass
class GenerationPlan:
    """A checked run: the model, the label space, the jobs and the writer; nothing drawn yet."""

    options: GenerateOptions  # with what the checks resolved (stage 1, batch size, threads)
    pipe: object
    space: object  # amlight.apps.inputs.LabelSpace
    jobs: list
    writer: object  # amlight.apps.outputs.ResultWriter
    attention: object  # AttentionSettings
    settings: dict  # what summary.json records as the run's settings
    created_out: list  # folders made for out, removed again if the run fails before drawing
    notes: list[str]  # one-line notes and warnings found while checking


@dataclass
class GenerateResult:
    """What a run did: its report (records, written, skipped, warnings, UNet calls) and its files."""

    out: Path
    outputs: int  # jobs of the run, drawn or there already
    report: object  # amlight.apps.outputs.GenerationReport
    summary: Path
    grid: Path | None
    seconds: float  # drawing and writing, summary and grid included
    notes: list[str] = field(default_factory=list)

    @property
    def written(self) -> list[str]:
        """The output names drawn in this run."""
        return self.report.written

    @property
    def skipped(self) -> list[str]:
        """The output names that were there already."""
        return self.report.skipped

    @property
    def files(self) -> list[Path]:
        """The result PNGs of every output of the run (drawn now or before), in job order."""
        return [self.out / record["output"] for record in self.report.records]


def _resolve_device(device: str | None, dtype_name: str):
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GenerateError(f"--device {device}: no CUDA device is available here; use --device cpu")
    dtype = getattr(torch, DTYPES[dtype_name])
    if dtype == torch.float16 and not device.startswith("cuda"):
        raise GenerateError("--dtype fp16 needs a GPU (--device cuda); on a CPU use fp32 or bf16")
    return device, dtype


def _set_threads(options: GenerateOptions, device: str) -> None:
    import torch

    threads = options.threads
    if threads is None and device == "cpu":  # a resumed run computes as the first did: same bytes
        from amlight.apps.outputs import ResultWriter

        threads = ((ResultWriter(options.out).previous_summary() or {}).get("settings") or {}).get("threads")
        threads = threads if isinstance(threads, int) and threads > 0 else None
    if threads is None and device == "cpu":
        from amlight.utils.cpu_threads import default_threads

        threads = default_threads()[0]
    if threads:
        torch.set_num_threads(threads)
    options.threads = torch.get_num_threads()


def _load_pipeline(options: GenerateOptions, notes: list):
    from amlight.pipeline.model_options import open_pipeline, stage1_path

    if not options.pipeline:
        options.stage1 = stage1_path(options.stage1, options.adapter)  # an adapter alone: the stage 1 it names
    device, dtype = _resolve_device(options.device, options.dtype)
    _set_threads(options, device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = open_pipeline(options.stage1, options.adapter, options.pipeline, options.base, device=device,
                             dtype=dtype)
    for w in caught:  # amlight's own (an adapter trained on another stage 1) as one line; others as usual
        if "amlight" in Path(w.filename).parts:
            notes.append(f"warning: {w.message}")
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return pipe


def _label_space(options: GenerateOptions, retrieve_source, pipe):
    from amlight.apps.inputs import LabelSpace, label_space_from_run

    if options.data:
        return LabelSpace.resolve(options.data)
    if retrieve_source is not None:
        return LabelSpace.from_source(retrieve_source, origin=options.retrieve)
    if options.pipeline:
        if pipe.label_space is None:
            raise GenerateError(f"--pipeline {options.pipeline} carries no label space: pass --data NAME_OR_DIR")
        return LabelSpace.from_pipeline(pipe.label_space, origin=options.pipeline)
    if (Path(options.stage1) / "model_index.json").is_file():  # the folder a stage 2 was trained on
        from amlight.pipeline.label_space import PipelineLabelSpace

        return LabelSpace.from_pipeline(PipelineLabelSpace.from_pretrained(options.stage1, subfolder="label_space"),
                                        origin=options.stage1)
    return label_space_from_run(options.stage1)


def _size(options: GenerateOptions, pipe) -> tuple[int, int]:
    size = tuple(options.size) if options.size else tuple(pipe.resolution)
    f = pipe.backbone.latent_downsample
    levels = len(getattr(pipe.model.unet.config, "block_out_channels", (0,)))
    step = f * 2 ** max(levels - 1, 0)
    if size[0] % step or size[1] % step:
        raise GenerateError(f"--size {size[0]} {size[1]}: height and width must be multiples of {step} for this "
                            f"model (native size {pipe.resolution[0]}x{pipe.resolution[1]})")
    return size  # type: ignore[return-value]


def prepare_generation(options: GenerateOptions) -> GenerationPlan:
    """Every check, in order of cost (the options, the output folder, the model, the label space, every
    input file); nothing is drawn or written yet. ``options`` gets what the checks resolve (the stage
    1 an adapter names, the batch size of ``"auto"``, the thread count); torch's thread count is set
    for the run."""
    from amlight.apps import inputs as I
    from amlight.apps.outputs import ResultWriter, prepare_out_dir, remove_if_empty

    kind = options.input_kind()
    attention = options.attention
    links = [I.parse_link(spec) for spec in options.link]
    created = prepare_out_dir(options.out)
    try:
        notes: list[str] = []
        pipe = _load_pipeline(options, notes)
        from amlight.pipeline.schedulers import scheduler_by_name

        # The scheduler on the model's own noise schedule (its config); each call starts from a fresh copy.
        pipe.scheduler = scheduler_by_name(options.scheduler, pipe.scheduler.config)
        retrieve_source = None
        if kind == "retrieve":
            from amlight.data.registry import build_dataset

            retrieve_source = build_dataset(options.retrieve, split=options.retrieve_split)
        if options.controlnet_scale is not None and not pipe.is_controlnet:
            raise GenerateError(f"--controlnet-scale: the model {options.pipeline or options.stage1} has no ControlNet "
                                f"(its structure guidance is {type(pipe.model.guidance).__name__}): drop "
                                "--controlnet-scale")
        if attention.uses_adapter and pipe.adapter is None:
            raise GenerateError(f"--mode adapter needs an adapter, and --pipeline {options.pipeline} has none (exported "
                                "without --adapter): use --mode augmented, or export the folder with --adapter")
        space = _label_space(options, retrieve_source, pipe)
        if space.num_classes != pipe.num_classes:
            raise GenerateError(
                f"the label files' dataset {space.origin or space.metadata.name!r} has {space.num_classes} classes "
                f"but the stage-1 model {options.pipeline or options.stage1} was trained on {pipe.num_classes}: pass "
                "--data with the dataset the model was trained on"
            )
        paints = [I.parse_paint(spec, space) for spec in options.paint]
        size = _size(options, pipe)
        if options.batch_size == "auto":
            options.batch_size, note = pipe.auto_batch_size(size, options.steps, [attention], AUTO_BATCH_CAP)
            if note:
                notes.append(note)
        cache = I.InputCache(space, size)
        if kind == "pairs":
            jobs = I.pairs_from_file(options.pairs, cache, paints=paints, links=links, attention=attention)
        elif kind == "exemplars":
            jobs = I.all_pairs(options.exemplar, options.exemplar_labels, options.target_labels or [], cache,
                               target_images=options.target_images, paints=paints, links=links, attention=attention)
        else:
            try:
                from amlight.apps.retrieval import LabelIndex
            except ImportError as e:  # pragma: no cover - depends on the installation
                raise GenerateError(f"--retrieve is not available: {e}") from None
            if retrieve_source.metadata.num_classes != space.num_classes:
                raise GenerateError(f"--retrieve {options.retrieve} has {retrieve_source.metadata.num_classes} "
                                    f"classes, the label files' dataset {space.num_classes}")
            index = LabelIndex.from_source(retrieve_source, progress=not options.quiet)
            jobs = I.retrieved_pairs(options.target_labels, index, cache, options.top_k,
                                     target_images=options.target_images, paints=paints, attention=attention)
        I.check_jobs(jobs)
        notes += cache.aspect_warnings
    except BaseException:
        remove_if_empty(created)
        raise
    settings = {
        **({"pipeline": str(Path(options.pipeline).resolve())} if options.pipeline else
           {"stage1": str(Path(options.stage1).resolve()),
            "adapter": str(Path(options.adapter).resolve()) if options.adapter and attention.uses_adapter else None}),
        "mode": attention.mode, "steps": options.steps, "scheduler": options.scheduler,
        "guidance_scale": options.guidance_scale, "seed": options.seed,
        "appearance_strength": attention.appearance_strength, "size": list(size), "dtype": options.dtype,
        "threads": options.threads,
        # The scale drawn with (given or the model's own); absent for models without a ControlNet.
        **({"controlnet_scale": pipe.model.controlnet_scale(options.controlnet_scale)} if pipe.is_controlnet else {}),
        "paint": [p.describe(space) for p in paints], "link": [str(link) for link in links],
    }
    writer = ResultWriter(options.out, overwrite=options.overwrite, triplets=options.triplets, metadata=space.metadata)
    return GenerationPlan(options, pipe, space, jobs, writer, attention, settings, created, notes)


def _changed_settings(previous: dict | None, settings: dict) -> list[str]:
    if not previous or not isinstance(previous.get("settings"), dict):
        return []
    old = previous["settings"]
    return [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items()
            if k in old and old.get(k) != v and k != "threads"]


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def draw_files(plan: GenerationPlan, notify: Callable[[str], None] | None = None) -> GenerateResult:
    """Draw every job of ``plan`` whose output is not there yet, write it, then ``summary.json`` and
    ``grid.png``. ``notify`` gets the plan's notes and warnings, one line each (default: stderr).

    On Ctrl-C the files written so far stay complete, ``summary.json`` records them, and the
    KeyboardInterrupt carries the partial report as ``.report``. A non-finite image raises
    :class:`~amlight.pipeline.finite.NonFiniteOutputError` (what was written before it stays).
    """
    from amlight.apps.outputs import generate_pairs

    notify = notify or _to_stderr
    options, writer = plan.options, plan.writer
    for note in plan.notes:
        notify(note)
    changed = _changed_settings(writer.previous_summary(), plan.settings)
    existing = [job for job in plan.jobs if writer.has_result(job.name)]
    if changed and existing:
        notify(f"warning: {len(existing)} output(s) in {options.out} were drawn with other settings "
               f"({'; '.join(changed)}); they are kept: pass --overwrite to redraw them")
    arguments = dataclasses.asdict(options)
    start = time.perf_counter()
    try:
        report = generate_pairs(
            plan.pipe, plan.jobs, writer, attention=plan.attention, steps=options.steps,
            guidance_scale=options.guidance_scale, seed=options.seed, batch_size=options.batch_size,
            progress=not options.quiet, class_name=plan.space.class_name, controlnet_scale=options.controlnet_scale,
        )
    except KeyboardInterrupt as exc:
        report = getattr(exc, "report", None)
        if report is not None:
            writer.write_summary(arguments, report, plan.settings)
        raise
    summary = writer.write_summary(arguments, report, plan.settings)
    grid = writer.write_grid()
    return GenerateResult(Path(options.out), len(plan.jobs), report, summary, grid, time.perf_counter() - start,
                          list(plan.notes))


def generate_files(
    out: PathLike,
    *,
    pipeline: PathLike | None = None,
    stage1: PathLike | None = None,
    adapter: PathLike | None = None,
    base: PathLike | None = None,
    data: str | None = None,
    exemplar: Sequence[PathLike] | None = None,
    exemplar_labels: Sequence[PathLike] | None = None,
    target_labels: Sequence[PathLike] | None = None,
    target_images: Sequence[PathLike] | None = None,
    pairs: PathLike | None = None,
    retrieve: str | None = None,
    retrieve_split: str = "val",
    top_k: int = 1,
    link: Sequence[str] = (),
    paint: Sequence[str] = (),
    mode: AttentionMode = "adapter",
    steps: int = 20,
    scheduler: str = "ddim",
    guidance_scale: float = 3.0,
    seed: int = 0,
    strength: float = 1.0,
    controlnet_scale: float | None = None,
    size: Sequence[int] | None = None,
    batch_size: int | Literal["auto"] = "auto",
    device: str | None = None,
    dtype: str = "fp32",
    threads: int | None = None,
    triplets: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    notify: Callable[[str], None] | None = None,
) -> GenerateResult:
    """Draw target label maps in the appearance of exemplars, into the folder ``out``.

    The model: ``pipeline`` (an exported pipeline folder) or ``stage1`` [+ ``adapter``] (``base``: the
    SD 1.5 folder when the checkpoint's stored one is gone; ``data``: the dataset whose palette decodes
    the label files, default the model's). The inputs, one of: ``exemplar`` + ``exemplar_labels`` +
    ``target_labels`` (every exemplar x target), ``pairs`` (a pairs file), or ``target_labels`` +
    ``retrieve`` (each target's ``top_k`` exemplars from that dataset's ``retrieve_split``).
    ``link``, ``paint``, ``target_images``: the applications (see ``python -m amlight generate --help``).
    Sampling: ``mode``, ``steps``, ``scheduler``, ``guidance_scale``, ``seed`` (every target's initial
    noise), ``strength`` (appearance strength), ``controlnet_scale``, ``size`` (H, W), ``batch_size``
    (targets per UNet call, or "auto"), ``device``, ``dtype`` (fp32, bf16, fp16), ``threads`` (torch CPU
    threads for the run; the caller's count is restored after). ``triplets``: also write
    ``out/triplets/``; ``overwrite``: redraw outputs that exist (default: skip them, so a run resumes);
    ``quiet``: no progress bar; ``notify``: gets each note and warning line (default: stderr).

    Raises :class:`GenerateError` (or the file readers' ``ValueError``) on bad input, before anything
    is drawn; see :func:`draw_files` for Ctrl-C.
    """
    given = dict(locals())
    options = GenerateOptions(**{f.name: given[f.name] for f in dataclasses.fields(GenerateOptions)})
    import torch

    threads_before = torch.get_num_threads()
    try:
        return draw_files(prepare_generation(options), notify)
    finally:
        torch.set_num_threads(threads_before)  # the caller keeps its setting
