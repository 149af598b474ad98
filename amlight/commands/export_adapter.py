"""``python -m amlight export-adapter CKPT OUT.safetensors``: the adapter alone, in safetensors."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m amlight export-adapter",
        description="Export the adapter of a stage-2 (AdapterStage) checkpoint to a safetensors file.",
    )
    parser.add_argument("checkpoint", help="stage-2 checkpoint (.ckpt)")
    parser.add_argument("out", help="output file (.safetensors)")
    args = parser.parse_args(argv)
    from amlight.stages.adapter_io import export_adapter
    from amlight.stages.checkpoints import CheckpointError

    try:
        out = export_adapter(args.checkpoint, args.out)
    except CheckpointError as e:
        print(f"export-adapter: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB)")
    return 0
