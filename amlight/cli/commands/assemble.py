"""``python -m amlight assemble``: a pipeline folder from public parts (SD 1.5 + a segmentation ControlNet).

    python -m amlight assemble --base stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --controlnet lllyasviel/control_v11p_sd15_seg --data cityscapes --out models/sd15-cityscapes-controlnet

Light at import time (argparse only): ``--help`` loads no torch. The work is
:func:`amlight.cli.commands.assemble_parts.assemble_pipeline`.
"""
from __future__ import annotations

import argparse
import sys

from amlight.cli.commands import parse_or_exit_code

PROG = "amlight assemble"
DTYPES = ("float32", "float16", "bfloat16")  # = amlight.cli.commands.assemble_parts.DTYPES (not imported: no torch here)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m amlight assemble",
        description="Write a pipeline folder from public weights, with no training: a Stable Diffusion 1.5 base, a "
        "segmentation ControlNet as its structure guidance (the label map drawn in the ControlNet's ADE20K colours) "
        "and a dataset's classes. It draws at once in modes structure_only (the ControlNet baseline), augmented "
        "and hard_mask (generate --pipeline DIR), and stage 2 trains an AM-Adapter on it "
        "(configs/sd15/<dataset>/stage2_controlnet.yaml).",
        epilog="example:\n  python -m amlight assemble --base stable-diffusion-v1-5/stable-diffusion-v1-5 \\\n"
        "      --controlnet lllyasviel/control_v11p_sd15_seg --data cityscapes --out models/sd15-cityscapes-controlnet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--base", required=True, metavar="SD15_DIR_OR_ID",
                        help="Stable Diffusion 1.5 folder (unet, vae, text_encoder, tokenizer, scheduler) or hub id")
    parser.add_argument("--controlnet", required=True, metavar="CN_DIR_OR_ID",
                        help="a diffusers ControlNetModel folder or hub id reading 3-channel colour maps")
    parser.add_argument("--data", required=True, metavar="NAME_OR_DIR",
                        help="dataset whose classes the folder uses: a registered name with a shipped colour map "
                        "(cityscapes, bdd100k, ade20k) or a folder whose classes.yaml has controlnet_colors:")
    parser.add_argument("--out", required=True, metavar="DIR", help="the pipeline folder to write")
    parser.add_argument("--conditioning-scale", type=float, default=1.0, metavar="S",
                        help="weight of the ControlNet's residuals (default: %(default)s)")
    parser.add_argument("--prompt", default="a photo of a driving scene",
                        help="the fixed prompt, encoded into the folder (default: %(default)r)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="weights' precision in the folder (default: %(default)s; float16 halves the size)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out when it holds a pipeline folder already (default: refuse)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_or_exit_code(build_parser(), argv)
    if isinstance(args, int):
        return args
    from amlight.cli.commands.assemble_parts import assemble_pipeline

    try:
        out = assemble_pipeline(args.base, args.controlnet, args.data, args.out,
                                conditioning_scale=args.conditioning_scale, prompt=args.prompt, dtype=args.dtype,
                                overwrite=args.overwrite,
                                progress=lambda m: print(f"[assemble] {m}", file=sys.stderr, flush=True))
    except (ValueError, OSError, KeyError) as e:  # bad input (AssembleError, DataFileError, ...): one line
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        message = " ".join(str(text).split()) or type(e).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    print(f"draw with: python -m amlight generate --pipeline {out} --mode augmented ...   train an adapter: "
          f"--model.init_args.stage1_checkpoint {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
