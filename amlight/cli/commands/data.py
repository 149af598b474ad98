"""``python -m amlight data check NAME_OR_DIR``: find every broken file before training does.

Exit status: 0 when the data is fine, 1 when something would break training, 2 for usage errors
and unknown datasets.
"""
from __future__ import annotations

import argparse
import os
import sys

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m amlight data", description="Inspect datasets.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="read every image/label pair and report all problems",
        description="Read every image/label pair of a dataset and report all problems at once (unpaired, "
        "unreadable or mis-sized files, colours outside the palette, out-of-range label values) "
        "plus which classes occur. Exit status 0: ok, 1: problems found, 2: usage error.",
    )
    check.add_argument("dataset", metavar="NAME_OR_DIR",
                       help="registered dataset name (cityscapes, cityscapes_coarse, bdd100k, ade20k, ...) or a "
                       "folder with classes.yaml")
    check.add_argument("--root", metavar="DIR", help="where a named dataset lives")
    check.add_argument("--split", metavar="S", help="check only this split (default: every split found)")
    check.add_argument("--max-files", metavar="N", type=_positive_int,
                       help="read at most N pairs per split (quick look at a large dataset)")
    check.add_argument("--batch-size", metavar="N", type=_positive_int, default=8,
                       help="your config's data batch_size, for the 'For fit' lines: batches per epoch, "
                       "or whether fit would get no batch at all (default: %(default)s, the DataModule's)")
    check.add_argument("--val-pairing", choices=("listed", "self", "random"), default="listed",
                       help="your config's data val_pairing, for the 'validation pairing' line (default: %(default)s)")
    check.add_argument("--val-pairs-file", metavar="FILE",
                       help="your config's data val_pairs_file (default: <root>/val/pairs.json when it exists)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse exits on --help (0) and usage errors (2); callers want a code
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    # Imported here so `--help` and usage errors do not pay for numpy and PIL.
    from amlight.data.check import check_dataset, format_report
    from amlight.data.io import DataFileError
    from amlight.data.registry import UnknownDatasetError

    try:
        report = check_dataset(args.dataset, root=args.root, split=args.split, max_files=args.max_files,
                               batch_size=args.batch_size, val_pairing=args.val_pairing,
                               val_pairs_file=args.val_pairs_file)
    except UnknownDatasetError as exc:
        print(f"{parser.prog} check: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        if isinstance(exc, DataFileError):  # check_dataset reports these, but stay safe
            print(f"{parser.prog} check: {exc}", file=sys.stderr)
            return EXIT_PROBLEMS
        print(f"{parser.prog} check: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _print_report(format_report(report))
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _print_report(text: str) -> None:
    """Print the report; a reader that stops early (``data check DIR | head -1``) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python flushes stdout again at exit and would print a traceback there: send what is left
        # to /dev/null instead. The exit status stays the check's.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
