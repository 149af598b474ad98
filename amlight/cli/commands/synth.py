"""``python -m amlight synth --out DIR``: render the synthetic driving scenes, the offline default data.

Leaves a complete folder generated with the same parameters alone (so it is safe in scripts), refuses
one generated with other parameters unless ``--force``.
"""
from __future__ import annotations

import argparse
import sys

from amlight.cli.commands import parse_or_exit_code


def build_parser() -> argparse.ArgumentParser:
    from amlight.data.synthetic import DEFAULT_PARAMS

    parser = argparse.ArgumentParser(
        prog="python -m amlight synth",
        description="Render synthetic driving-like scenes (random per-scene class appearances) into DIR: "
        "train/ images and labels, val/ pairs of one appearance on two layouts with val/pairs.json, "
        "classes.yaml and manifest.json. Same arguments, byte-identical files.",
    )
    parser.add_argument("--out", metavar="DIR", required=True, help="dataset folder to create")
    parser.add_argument("--seed", type=int, default=DEFAULT_PARAMS["seed"], help="random seed (default: %(default)s)")
    parser.add_argument("--num-train", type=_non_negative, default=DEFAULT_PARAMS["num_train"], metavar="N",
                        help="training scenes (default: %(default)s)")
    parser.add_argument("--num-val-groups", type=_non_negative, default=DEFAULT_PARAMS["num_val_groups"], metavar="N",
                        help="validation groups, each one appearance on two layouts (default: %(default)s)")
    parser.add_argument("--height", type=int, default=DEFAULT_PARAMS["height"], help="image height (default: %(default)s)")
    parser.add_argument("--width", type=int, default=DEFAULT_PARAMS["width"], help="image width (default: %(default)s)")
    parser.add_argument("--appearance-spread", type=_non_negative, default=DEFAULT_PARAMS["appearance_spread"],
                        metavar="S", help="std of each class's per-scene colour around its class colour, 0-255 "
                        "units; >= 256 draws colours uniformly (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="regenerate even if DIR already holds a dataset")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_or_exit_code(parser, argv)
    if isinstance(args, int):
        return args

    from pathlib import Path

    from amlight.data.synthetic import prepare_synthetic_dataset, read_manifest

    root = Path(args.out)
    params = dict(seed=args.seed, num_train=args.num_train, num_val_groups=args.num_val_groups,
                  height=args.height, width=args.width, appearance_spread=args.appearance_spread)
    try:
        summary = prepare_synthetic_dataset(root, progress=not args.no_progress, force=args.force, **params)
    except (ValueError, FileExistsError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1

    if summary is None:
        counts = (read_manifest(root) or {}).get("counts", {})
        print(f"synthetic dataset already present at {root} with these parameters; nothing to do "
              f"({counts.get('train', '?')} train scenes, {counts.get('val_pairs', '?')} val pairs). "
              "--force regenerates it.")
        return 0
    print(
        f"wrote synthetic dataset to {root} in {summary['seconds']:.1f} s: "
        f"{summary['train_images']} train scenes, {summary['val_images']} val images "
        f"({summary['val_pairs']} exemplar/target pairs in {root / 'val' / 'pairs.json'}), "
        f"{summary['num_classes']} classes, {summary['height']}x{summary['width']} px, seed {summary['seed']}"
    )
    return 0
