"""``python -m amlight backbone make-sd15-standin --out DIR [--controlnet]``: SD 1.5's architecture (and
its segmentation ControlNet's) with random weights.

Light at import time (argparse only): torch, diffusers and transformers load after parsing.
"""
from __future__ import annotations

import argparse
import sys

from amlight.cli.commands import int_at_least, parse_or_exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m amlight backbone", description="Backbone folders.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    make = sub.add_parser(
        "make-sd15-standin",
        help="write a diffusers folder with SD 1.5's exact architecture and random weights (no download)",
        description="Writes DIR/{unet,vae,text_encoder,tokenizer,scheduler}/ and model_index.json with "
        "Stable Diffusion 1.5's configs (UNet 860 M, VAE, CLIP text encoder 123 M, an offline byte-level "
        "tokenizer, its scheduler) and random weights, as safetensors (3.9 GiB). Load it with "
        "--model.init_args.backbone_path DIR. A complete folder with the same seed is left alone. "
        "About 40 s and 4.5 GiB of memory on 2 CPU cores. The images it makes are noise: it is for "
        "checking shapes, memory and speed at SD 1.5's size.",
    )
    make.add_argument("--out", metavar="DIR", required=True, help="folder to write")
    make.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the random weights (default: 0)")
    make.add_argument("--force", action="store_true", help="rewrite even a complete folder")
    make.add_argument("--controlnet", action="store_true",
                      help="also write DIR/controlnet/: a ControlNetModel with the architecture of the SD 1.5 "
                      "segmentation ControlNet (lllyasviel/control_v11p_sd15_seg: 361 M parameters, 3-channel "
                      "colour maps) and random weights, for `amlight assemble --controlnet DIR/controlnet`")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_or_exit_code(parser, argv)
    if isinstance(args, int):
        return args
    if args.action is None:
        parser.print_help(sys.stderr)
        return 2
    from amlight.backbone.sd15_standin import StandinError, write_sd15_standin

    try:
        out = write_sd15_standin(args.out, seed=args.seed, force=args.force, controlnet=args.controlnet,
                                 progress=lambda m: print(f"[sd15-standin] {m}", file=sys.stderr, flush=True))
    except (StandinError, OSError) as e:
        print(f"amlight backbone make-sd15-standin: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0
