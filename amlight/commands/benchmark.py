"""``python -m amlight benchmark train``: step time of stage 2 against stage 1, and the adapter's memory.

Prints a table and writes the full record (every step's time, the machine's load) as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from amlight.commands import parse_or_exit_code

DEFAULT_OUT = "runs/benchmarks/train.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m amlight benchmark", description="Speed and memory benchmarks.")
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    train = sub.add_parser(
        "train",
        help="training step time (stage 2 over stage 1) and one adapter layer's peak memory at SD 1.5 size",
        description="Part 1: median time of a full optimizer step of the quickstart stages on CPU "
        "(stage 1 structure_only, stage 1 augmented, stage 2 adapter on a fresh stage-1 checkpoint), "
        "random batches, and the ratio stage 2 / stage 1 (goal <= 1.6). Part 2: peak memory of one "
        "64x64 SD 1.5 self-attention layer with the adapter (forward + backward, CPU, fp32) against "
        "holding the full logits of all 16 SD 1.5 self-attention layers.",
    )
    train.add_argument("--steps", type=_positive, default=20, help="timed steps per stage (default: %(default)s)")
    train.add_argument("--warmup", type=_non_negative, default=3,
                       help="untimed steps per stage first (default: %(default)s)")
    train.add_argument("--out", metavar="FILE.json", default=DEFAULT_OUT, help="JSON record (default: %(default)s)")
    train.add_argument("--skip-memory", action="store_true",
                       help="skip part 2 (a minute or more on CPU, and several GiB of memory)")
    train.add_argument("--threads", type=_positive, default=None,
                       help="torch threads (default: one per core that other processes leave idle, sampled for 1 s)")
    # The test suite's shrunken model: seconds instead of minutes; numbers not comparable.
    train.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    return parser


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


_positive, _non_negative = _int_at_least(1), _int_at_least(0)


def write_json_atomic(path: Path, data: dict) -> None:
    from amlight.atomic_write import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_or_exit_code(parser, argv)
    if isinstance(args, int):
        return args
    if args.benchmark is None:
        parser.print_help(sys.stderr)
        return 2

    from amlight.benchmarks.train_speed import format_table, train_benchmark

    def progress(message: str) -> None:
        print(f"[benchmark train] {message}", file=sys.stderr, flush=True)

    result = train_benchmark(steps=args.steps, warmup=args.warmup, tiny=args.tiny,
                             skip_memory=args.skip_memory, threads=args.threads, progress=progress)
    out = Path(args.out)
    write_json_atomic(out, result)
    print(format_table(result))
    print(f"\nwrote {out}")
    return 0
