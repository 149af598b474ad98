"""``python -m amlight benchmark train``: step time of stage 2 against stage 1, and the adapter's memory.
``python -m amlight benchmark pipeline``: inference UNet evaluations and seconds per (exemplar, target)
pair, the pipeline against the reference schedule.
``python -m amlight benchmark memory``: peak memory of the pipeline's memory options on one SD 1.5 layer.
``python -m amlight benchmark gpu``: SD 1.5 at 512 px on one CUDA device (generate, training, memory, compile).
``python -m amlight benchmark startup``: start time of ``--help`` commands in fresh processes.
``python -m amlight benchmark adapter``: one adapter call over every self-attention layer against one UNet row.

Each prints a table and writes the full record (every timing, the machine's load) as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from amlight.cli.commands import parse_or_exit_code, int_at_least
from amlight.modules import attention_modes

DEFAULT_OUT = "runs/benchmarks/train.json"
# The modes that read a bank, alphabetical as --help lists them.
BANK_MODES = tuple(sorted(attention_modes.BANK_MODES))


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

    pipeline = sub.add_parser(
        "pipeline",
        help="inference: UNet evaluations and seconds per (exemplar, target) pair, pipeline vs reference schedule",
        description="One exemplar, --targets targets (default 8), classifier-free guidance on. Counts UNet "
        "sample-evaluations and times the pipeline (exemplar encoded, inverted and its banks written once; "
        "one batched CFG call per step for all targets) against the reference schedule (per pair: fresh "
        "encode + DDIM inversion, appearance branch on both CFG halves, no reuse). Goals: evaluations per "
        "pair <= 0.5x the reference's, seconds per pair >= 2x faster. Presets: 'tiny' (the quickstart tiny "
        "model, random weights, 32x32, 20 steps) and 'sd15-random' (SD 1.5 architecture with random "
        "weights built in memory, 256x256, 2 steps by default: about 5 minutes a step on 2 CPU cores).",
    )
    pipeline.add_argument("--preset", choices=["tiny", "sd15-random"], default="tiny",
                          help="model and default size/steps (default: %(default)s)")
    pipeline.add_argument("--steps", type=_positive, default=None,
                          help="DDIM steps for both schedules (default: the preset's: tiny 20, sd15-random 2)")
    pipeline.add_argument("--targets", type=_positive, default=8,
                          help="targets drawn with the one exemplar (default: %(default)s)")
    pipeline.add_argument("--batch-size", type=_positive, default=None,
                          help="targets per batched UNet call of the pipeline (default: all --targets in one call)")
    pipeline.add_argument("--repeats", type=_positive, default=1,
                          help="timed runs of each schedule, alternating order; the median counts (default: %(default)s)")
    pipeline.add_argument("--mode", choices=BANK_MODES, default="adapter",
                          help="attention mode of both schedules (default: %(default)s, with a fresh zero-init adapter)")
    pipeline.add_argument("--guidance-scale", type=float, default=3.0, help="CFG scale, not 1 (default: %(default)s)")
    pipeline.add_argument("--resolution", type=_positive, default=None,
                          help="image side in pixels (default: the preset's: tiny 32, sd15-random 256)")
    pipeline.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)")
    pipeline.add_argument("--dtype", choices=["float32", "bf16", "fp16"], default="float32",
                          help="model dtype (default: %(default)s)")
    pipeline.add_argument("--seed", type=_non_negative, default=0, help="seed of weights, data and noise (default: 0)")
    pipeline.add_argument("--out", metavar="FILE.json", default=None,
                          help="JSON record (default: runs/benchmarks/pipeline_<preset>.json)")
    pipeline.add_argument("--threads", type=_positive, default=None,
                          help="torch threads (default: one per core that other processes leave idle, sampled for 1 s)")
    # The test suite's shrunken tiny model (16x16, 5 classes): seconds; numbers not comparable.
    pipeline.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    # Skip the untimed warm-up run (tests only).
    pipeline.add_argument("--no-warmup", action="store_true", help=argparse.SUPPRESS)

    memory = sub.add_parser(
        "memory",
        help="peak memory of the pipeline's memory options on one SD 1.5 64x64 self-attention layer (CPU)",
        description="One classifier-free-guidance read (2 rows) of SD 1.5's first 64x64 self-attention layer "
        "at 512x512, each case in a fresh process: augmented and hard_mask whole and with attention_chunk "
        "1024, augmented in bfloat16, and adapter (never chunked). Prints the peak resident memory each read "
        "adds and its ratio to the same read without the option; checks chunked output equals whole.",
    )
    memory.add_argument("--out", metavar="FILE.json", default="runs/benchmarks/memory_options.json",
                        help="JSON record (default: %(default)s)")
    memory.add_argument("--threads", type=_positive, default=None, help="torch threads (default: every core)")
    # The test suite's shrunken layer (8x8, 2 heads): seconds; numbers not comparable.
    memory.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)

    gpu = sub.add_parser(
        "gpu",
        help="SD 1.5 at 512 px on one CUDA device: generate s/image, training it/s, peak memory, conv4d, compile",
        description="Prints the torch, CUDA runtime and driver versions first (and stops with one line naming "
        "the install that fixes it when the driver cannot run this torch's CUDA). Then on one CUDA device, in "
        "about 8 minutes (--budget-s), with the SD 1.5 stand-in (exact architecture, random weights; written to "
        "--standin if missing, no download), in this order, each section with its own share of the time: "
        "generate at 512 px in bf16 (s/image, 20 steps, CFG, structure_only / augmented / adapter, batch 1 and 4, "
        "every image checked for NaN), stage-1 and stage-2 training it/s at the shipped configs' batch sizes in "
        "bf16 autocast (gradient checkpointing / checkpoint_attention on, as shipped, then off), the memory "
        "options (fp32 vs bf16, attention_chunk, offload_vae), the 4D conv as conv3d on views vs permuted "
        "conv2d on cuDNN (bf16 output checked against fp32), and torch.compile of the UNet. Peak GPU memory of "
        "each. Writes JSON + Markdown; exits 1 on an error, a NaN image or a failed bf16 check.",
    )
    gpu.add_argument("--device", default="cuda", help="torch device (default: %(default)s)")
    gpu.add_argument("--standin", metavar="DIR", default="runs/sd15-standin",
                     help="SD 1.5 stand-in folder, written if incomplete (default: %(default)s)")
    gpu.add_argument("--budget-s", type=_positive, default=480,
                     help="total time; each section gets its share plus what earlier ones left, and skips rows "
                     "that would not fit (default: %(default)s)")
    gpu.add_argument("--out", metavar="FILE.json", default="runs/benchmarks/gpu_check.json",
                     help="JSON record; the Markdown table goes next to it (default: %(default)s)")
    # The test suite's CPU dry run: tiny models, 32 px, 1 step; numbers meaningless.
    gpu.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)

    startup = sub.add_parser(
        "startup",
        help="start time of `--help` commands, each in fresh processes (median)",
        description="Wall time of `python -m amlight --help`, `generate --help` and a few more, each run "
        "--repeats times in a new interpreter; the median counts. --baseline DIR also times the checkout "
        "at DIR (e.g. a `git worktree` of an older commit), alternating runs, and prints the speed-up.",
    )
    startup.add_argument("--repeats", type=_positive, default=5, help="fresh processes per command (default: %(default)s)")
    startup.add_argument("--baseline", metavar="DIR", default=None,
                         help="root of another checkout to time with the same interpreter (put first on PYTHONPATH)")
    startup.add_argument("--out", metavar="FILE.json", default="runs/benchmarks/startup.json",
                         help="JSON record (default: %(default)s)")

    adapter = sub.add_parser(
        "adapter",
        help="the adapter's cost on every self-attention layer of one UNet row, against that plain UNet row",
        description="One adapter call (refine on every self-attention layer's logits and cost: SD 1.5 at "
        "512 px, 16 layers, 64x64 pooled 4D to 32x32, 8 heads, 16 channels, 3 layers; and the quickstart's "
        "tiny preset with configs/quickstart/stage2.yaml's adapter), forward and forward + backward, against "
        "one plain UNet row of the same size (batch 1, random weights), timed alternately in one run; fp32 "
        "and bf16, on the CPU and on CUDA when present. Prints adapter / UNet-row ratios.",
    )
    adapter.add_argument("--threads", type=_positive, default=None,
                         help="torch threads (default: one per core that other processes leave idle, sampled for 1 s)")
    adapter.add_argument("--repeats", type=_positive, default=2,
                         help="timed rounds after one warm-up; the median counts (default: %(default)s)")
    adapter.add_argument("--quick", action="store_true",
                         help="forward only, fp32 only (the SD-size UNet backward takes minutes on a CPU)")
    adapter.add_argument("--with-before", action="store_true",
                         help="also time this checkout with the CPU fast path off (channels-first conv3d on "
                         "views, unpooled sum; same numbers)")
    adapter.add_argument("--device", action="append", default=None, metavar="DEVICE",
                         help="torch device, repeatable (default: cpu, and cuda when present)")
    adapter.add_argument("--dtype", action="append", choices=["fp32", "bf16"], default=None,
                         help="repeatable (default: fp32 and bf16; fp32 with --quick)")
    adapter.add_argument("--case", action="append", choices=["sd15", "quickstart"], default=None,
                         help="repeatable (default: both)")
    adapter.add_argument("--out", metavar="FILE.json", default="runs/benchmarks/adapter_cost.json",
                         help="JSON record; the Markdown table goes next to it (default: %(default)s)")
    # The test suite's shrunken case: seconds, numbers not comparable.
    adapter.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    return parser


_positive, _non_negative = int_at_least(1), int_at_least(0)


def write_json_atomic(path: Path, data: dict) -> None:
    from amlight.utils.atomic_write import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def _report(out: Path, result: dict, table: str, markdown: bool = False) -> None:
    """Every benchmark's ending: the JSON record (and, when asked, the table as Markdown beside it), both
    written atomically, then the table and where the files went."""
    write_json_atomic(out, result)
    written = str(out)
    if markdown:
        from amlight.utils.atomic_write import atomic_write

        md = out.with_suffix(".md")
        atomic_write(md, lambda tmp: Path(tmp).write_text(table + "\n"))
        written += f" and {md}"
    print(table)
    print(f"\nwrote {written}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_or_exit_code(parser, argv)
    if isinstance(args, int):
        return args
    if args.benchmark is None:
        parser.print_help(sys.stderr)
        return 2

    if args.benchmark == "pipeline":
        return _pipeline_main(args)
    if args.benchmark == "memory":
        return _memory_main(args)
    if args.benchmark == "gpu":
        return _gpu_main(args)
    if args.benchmark == "startup":
        return _startup_main(args)
    if args.benchmark == "adapter":
        return _adapter_main(args)

    from amlight.benchmarks.train_speed import format_table, train_benchmark

    def progress(message: str) -> None:
        print(f"[benchmark train] {message}", file=sys.stderr, flush=True)

    result = train_benchmark(steps=args.steps, warmup=args.warmup, tiny=args.tiny,
                             skip_memory=args.skip_memory, threads=args.threads, progress=progress)
    _report(Path(args.out), result, format_table(result))
    return 0


def _pipeline_main(args: argparse.Namespace) -> int:
    from amlight.benchmarks.pipeline_speed import PRESETS, TEST_PRESET, format_table, pipeline_benchmark

    if args.tiny and args.preset != "tiny":
        print("amlight benchmark pipeline: --tiny shrinks the tiny preset only", file=sys.stderr)
        return 2
    if args.guidance_scale == 1.0:
        print("amlight benchmark pipeline: --guidance-scale 1 turns CFG off; this benchmark is about CFG on",
              file=sys.stderr)
        return 2
    preset = TEST_PRESET if args.tiny else PRESETS[args.preset]

    def progress(message: str) -> None:
        print(f"[benchmark pipeline] {message}", file=sys.stderr, flush=True)

    result = pipeline_benchmark(
        preset, steps=args.steps, targets=args.targets, batch_size=args.batch_size, repeats=args.repeats, mode=args.mode,
        guidance_scale=args.guidance_scale, resolution=args.resolution, device=args.device, dtype=args.dtype,
        threads=args.threads, seed=args.seed, warmup=not args.no_warmup, progress=progress,
    )
    _report(Path(args.out or f"runs/benchmarks/pipeline_{preset.name}.json"), result, format_table(result))
    return 0


def _memory_main(args: argparse.Namespace) -> int:
    from amlight.benchmarks.memory_options import format_table, memory_options_benchmark
    from amlight.benchmarks.train_speed import available_cores

    def progress(message: str) -> None:
        print(f"[benchmark memory] {message}", file=sys.stderr, flush=True)

    result = memory_options_benchmark(args.threads or available_cores(), tiny=args.tiny, progress=progress)
    _report(Path(args.out), result, format_table(result))
    return 0


def _startup_main(args: argparse.Namespace) -> int:
    from amlight.benchmarks.startup_time import startup_benchmark, format_table

    if args.baseline and not (Path(args.baseline) / "amlight" / "__init__.py").is_file():
        print(f"amlight benchmark startup: --baseline {args.baseline}: no amlight/__init__.py there; "
              "give the root of a checkout", file=sys.stderr)
        return 2
    result = startup_benchmark(repeats=args.repeats, baseline=args.baseline,
                               progress=lambda m: print(f"[benchmark startup] {m}", file=sys.stderr, flush=True))
    _report(Path(args.out), result, format_table(result))
    return 0


def _gpu_main(args: argparse.Namespace) -> int:
    from amlight.benchmarks.gpu_check import failures, format_table, gpu_check

    out = Path(args.out)
    try:
        result = gpu_check(device=args.device, standin=args.standin, tiny=args.tiny, budget_s=args.budget_s,
                           work=out.parent / "gpu_check_work",
                           progress=lambda m: print(f"[benchmark gpu] {m}", file=sys.stderr, flush=True))
    except RuntimeError as e:
        print(f"amlight {e}", file=sys.stderr)
        return 1
    _report(out, result, format_table(result), markdown=True)
    failed = failures(result)
    if failed:
        print(f"amlight benchmark gpu: failed rows (an error, an image with NaN/inf or a bf16 check out of "
              f"tolerance) in: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _adapter_main(args: argparse.Namespace) -> int:
    from amlight.benchmarks.adapter_cost import adapter_benchmark, format_table

    result = adapter_benchmark(threads=args.threads, repeats=args.repeats, quick=args.quick, tiny=args.tiny,
                               before=args.with_before, devices=args.device, dtypes=args.dtype, only=args.case,
                               progress=lambda m: print(f"[benchmark adapter] {m}", file=sys.stderr, flush=True))
    _report(Path(args.out), result, format_table(result), markdown=True)
    return 0
