"""``python -m amlight generate``: draw target label maps in the appearance of exemplars.

Inputs, one of::

    --exemplar IMG [IMG ...] --exemplar-labels LBL [...] --target-labels LBL [...]   every exemplar x target
    --pairs pairs.json                                                               listed pairs
    --target-labels LBL [...] --retrieve NAME_OR_DIR [--top-k K]                     retrieved exemplars

Applications (docs/method.md#part-9-applications): ``--link EX_MASK:TGT_MASK`` (one-to-one mapping: this exemplar region
lends its appearance to that target region; a side may be ``INSTANCE_PNG#ID``), ``--paint
CLASS@x0,y0,x1,y1`` (segmentation editing: paint a box of the target labels with a class; without
--target-labels the target is each exemplar's own label map), ``--target-images`` (translation: the
images the target layouts come from, shown in the triplets).

Each exemplar is inverted and its banks built once for all its targets; outputs that exist are
skipped (a run resumes), every file is written atomically, and ``OUT/summary.json`` records what
was drawn. Bad input (a missing or mis-sized file, colours outside the palette, an adapter of another
architecture, an unwritable --out) stops the command before anything is drawn, with one line
``amlight generate: error: ...`` and exit status 1.

The same in Python (see :mod:`amlight.apps.inputs` and :mod:`amlight.apps.outputs`)::

    from amlight.cli.commands.generate import generate_files

    status = generate_files("runs/quickstart/stage1/checkpoints/last.ckpt", "runs/gen",
                            adapter="runs/quickstart/stage2/checkpoints/last.ckpt",
                            pairs="data/synthetic/val/pairs.json", triplets=True)   # 0: ok

or ``main(["--stage1", ..., "--out", ...])`` with the command-line arguments.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from amlight.cli.commands import parse_or_exit_code, int_at_least, auto_or_int_at_least, non_negative_float

PROG = "amlight generate"
# amlight.modules.attention_modes.ATTENTION_MODES, alphabetical (adapter first): the parser cannot import
# it, as the package amlight.modules loads torch and `--help` must not (tests/test_startup.py); a test
# in tests/test_generate_cli.py keeps the two equal.
MODES = ("adapter", "augmented", "hard_mask", "structure_only")
# amlight.pipeline.schedulers.SCHEDULERS' names, for the same reason (tests/test_schedulers.py keeps them equal).
SCHEDULER_NAMES = ("ddim", "dpm++", "euler", "unipc")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130
AUTO_BATCH_CAP = 8


class GenerateError(ValueError):
    """Bad input, reported as one line and exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m amlight generate",
        description="Draw target label maps in the appearance of exemplar images (AM-Adapter inference).",
        epilog="examples:\n"
        "  python -m amlight generate --pipeline models/quickstart --exemplar a.png --exemplar-labels a_lbl.png "
        "--target-labels b_lbl.png --out runs/gen    (an exported pipeline folder: no --data)\n"
        "  python -m amlight generate --stage1 S1.ckpt --adapter S2.ckpt --pairs data/synthetic/val/pairs.json "
        "--out runs/gen --triplets\n"
        "  python -m amlight generate --stage1 S1.ckpt --adapter S2.ckpt --exemplar a.png --exemplar-labels "
        "a_lbl.png --target-labels b_lbl.png c_lbl.png --out runs/gen\n"
        "  python -m amlight generate --stage1 S1.ckpt --mode augmented --exemplar a.png --exemplar-labels a_lbl.png "
        "--paint car@4,20,12,28 --out runs/edit    (segmentation editing)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--pipeline", metavar="DIR",
                       help="a pipeline folder from `python -m amlight export` (the whole model and its label space: "
                       "no --stage1, --adapter or --data needed)")
    model.add_argument("--stage1", metavar="CKPT", help="stage-1 (GenerationStage) checkpoint (default with --adapter: "
                       "the one the adapter was trained on, found next to it or by hash)")
    model.add_argument("--adapter", metavar="FILE",
                       help="the AM-Adapter: a .safetensors from export-adapter or a stage-2 .ckpt")
    model.add_argument("--base", metavar="DIR",
                       help="the SD 1.5 folder, when the backbone_path stored in the stage-1 checkpoint does not "
                       "exist here (another machine)")
    model.add_argument("--data", metavar="NAME_OR_DIR",
                       help="dataset whose palette decodes the label files: a registered name or a folder with "
                       "classes.yaml (default: the dataset of the stage-1 run's config.yaml)")
    inputs = parser.add_argument_group("inputs (one of: --exemplar ... --target-labels / --pairs / --retrieve)")
    inputs.add_argument("--exemplar", nargs="+", metavar="IMG", help="exemplar images")
    inputs.add_argument("--exemplar-labels", nargs="+", metavar="LBL", help="their label maps, in the same order")
    inputs.add_argument("--target-labels", nargs="+", metavar="LBL", help="target label maps to draw")
    inputs.add_argument("--target-images", nargs="+", metavar="IMG",
                        help="the images the target label maps come from (translation); shown in triplets")
    inputs.add_argument("--pairs", metavar="JSON", help="pairs file: {pairs: [{exemplar, exemplar_labels, "
                        "target_labels, ground_truth?}]}, paths relative to the file")
    inputs.add_argument("--retrieve", metavar="NAME_OR_DIR", help="pick each target's exemplars from this dataset")
    inputs.add_argument("--retrieve-split", default="val", metavar="SPLIT", help="its split (default: %(default)s)")
    inputs.add_argument("--top-k", type=int_at_least(1), default=1, metavar="K",
                        help="exemplars per target with --retrieve (default: %(default)s)")
    apps = parser.add_argument_group("applications")
    apps.add_argument("--link", action="append", default=[], metavar="EX_MASK:TGT_MASK",
                      help="one-to-one mapping: the exemplar region lends its appearance to the target region "
                      "(mask PNGs, non-zero = region; or INSTANCE_PNG#ID); repeatable; modes hard_mask/adapter")
    apps.add_argument("--paint", action="append", default=[], metavar="CLASS@x0,y0,x1,y1",
                      help="edit the target labels: set the box (label-file pixels, x1/y1 exclusive) to CLASS "
                      "(name or index); repeatable. Without --target-labels the target is the exemplar's own labels")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--mode", choices=MODES, default="adapter",
                          help="attention mode (default: %(default)s; the others are the ablations)")
    sampling.add_argument("--steps", type=int_at_least(1), default=20,
                          help="sampling steps, and the exemplar inversion's (default: %(default)s)")
    sampling.add_argument("--scheduler", type=str.lower, choices=SCHEDULER_NAMES, default="ddim",
                          help="sampler; the exemplars are inverted along its timesteps (default: %(default)s)")
    sampling.add_argument("--guidance-scale", type=non_negative_float, default=3.0,
                          help="classifier-free guidance (default: %(default)s)")
    sampling.add_argument("--seed", type=int, default=0, help="noise seed of every target (default: %(default)s)")
    sampling.add_argument("--strength", type=non_negative_float, default=1.0,
                          help="appearance strength: weight of the exemplar in attention (default: %(default)s)")
    sampling.add_argument("--controlnet-scale", type=non_negative_float, metavar="X",
                          help="weight of the ControlNet's residuals, exemplar inversion included (models whose "
                          "structure guidance is a ControlNet; default: the model's own)")
    sampling.add_argument("--size", type=int_at_least(1), nargs=2, metavar=("H", "W"),
                          help="image size (default: the model's native resolution); inputs are resized "
                          "(images bilinear, labels nearest)")
    sampling.add_argument("--batch-size", type=auto_or_int_at_least(1), default="auto", metavar="N|auto",
                          help="targets per UNet call, or auto: as many as the GPU's free memory holds, at most "
                          f"{AUTO_BATCH_CAP} ({AUTO_BATCH_CAP} on a CPU) (default: %(default)s)")
    sampling.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    sampling.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="(default: %(default)s)")
    sampling.add_argument("--threads", type=int_at_least(1),
                          help="CPU threads for torch (default on a CPU: the previous run's in --out, else one per "
                          "core that other processes leave idle: a busy core makes every extra thread wait)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR", help="output folder")
    out.add_argument("--triplets", action="store_true",
                     help="also write OUT/triplets/: exemplar | target labels | result [| target image]")
    out.add_argument("--overwrite", action="store_true", help="redraw outputs that already exist (default: skip)")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


