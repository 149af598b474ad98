"""The project's own subcommands (synth, data, ...), each a module with main(argv)."""
from __future__ import annotations

import argparse
import sys


def parse_or_exit_code(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """Parsed arguments, or the exit code argparse wanted (0 for --help, 2 for a usage error):
    argparse calls sys.exit, and callers of main(argv) want a code instead."""
    try:
        return parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2


def int_at_least(low: int):
    """An argparse type: an integer >= ``low``, with a message that says what was wrong."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def auto_or_int_at_least(low: int):
    """An argparse type: ``auto`` or an integer >= ``low``."""
    def parse(text: str):
        if text == "auto":
            return text
        try:
            return int_at_least(low)(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected auto or an integer >= {low}, got {text!r}") from None

    return parse


def non_negative_float(text: str) -> float:
    """An argparse type: a number >= 0 (NaN refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


# --- the model of an inference command: --pipeline DIR, or --stage1 CKPT [--adapter FILE] [--base DIR] ---


def stage1_path(stage1: str | None, adapter: str | None) -> str:
    """See :func:`amlight.pipeline.model_options.stage1_path` (imported on call: ``--help`` loads no torch)."""
    from amlight.pipeline.model_options import stage1_path as resolve

    return resolve(stage1, adapter)


def open_pipeline(stage1: str | None, adapter: str | None, pipeline: str | None, base: str | None = None,
                  device=None, dtype=None):
    """See :func:`amlight.pipeline.model_options.open_pipeline` (imported on call)."""
    from amlight.pipeline.model_options import open_pipeline as open_

    return open_(stage1, adapter, pipeline, base, device=device, dtype=dtype)
