"""``python -m amlight export-adapter CKPT OUT.safetensors``: the adapter alone, in safetensors."""
from __future__ import annotations

import argparse
import sys

from amlight.cli.commands import parse_or_exit_code

PROG = "python -m amlight export-adapter"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export the adapter of a stage-2 (AdapterStage) checkpoint to a safetensors file.",
    )
    parser.add_argument("checkpoint", help="stage-2 checkpoint (.ckpt)")
    parser.add_argument("out", help="output file (.safetensors)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_or_exit_code(build_parser(), argv)
    if isinstance(args, int):
        return args
    from amlight.checkpoints.adapter_files import export_adapter
    from amlight.checkpoints.files import CheckpointError

    try:
        out = export_adapter(args.checkpoint, args.out)
    except CheckpointError as e:
        print(f"export-adapter: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the output cannot be written: say where and why, not a traceback
        print(f"export-adapter: cannot write {args.out}: {_why_unwritable(args.out, e)}. Choose a writable path",
              file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB)")
    return 0


def _why_unwritable(out: str, error: OSError) -> str:
    from pathlib import Path

    parent = Path(out).absolute().parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{existing} is a file, not a folder"  # mkdir's own "File exists" misleads here
    return error.strerror or str(error)