# --- checks that need no file ---------------------------------------------------------------------


def attention_settings(args: argparse.Namespace):
    """The one :class:`~amlight.modules.attention_modes.AttentionSettings` of the run, from --mode/--strength."""
    from amlight.modules.attention_modes import AttentionSettings

    return AttentionSettings(args.mode, appearance_strength=args.strength)


def check_arguments(args: argparse.Namespace, attention) -> str:
    """Which input form the arguments use ('exemplars', 'pairs', 'retrieve'); GenerateError if inconsistent."""
    given = [name for name, value in (("--exemplar", args.exemplar), ("--pairs", args.pairs),
                                      ("--retrieve", args.retrieve)) if value]
    if len(given) > 1:
        raise GenerateError(f"{' and '.join(given)} are alternatives: give one of them")
    if not given:
        raise GenerateError("no inputs: give --exemplar IMG --exemplar-labels LBL --target-labels LBL, "
                            "or --pairs pairs.json, or --target-labels LBL --retrieve DATASET")
    if args.exemplar_labels and not args.exemplar:
        raise GenerateError("--exemplar-labels needs --exemplar (the images they belong to)")
    from amlight.cli.commands import model_arguments_problem

    problem = model_arguments_problem(args.stage1, args.adapter, args.pipeline, args.base)
    if problem:
        raise GenerateError(problem)
    if attention.uses_adapter and not args.adapter and not args.pipeline:
        raise GenerateError("--mode adapter needs --adapter (a stage-2 checkpoint or exported adapter); "
                            "without one use --mode augmented (augmented self-attention, no adapter)")
    if args.target_images and not args.target_labels:
        raise GenerateError("--target-images needs --target-labels (one label map per image)")
    if args.target_images and len(args.target_images) != len(args.target_labels):
        raise GenerateError(f"{len(args.target_images)} --target-images for {len(args.target_labels)} "
                            "--target-labels: give one image per label map, in the same order")
    kind = {"--exemplar": "exemplars", "--pairs": "pairs", "--retrieve": "retrieve"}[given[0]]
    if kind == "exemplars":
        if not args.exemplar_labels:
            raise GenerateError("--exemplar needs --exemplar-labels (one label map per exemplar image)")
        if len(args.exemplar) != len(args.exemplar_labels):
            raise GenerateError(f"{len(args.exemplar)} --exemplar image(s) but {len(args.exemplar_labels)} "
                                "--exemplar-labels: give one label map per image, in the same order")
        if not args.target_labels and not args.paint:
            raise GenerateError("nothing to draw: give --target-labels, or --paint to edit the exemplars' own labels")
    if kind == "pairs" and args.target_labels:
        raise GenerateError("--pairs lists its targets: drop --target-labels")
    if kind == "retrieve":
        if not args.target_labels:
            raise GenerateError("--retrieve needs --target-labels (the label maps to find exemplars for)")
        if args.link:
            raise GenerateError("--link needs known exemplars: use --exemplar, not --retrieve")
    if args.link and not attention.needs_labels:
        raise GenerateError(f"--link works through the categorical cost, which --mode {args.mode} does not use: "
                            "pick --mode adapter or hard_mask")
    if args.top_k != 1 and kind != "retrieve":
        raise GenerateError("--top-k only applies with --retrieve")
    return kind


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Plan:
    pipe: object
    space: object
    jobs: list
    writer: object
    attention: object  # AttentionSettings
    settings: dict
    created_out: list
    notes: list


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


