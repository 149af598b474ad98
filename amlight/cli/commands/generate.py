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

The same in Python: :func:`amlight.apps.generate_files.generate_files` (typed keyword arguments, a
:class:`~amlight.apps.generate_files.GenerateError` on bad input, the written files back), which this
command calls with its parsed arguments; or ``main(["--stage1", ..., "--out", ...])`` with the
command-line arguments (the exit status back).
"""
from __future__ import annotations

import argparse
import sys

from amlight.apps.generate_files import (
    AUTO_BATCH_CAP,
    DTYPES,
    SCHEDULER_NAMES,
    GenerateError,
    GenerateOptions,
    GenerationPlan,
    draw_files,
    prepare_generation,
)
from amlight.cli.commands import parse_or_exit_code, int_at_least, auto_or_int_at_least, non_negative_float
from amlight.modules.attention_modes import ATTENTION_MODES

PROG = "amlight generate"
# --mode's choices, alphabetical (adapter, the default, first) as --help lists them.
MODES = tuple(sorted(ATTENTION_MODES))
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130

__all__ = ["AUTO_BATCH_CAP", "DTYPES", "GenerateError", "MODES", "SCHEDULER_NAMES", "build_parser", "main"]


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


# --- the run (amlight.apps.generate_files) ----------------------------------------------------------


def execute(plan: GenerationPlan) -> int:
    """Draw and write ``plan``, printing what happened; the exit status."""
    from amlight.pipeline.finite import NonFiniteOutputError

    err = sys.stderr
    out = plan.options.out
    try:
        result = draw_files(plan, notify=lambda message: print(f"{PROG}: {message}", file=err))
    except KeyboardInterrupt as exc:
        report = getattr(exc, "report", None)
        if report is not None:  # draw_files recorded it in summary.json
            print(f"\n{PROG}: interrupted after {len(report.written)} new output(s); every file written is "
                  "complete: run the same command again to resume", file=err)
        return EXIT_INTERRUPTED
    except NonFiniteOutputError as e:  # what was written before stays; nothing is written from NaN
        print(f"{PROG}: error: {e}", file=err)
        return EXIT_ERROR
    report = result.report
    parts = [f"{len(report.written)} written", f"{len(report.skipped)} skipped (already there"
             + ("; --overwrite redraws them)" if report.skipped else ")"), f"{len(report.warnings)} warning(s)"]
    print(f"{result.outputs} output(s) in {out}: {', '.join(parts)}")
    if report.written:
        print(f"time: {result.seconds:.1f} s ({result.seconds / len(report.written):.2f} s per drawn pair, "
              f"{report.unet_calls} UNet calls)")
    print(f"summary: {result.summary}" + (f"   grid: {result.grid}" if result.grid else ""))
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
        plan = prepare_generation(GenerateOptions(**vars(args)))
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
    return execute(plan)


if __name__ == "__main__":
    sys.exit(main())
