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