def _set_threads(args, device: str) -> None:
    import torch

    threads = args.threads
    if threads is None and device == "cpu":  # a resumed run computes as the first did: same bytes
        from amlight.apps.outputs import ResultWriter

        threads = ((ResultWriter(args.out).previous_summary() or {}).get("settings") or {}).get("threads")
        threads = threads if isinstance(threads, int) and threads > 0 else None
    if threads is None and device == "cpu":
        try:
            from amlight.utils.cpu_threads import default_threads

            threads = default_threads()[0]
        except ImportError:  # pragma: no cover
            threads = None
    if threads:
        torch.set_num_threads(threads)
    args.threads = torch.get_num_threads()


def _load_pipeline(args, notes: list):
    from amlight.cli.commands import open_pipeline, stage1_path

    if not args.pipeline:
        args.stage1 = stage1_path(args.stage1, args.adapter)  # --adapter alone: the stage 1 it names
    device, dtype = _resolve_device(args.device, args.dtype)
    _set_threads(args, device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = open_pipeline(args.stage1, args.adapter, args.pipeline, args.base, device=device, dtype=dtype)
    for w in caught:  # amlight's own (an adapter trained on another stage 1) as one line; others as usual
        if "amlight" in Path(w.filename).parts:
            notes.append(f"warning: {w.message}")
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return pipe


def _label_space(args, retrieve_source, pipe):
    from amlight.apps.inputs import LabelSpace, label_space_from_run

    if args.data:
        return LabelSpace.resolve(args.data)
    if retrieve_source is not None:
        return LabelSpace.from_source(retrieve_source, origin=args.retrieve)
    if args.pipeline:
        if pipe.label_space is None:
            raise GenerateError(f"--pipeline {args.pipeline} carries no label space: pass --data NAME_OR_DIR")
        return LabelSpace.from_pipeline(pipe.label_space, origin=args.pipeline)
    if (Path(args.stage1) / "model_index.json").is_file():  # the folder a stage 2 was trained on
        from amlight.pipeline.label_space import PipelineLabelSpace

        return LabelSpace.from_pipeline(PipelineLabelSpace.from_pretrained(args.stage1, subfolder="label_space"),
                                        origin=args.stage1)
    return label_space_from_run(args.stage1)


def _size(args, pipe) -> tuple[int, int]:
    size = tuple(args.size) if args.size else tuple(pipe.resolution)
    f = pipe.backbone.latent_downsample
    levels = len(getattr(pipe.model.unet.config, "block_out_channels", (0,)))
    step = f * 2 ** max(levels - 1, 0)
    if size[0] % step or size[1] % step:
        raise GenerateError(f"--size {size[0]} {size[1]}: height and width must be multiples of {step} for this "
                            f"model (native size {pipe.resolution[0]}x{pipe.resolution[1]})")
    return size  # type: ignore[return-value]


def prepare(args: argparse.Namespace, kind: str, attention) -> Plan:
    """Everything that can fail on bad input, in order of cost; nothing is drawn or written yet."""
    from amlight.apps import inputs as I
    from amlight.apps.outputs import ResultWriter, prepare_out_dir, remove_if_empty

    links = [I.parse_link(spec) for spec in args.link]
    created = prepare_out_dir(args.out)
    try:
        notes: list[str] = []
        pipe = _load_pipeline(args, notes)
        from amlight.pipeline.schedulers import scheduler_by_name

        # --scheduler on the model's own noise schedule (its config); each call starts from a fresh copy.
        pipe.scheduler = scheduler_by_name(args.scheduler, pipe.scheduler.config)
        retrieve_source = None
        if kind == "retrieve":
            from amlight.data.registry import build_dataset

            retrieve_source = build_dataset(args.retrieve, split=args.retrieve_split)
        if args.controlnet_scale is not None and not pipe.is_controlnet:
            raise GenerateError(f"--controlnet-scale: the model {args.pipeline or args.stage1} has no ControlNet (its "
                                f"structure guidance is {type(pipe.model.guidance).__name__}): drop --controlnet-scale")
        if attention.uses_adapter and pipe.adapter is None:
            raise GenerateError(f"--mode adapter needs an adapter, and --pipeline {args.pipeline} has none (exported "
                                "without --adapter): use --mode augmented, or export the folder with --adapter")
        space = _label_space(args, retrieve_source, pipe)
        if space.num_classes != pipe.num_classes:
            raise GenerateError(
                f"the label files' dataset {space.origin or space.metadata.name!r} has {space.num_classes} classes "
                f"but the stage-1 model {args.pipeline or args.stage1} was trained on {pipe.num_classes}: pass --data "
                "with the "
                "dataset the model was trained on"
            )
        paints = [I.parse_paint(spec, space) for spec in args.paint]
        size = _size(args, pipe)
        if args.batch_size == "auto":
            args.batch_size, note = pipe.auto_batch_size(size, args.steps, [attention], AUTO_BATCH_CAP)
            if note:
                notes.append(note)
        cache = I.InputCache(space, size)
        if kind == "pairs":
            jobs = I.pairs_from_file(args.pairs, cache, paints=paints, links=links, attention=attention)
        elif kind == "exemplars":
            jobs = I.all_pairs(args.exemplar, args.exemplar_labels, args.target_labels or [], cache,
                               target_images=args.target_images, paints=paints, links=links, attention=attention)
        else:
            try:
                from amlight.apps.retrieval import LabelIndex
            except ImportError as e:  # pragma: no cover - depends on the installation
                raise GenerateError(f"--retrieve is not available: {e}") from None
            if retrieve_source.metadata.num_classes != space.num_classes:
                raise GenerateError(f"--retrieve {args.retrieve} has {retrieve_source.metadata.num_classes} classes, "
                                    f"the label files' dataset {space.num_classes}")
            index = LabelIndex.from_source(retrieve_source, progress=not args.quiet)
            jobs = I.retrieved_pairs(args.target_labels, index, cache, args.top_k, target_images=args.target_images,
                                     paints=paints, attention=attention)
        I.check_jobs(jobs)
        notes += cache.aspect_warnings
    except BaseException:
        remove_if_empty(created)
        raise
    settings = {
        **({"pipeline": str(Path(args.pipeline).resolve())} if args.pipeline else
           {"stage1": str(Path(args.stage1).resolve()),
            "adapter": str(Path(args.adapter).resolve()) if args.adapter and attention.uses_adapter else None}),
        "mode": attention.mode, "steps": args.steps, "scheduler": args.scheduler,
        "guidance_scale": args.guidance_scale, "seed": args.seed,
        "appearance_strength": attention.appearance_strength, "size": list(size), "dtype": args.dtype,
        "threads": args.threads,
        # The scale drawn with (given or the model's own); absent for models without a ControlNet.
        **({"controlnet_scale": pipe.model.controlnet_scale(args.controlnet_scale)} if pipe.is_controlnet else {}),
        "paint": [p.describe(space) for p in paints], "link": [str(link) for link in links],
    }
    writer = ResultWriter(args.out, overwrite=args.overwrite, triplets=args.triplets, metadata=space.metadata)
    return Plan(pipe, space, jobs, writer, attention, settings, created, notes)


def _changed_settings(previous: dict | None, settings: dict) -> list[str]:
    if not previous or not isinstance(previous.get("settings"), dict):
        return []
    old = previous["settings"]
    return [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items()
            if k in old and old.get(k) != v and k != "threads"]


def execute(plan: Plan, args: argparse.Namespace) -> int:
    from amlight.apps.outputs import generate_pairs
    from amlight.pipeline.finite import NonFiniteOutputError

    err = sys.stderr
    for note in plan.notes:
        print(f"{PROG}: {note}", file=err)
    changed = _changed_settings(plan.writer.previous_summary(), plan.settings)
    existing = [job for job in plan.jobs if plan.writer.has_result(job.name)]
    if changed and existing:
        print(f"{PROG}: warning: {len(existing)} output(s) in {args.out} were drawn with other settings "
              f"({'; '.join(changed)}); they are kept: pass --overwrite to redraw them", file=err)
    arguments = {k: v for k, v in vars(args).items()}
    start = time.perf_counter()
    try:
        report = generate_pairs(
            plan.pipe, plan.jobs, plan.writer, attention=plan.attention, steps=args.steps,
            guidance_scale=args.guidance_scale, seed=args.seed, batch_size=args.batch_size, progress=not args.quiet,
            class_name=plan.space.class_name, controlnet_scale=args.controlnet_scale,
        )
    except KeyboardInterrupt as exc:
        report = getattr(exc, "report", None)
        if report is not None:
            plan.writer.write_summary(arguments, report, plan.settings)
            print(f"\n{PROG}: interrupted after {len(report.written)} new output(s); every file written is "
                  "complete: run the same command again to resume", file=err)
        return EXIT_INTERRUPTED
    except NonFiniteOutputError as e:  # what was written before stays; nothing is written from NaN
        print(f"{PROG}: error: {e}", file=err)
        return EXIT_ERROR
    summary = plan.writer.write_summary(arguments, report, plan.settings)
    grid = plan.writer.write_grid()
    total = time.perf_counter() - start
    parts = [f"{len(report.written)} written", f"{len(report.skipped)} skipped (already there"
             + ("; --overwrite redraws them)" if report.skipped else ")"), f"{len(report.warnings)} warning(s)"]
    print(f"{len(plan.jobs)} output(s) in {args.out}: {', '.join(parts)}")
    if report.written:
        print(f"time: {total:.1f} s ({total / len(report.written):.2f} s per drawn pair, "
              f"{report.unet_calls} UNet calls)")
    print(f"summary: {summary}" + (f"   grid: {grid}" if grid else ""))
    return EXIT_OK


def _known_errors() -> tuple[type[BaseException], ...]:
    from amlight.data.io import DataFileError
    from amlight.data.pairing import PairsFileError
    from amlight.data.registry import UnknownDatasetError
    from amlight.apps.inputs import InputError
    from amlight.apps.outputs import OutputError
    from amlight.checkpoints.files import CheckpointError

    errors = [GenerateError, DataFileError, PairsFileError, UnknownDatasetError, InputError, OutputError,
              CheckpointError]
    try:
        from amlight.apps.retrieval import IndexFileError

        errors.append(IndexFileError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_or_exit_code(parser, argv)
    if isinstance(args, int):
        return args
    import torch

    threads = torch.get_num_threads()
    try:
        return _main(args)
    finally:
        torch.set_num_threads(threads)  # callers in the same process keep their setting


def _main(args: argparse.Namespace) -> int:
    try:
        attention = attention_settings(args)
        kind = check_arguments(args, attention)
        plan = prepare(args, kind, attention)
    except GenerateError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, KeyError, OSError) as e:
        # Bad input found while reading files or checkpoints: one line, never a traceback. Anything
        # else (a bug) keeps its traceback.
        if not isinstance(e, _known_errors()) and not isinstance(e, ValueError):
            raise
        message = str(e).strip() or type(e).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    return execute(plan, args)


def generate_files(stage1: str, out: str, **options) -> int:
    """:func:`main` with keyword arguments: ``generate_files(stage1, out, adapter=..., pairs=..., triplets=True)``.

    Keys are the long options with ``_`` for ``-`` (``exemplar_labels=[...]``, ``guidance_scale=2.0``);
    list options take lists, flags take True.
    """
    argv = ["--stage1", str(stage1), "--out", str(out)]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            if key in ("link", "paint"):
                for v in value:
                    argv += [flag, str(v)]
            else:
                argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return main(argv)


if __name__ == "__main__":
    sys.exit(main())
