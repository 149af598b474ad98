"""``python -m amlight rehearse sd15``: the shipped SD 1.5 configs end to end on the CPU at 512 px.

Stage 1, stage 2, one generated image and an evaluation, on SD 1.5's exact architecture (random
weights, written once by ``backbone make-sd15-standin``) and synthetic scenes in the real dataset's
layout and size. Each phase is a subprocess; its wall time and peak resident memory go into
OUT/rehearsal.{json,md}. Any failure exits non-zero with the failing phase's log tail.
Light at import time: no torch here (the phases import it in their own processes).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from amlight.cli.commands import int_at_least, parse_or_exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m amlight rehearse",
        description="Rehearse a real configuration end to end on the CPU, with stand-in weights and data.",
    )
    sub = parser.add_subparsers(dest="target", metavar="TARGET")
    sd = sub.add_parser(
        "sd15",
        help="configs/sd15/<dataset>/stage{1,2}.yaml, generate and evaluate at 512 px on the CPU",
        description="Runs, each in its own process: the SD 1.5 stand-in writer (skipped when complete), the "
        "dataset layout fixture (skipped when there), `fit` of the shipped stage-1 config, `fit` of the shipped "
        "stage-2 config on stage 1's last.ckpt (both with only CPU overrides: accelerator cpu, 1 device, "
        "precision, steps, batch 1, 0 workers, and the stand-in / fixture paths), `generate` of one image "
        "(adapter mode, CFG) and `evaluate` on the fixture's pairs. Writes OUT/rehearsal.{json,md}: wall "
        "time and peak resident memory per phase. Measured at 512 px on 2 busy CPU cores: 50 minutes with "
        "--eval-modes adapter (all four modes: about 30 more), at most 11.3 GiB in one phase; "
        "`--resolution 256` is a quicker form.",
    )
    sd.add_argument("--dataset", choices=["cityscapes", "bdd100k"], default="cityscapes",
                    help="which shipped configs (configs/sd15/<dataset>/) and fixture layout (default: %(default)s)")
    sd.add_argument("--out", metavar="DIR", default="runs/rehearse-sd15",
                    help="the rehearsal's folder, emptied first if it holds an earlier rehearsal (default: %(default)s)")
    sd.add_argument("--standin", metavar="DIR", default="runs/sd15-standin",
                    help="SD 1.5 stand-in folder, written if incomplete (3.9 GiB; default: %(default)s)")
    sd.add_argument("--fixture", metavar="DIR", default=None,
                    help="dataset fixture folder, written if missing (default: runs/sd15-fixture/<dataset>)")
    sd.add_argument("--resolution", type=int_at_least(64), default=512,
                    help="training and sampling side in pixels, a multiple of 64 (default: %(default)s)")
    sd.add_argument("--steps", type=int_at_least(1), default=1, help="training steps per stage (default: %(default)s)")
    sd.add_argument("--sample-steps", type=int_at_least(1), default=2,
                    help="DDIM steps of validation samples, generate and evaluate (default: %(default)s)")
    sd.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true",
                    help="training precision (default: %(default)s)")
    sd.add_argument("--eval-pairs", type=int_at_least(1), default=2, help="pairs evaluated (default: %(default)s)")
    sd.add_argument("--eval-modes", metavar="LIST", default=None,
                    help="modes evaluated, comma-separated (default: evaluate's: all four)")
    sd.add_argument("--controlnet", action="store_true",
                    help="the public-weights path instead: the stand-in with its segmentation ControlNet "
                    "(make-sd15-standin --controlnet), `assemble` of a pipeline folder from them, `fit` of "
                    "configs/sd15/<dataset>/stage2_controlnet.yaml on that folder and `generate` of one image in "
                    "augmented mode from it (no stage 1, no evaluate)")
    sd.add_argument("--memory-limit-gib", type=float, default=24.0,
                    help="fail when a phase's peak resident memory exceeds this (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_or_exit_code(parser, argv)
    if isinstance(args, int):
        return args
    if args.target is None:
        parser.print_help(sys.stderr)
        return 2
    if args.resolution % 64:
        print(f"amlight rehearse sd15: --resolution {args.resolution} is not a multiple of 64 "
              "(SD 1.5's latent is 1/8 of the image and its UNet halves it three times)", file=sys.stderr)
        return 2
    from amlight.benchmarks.rehearsal import RehearsalError, Settings, format_table, rehearse

    settings = Settings(
        dataset=args.dataset, out=Path(args.out), standin=Path(args.standin),
        fixture=Path(args.fixture) if args.fixture else None, resolution=args.resolution, train_steps=args.steps,
        sample_steps=args.sample_steps, precision=args.precision, eval_pairs=args.eval_pairs,
        eval_modes=args.eval_modes, memory_limit_gib=args.memory_limit_gib, controlnet=args.controlnet,
    )
    try:
        record = rehearse(settings)
    except RehearsalError as e:
        print(f"\namlight rehearse sd15: FAILED: {e}", file=sys.stderr)
        return 1
    print(format_table(record))
    print(f"\nwrote {Path(args.out) / 'rehearsal.md'} and rehearsal.json")
    return 0
