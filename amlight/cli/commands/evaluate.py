"""``python -m amlight evaluate``: the four attention modes scored on paired data, with sweeps.

Every pair of a pairs file is drawn with every mode (structure_only, augmented, hard_mask, adapter)
from the same seeds, and every mode is scored on the same pairs against the ground truth (PSNR,
SSIM, ΔE per class, label-recovery mIoU; Self-sim, I_CLIP, FID and segmenter mIoU when their
weights are given). Writes ``OUT/results.json`` (settings, per mode and metric: mean, ci95, n,
per-pair values, direction), ``OUT/results.md`` (the table) and ``OUT/grid.png`` (exemplar | target
labels | ground truth | one column per mode, first 8 pairs). On a model whose structure guidance is a
ControlNet the modes are the paper's baselines and the table names them so ("ControlNet", "ControlNet +
cross-image attention", "ControlNet + masked attention", "ControlNet + AM-Adapter"; results.json adds
them as each mode's "label"); ``--controlnet-scale X`` draws at another conditioning scale (recorded,
part of the cache key).

Generated images are cached under ``OUT/cache/<config_key>/<mode>/`` (see
:mod:`amlight.metrics.evaluation`): a re-run draws nothing it already has, and changing a setting
only redraws the modes it affects. ``--sweep PARAM=V1,V2`` runs one full evaluation per value and
writes its rows to ``OUT/sweeps.md`` / ``OUT/sweeps.json`` (re-running a setting replaces its rows).

Example (the quickstart benchmark)::

    python -m amlight evaluate --stage1 runs/quickstart/stage1/checkpoints/last.ckpt \\
        --adapter runs/quickstart/stage2/checkpoints/last.ckpt --out runs/evaluate/quickstart
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from amlight.apps.generate_files import SCHEDULER_NAMES
from amlight.cli.commands import parse_or_exit_code, int_at_least, auto_or_int_at_least, non_negative_float

PROG = "amlight evaluate"
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130
GRID_ROWS = 8
# At most as many pairs per chunk as before "auto"; a CPU run takes exactly this many.
AUTO_BATCH_CAP = 16


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m amlight evaluate",
        description="Generate every pair with every attention mode from the same seeds and score the modes "
        "on the same pairs (JSON + Markdown table + grid). Generated images are cached and reused.",
        epilog="examples:\n"
        "  python -m amlight evaluate --pipeline models/quickstart --pairs data/synthetic/val/pairs.json "
        "--out runs/evaluate/exported\n"
        "  python -m amlight evaluate --stage1 runs/quickstart/stage1/checkpoints/last.ckpt \\\n"
        "      --adapter runs/quickstart/stage2/checkpoints/last.ckpt --out runs/evaluate/quickstart\n"
        "  ... --max-pairs 32 --sweep guidance_scale=1,3,5\n"
        "  ... --max-pairs 32 --sweep blocks=down,mid,up,down+mid+up",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--pipeline", metavar="DIR",
                       help="a pipeline folder from `python -m amlight export` (the whole model and its label space)")
    model.add_argument("--stage1", metavar="CKPT", help="stage-1 (GenerationStage) checkpoint (default with --adapter: "
                       "the one the adapter was trained on, found next to it or by hash)")
    model.add_argument("--adapter", metavar="FILE", help="the AM-Adapter: a stage-2 .ckpt or an exported .safetensors")
    model.add_argument("--base", metavar="DIR",
                       help="the SD 1.5 folder, when the backbone_path stored in the stage-1 checkpoint does not "
                       "exist here (another machine)")
    data = parser.add_argument_group("data")
    data.add_argument("--data", default="synthetic", metavar="NAME_OR_DIR",
                      help="dataset whose classes the label files use: a registered name or a folder with "
                      "classes.yaml (default: %(default)s; with --pipeline, the folder's own classes decode the "
                      "label files)")
    data.add_argument("--root", metavar="DIR", help="dataset root (default: the dataset's default root)")
    data.add_argument("--split", default="val", help="split (default: %(default)s)")
    data.add_argument("--pairs", metavar="FILE", help="pairs file (default: <root>/<split>/pairs.json)")
    data.add_argument("--max-pairs", type=int_at_least(1), metavar="N",
                      help="only the first N pairs in file order (default: all)")
    run = parser.add_argument_group("generation")
    run.add_argument("--modes", metavar="LIST",
                     help="comma-separated attention modes (default: structure_only,augmented,hard_mask,adapter; "
                     "without --adapter the first three)")
    run.add_argument("--seeds", default="0", metavar="LIST",
                     help="comma-separated noise seeds; every mode starts each target from the same noise "
                     "(default: %(default)s)")
    run.add_argument("--steps", type=int_at_least(1), default=20,
                     help="steps, inversion and sampling (default: %(default)s)")
    run.add_argument("--scheduler", type=str.lower, choices=SCHEDULER_NAMES, default="ddim",
                     help="sampler; the exemplars are inverted along its timesteps (default: %(default)s)")
    run.add_argument("--guidance-scale", type=non_negative_float, default=3.0, help="(default: %(default)s)")
    run.add_argument("--strength", type=non_negative_float, default=1.0,
                     help="appearance strength: weight of the exemplar in attention (default: %(default)s)")
    run.add_argument("--controlnet-scale", type=non_negative_float, metavar="X",
                     help="weight of the ControlNet's residuals, exemplar inversion included (models whose structure "
                     "guidance is a ControlNet; default: the model's own)")
    run.add_argument("--blocks", default="down+mid+up", metavar="GROUPS",
                     help="block groups that read the bank, joined with '+' (default: %(default)s)")
    run.add_argument("--max-resolution", type=int_at_least(1), metavar="N",
                     help="adapter 4D pooling size (default: the value it was trained with)")
    run.add_argument("--batch-size", type=auto_or_int_at_least(1), default="auto", metavar="N|auto",
                     help="pairs per chunk: exemplars inverted together, targets per UNet call; auto: as many as "
                     f"the GPU's free memory holds, at most {AUTO_BATCH_CAP} ({AUTO_BATCH_CAP} on a CPU) "
                     "(default: %(default)s)")
    run.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    run.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="(default: %(default)s)")
    metrics = parser.add_argument_group("paper metrics (from local weights, never downloaded)")
    metrics.add_argument("--dino", metavar="PATH", help="DINO ViT folder: Self-sim against the ground truth")
    metrics.add_argument("--clip", metavar="PATH", help="CLIP folder: I_CLIP against the exemplar")
    metrics.add_argument("--inception", metavar="FILE", help="FID Inception weights file: FID against the ground truths")
    metrics.add_argument("--segmenter", metavar="PATH", help="segmentation model folder: segmenter mIoU vs target labels")
    out = parser.add_argument_group("output")
    out.add_argument("--out", default="runs/evaluate/quickstart", metavar="DIR", help="(default: %(default)s)")
    out.add_argument("--name", help="title of the results (default: the --out folder's name)")
    out.add_argument("--sweep", action="append", default=[], metavar="PARAM=V1,V2,...",
                     help="one full evaluation per value, rows in OUT/sweeps.md; PARAM one of guidance_scale, steps, "
                     "max_resolution, blocks (values like down+up), strength, controlnet_scale; repeatable (one "
                     "table each)")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


class _Error(Exception):
    pass


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise _Error(f"cannot write to --out {out}: {e.strerror or e}") from None


def _folder_has_adapter(folder: str) -> bool:
    """Whether an exported pipeline folder holds an adapter (its model_index.json names one)."""
    import json

    try:
        index = json.loads((Path(folder) / "model_index.json").read_text())
    except (OSError, ValueError):
        return False  # loading the folder says what is wrong with it
    entry = index.get("am_adapter") if isinstance(index, dict) else None
    return isinstance(entry, list) and entry[0] is not None


@dataclass
class _FolderLabels:
    """The pairs' label files read with a pipeline folder's own label space (no dataset is built:
    a listed pair needs only the decoding, and the folder carries it)."""

    space: object  # amlight.apps.inputs.LabelSpace

    @property
    def metadata(self):
        return self.space.metadata

    def read_label_file(self, path):
        return self.space.load_labels(path)


def _pairs_file(args, source) -> Path:
    from amlight.data.registry import get_dataset_entry, registered_datasets

    if args.pairs:
        return Path(args.pairs)
    root = args.root
    if root is None:
        if args.data in registered_datasets():
            root = get_dataset_entry(args.data).default_root
        elif Path(args.data).is_dir():
            root = args.data
    if root is None:
        raise _Error(f"--data {args.data} has no default root: pass --root DIR or --pairs FILE")
    path = Path(root) / args.split / "pairs.json"
    if not path.is_file():
        raise _Error(f"pairs file {path} does not exist: pass --pairs FILE (a JSON list of exemplar, "
                     "exemplar_labels, target_labels, ground_truth)")
    return path


def prepare(args):
    """Everything that can fail on bad input, cheapest first; nothing is drawn yet."""
    from amlight.data.registry import build_dataset
    from amlight.metrics.evaluation import (
        EvaluationError,
        MetricModels,
        Settings,
        load_model,
        load_pairs,
        parse_blocks,
        parse_sweep,
    )
    from amlight.modules.attention_modes import ATTENTION_MODES, AttentionSettings

    def uses_adapter(mode: str) -> bool:  # unknown names are left to Settings, which lists the modes
        return mode in ATTENTION_MODES and AttentionSettings(mode).uses_adapter

    from amlight.pipeline.model_options import model_arguments_problem

    problem = model_arguments_problem(args.stage1, args.adapter, args.pipeline, args.base)
    if problem:
        raise _Error(problem)
    has_adapter = bool(args.adapter) or (bool(args.pipeline) and _folder_has_adapter(args.pipeline))
    modes = _split_list(args.modes) if args.modes else None
    if modes is not None and any(map(uses_adapter, modes)) and not has_adapter:
        others = ",".join(m for m in modes if not uses_adapter(m)) or "augmented"
        raise _Error(f"mode adapter needs --adapter FILE (a stage-2 checkpoint or exported adapter); without one "
                     f"drop it from --modes, e.g. --modes {others}")
    if modes is None:  # every mode; without an adapter file, those that need none
        modes = [m for m in ATTENTION_MODES if has_adapter or not uses_adapter(m)]
    try:
        seeds = [int(s) for s in _split_list(args.seeds)]
    except ValueError:
        raise _Error(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    settings = Settings(modes=tuple(modes), seeds=tuple(seeds), steps=args.steps, guidance_scale=args.guidance_scale,
                        strength=args.strength, blocks=parse_blocks(args.blocks), max_resolution=args.max_resolution,
                        batch_size=AUTO_BATCH_CAP if args.batch_size == "auto" else args.batch_size,
                        scheduler=args.scheduler, controlnet_scale=args.controlnet_scale)
    sweeps = [parse_sweep(text) for text in args.sweep]
    draws_adapter = any(a.uses_adapter for a in settings.attentions.values())
    if (args.max_resolution is not None or any(p == "max_resolution" for p, _ in sweeps)) and not draws_adapter:
        raise _Error("max_resolution is the adapter's 4D pooling size: it needs the adapter mode (--adapter FILE)")
    for param, values in sweeps:
        for value in values:
            settings.with_value(param, value)  # validates
    for flag, path in (("--stage1", args.stage1), ("--adapter", args.adapter)):
        if path and not Path(path).is_file():
            raise _Error(f"{flag} {path} does not exist")
    if args.pipeline and not Path(args.pipeline).is_dir():
        raise _Error(f"--pipeline {args.pipeline} does not exist (an exported pipeline folder is needed)")
    out = Path(args.out)
    _check_out(out)
    # With --pipeline the folder's label space decodes the label files: --data only locates the pairs file.
    source = None if args.pipeline else build_dataset(args.data, args.root, args.split)
    pairs_file = _pairs_file(args, source)
    model = load_model(args.stage1, args.adapter if draws_adapter else None, args.device, args.dtype,
                       base=args.base, pipeline=args.pipeline)
    pipe = model.pipe
    if args.pipeline and draws_adapter and pipe.adapter is None:
        raise _Error(f"--pipeline {args.pipeline} has no adapter: drop mode adapter from --modes")
    scaled = args.controlnet_scale is not None or any(p == "controlnet_scale" for p, _ in sweeps)
    if scaled and not getattr(pipe, "is_controlnet", False):
        raise _Error(f"--controlnet-scale: the model {args.pipeline or model.stage1_path} has no ControlNet (its "
                     f"structure guidance is {type(pipe.model.guidance).__name__}): drop --controlnet-scale")
    if args.pipeline:
        from amlight.apps.inputs import LabelSpace

        if pipe.label_space is None:
            raise _Error(f"--pipeline {args.pipeline} carries no label space (classes and colours): re-export it")
        source = _FolderLabels(LabelSpace.from_pipeline(pipe.label_space, origin=args.pipeline))
    if source.metadata.num_classes != pipe.num_classes:
        raise _Error(f"dataset {args.data!r} has {source.metadata.num_classes} classes but the stage-1 model was "
                     f"trained on {pipe.num_classes}: pass the --data it was trained on")
    pairs = load_pairs(pairs_file, source, pipe.resolution, args.max_pairs)
    if args.batch_size == "auto":
        steps = max([settings.steps] + [int(v) for param, values in sweeps if param == "steps" for v in values])
        batch, note = pipe.auto_batch_size(pipe.resolution, steps, settings.attentions.values(), AUTO_BATCH_CAP)
        settings = replace(settings, batch_size=batch)
        if note:
            model.notes.append(note)
    models = None
    if args.dino or args.clip or args.inception or args.segmenter:
        models = MetricModels.load(args.dino, args.clip, args.inception, args.segmenter,
                                   num_classes=pipe.num_classes, ignore_index=pipe.ignore_index, device=args.device)
    if not pairs.has_ground_truth.any() and models is None:
        raise EvaluationError(f"no pair in {pairs_file} has a ground_truth image and no paper metric weights "
                              "were given (--dino, --clip, --inception, --segmenter): nothing to score")
    return settings, sweeps, model, source, pairs_file, pairs, models


def _progress(quiet: bool):
    if quiet:
        return None
    from tqdm.auto import tqdm

    def bar(total: int):
        return tqdm(total=total, desc="evaluate", unit="img", file=sys.stderr, dynamic_ncols=True)

    return bar


def _record(args, result: dict, pairs_file: Path, command: str) -> dict:
    return {
        "name": args.name or Path(args.out).resolve().name,
        "command": command,
        "data": {"data": args.data, "root": args.root, "split": args.split, "pairs_file": str(pairs_file),
                 "max_pairs": args.max_pairs},
        **result,
    }


def _grid(args, model, pairs, settings, record, source) -> Path:
    import numpy as np
    import torch

    from amlight.metrics.evaluation import image_path, read_png
    from amlight.metrics.evaluation_report import write_grid
    from amlight.utils.visualize import colorize, to_uint8

    rows = min(GRID_ROWS, len(pairs))
    seed = settings.seeds[0]
    cache = Path(args.out) / "cache"
    columns = [to_uint8(pairs.exemplar_images[:rows]), colorize(pairs.target_labels[:rows], source.metadata),
               to_uint8(pairs.ground_truth[:rows])]
    titles = ["exemplar", "target labels", "ground truth"]
    for mode, entry in record["modes"].items():
        images = [read_png(image_path(cache, entry["cache_key"], mode, key, seed)) for key in pairs.keys[:rows]]
        columns.append(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous())
        titles.append(mode)
    return write_grid(Path(args.out) / "grid.png", columns, titles)


def run(args, argv: list[str]) -> int:
    from amlight.metrics.evaluation import evaluate, format_value
    from amlight.metrics.evaluation_report import (
        add_sweep_row,
        markdown_table,
        metrics_of,
        mode_rows,
        results_markdown,
        settings_line,
        sweep_table,
        write_json,
        write_text,
    )

    settings, sweeps, model, source, pairs_file, pairs, models = prepare(args)
    for note in model.notes:
        print(f"{PROG}: {note}", file=sys.stderr)
    command = "python -m amlight evaluate " + shlex.join(argv)
    out, cache = Path(args.out), Path(args.out) / "cache"
    progress = _progress(args.quiet)
    start = time.perf_counter()
    if not sweeps:
        result = evaluate(model, pairs, settings, cache, source.metadata, models, progress)
        record = _record(args, result, pairs_file, command)
        write_json(out / "results.json", record)
        write_text(out / "results.md", results_markdown(record))
        grid = _grid(args, model, pairs, settings, record, source)
        gen = record["generation"]
        print(markdown_table(mode_rows(record), metrics_of(record)))
        print(f"\n{settings_line(record)}")
        print(f"{gen['generated']} image(s) generated, {gen['reused']} reused from the cache "
              f"({gen['seconds']:.1f} s generating, {gen['scoring_seconds']:.1f} s scoring, "
              f"{time.perf_counter() - start:.1f} s in all)")
        if gen["uncovered_class_warnings"]:
            print(f"note: {gen['uncovered_class_warnings']} batch(es) had targets with classes their exemplar lacks "
                  "(drawn from the prior there)")
        print(f"results: {out / 'results.json'}  table: {out / 'results.md'}  grid: {grid}  cache: {cache}")
        return EXIT_OK
    for param, values in sweeps:
        rows = []
        for value in values:
            setting = f"{param}={format_value(param, value)}"
            print(f"{PROG}: sweep {setting}", file=sys.stderr)
            result = evaluate(model, pairs, settings.with_value(param, value), cache, source.metadata, models, progress)
            row = {"setting": setting, "param": param,
                   "value": list(value) if isinstance(value, tuple) else value,
                   **_record(args, result, pairs_file, command)}
            add_sweep_row(out, param, row)
            rows.append(row)
            gen = row["generation"]
            print(f"{PROG}: {setting}: {gen['generated']} generated, {gen['reused']} reused, "
                  f"{gen['seconds']:.1f} s", file=sys.stderr)
        print(f"\n## {param}\n")
        print(sweep_table(rows))
        print(f"\n{settings_line(rows[0], skip=param)}")
    print(f"\n{time.perf_counter() - start:.1f} s in all; sweeps: {out / 'sweeps.md'}  {out / 'sweeps.json'}  "
          f"cache: {cache}")
    return EXIT_OK


def _known_errors() -> tuple[type[BaseException], ...]:
    from amlight.data.io import DataFileError
    from amlight.data.pairing import PairsFileError
    from amlight.data.registry import UnknownDatasetError
    from amlight.metrics import MetricWeightsError, MissingDependencyError
    from amlight.metrics.evaluation import EvaluationError
    from amlight.checkpoints.files import CheckpointError
    from amlight.pipeline.finite import NonFiniteOutputError

    return (_Error, EvaluationError, DataFileError, PairsFileError, UnknownDatasetError, CheckpointError,
            MetricWeightsError, MissingDependencyError, OSError, NonFiniteOutputError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_or_exit_code(build_parser(), argv)
    if isinstance(args, int):
        return args
    new_folder = _first_missing(Path(args.out))  # removed again if the run fails before writing into it
    try:
        return run(args, argv)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; every image written is complete: run the same command again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # bad input: one line; anything else (a bug) keeps its traceback
        if not isinstance(e, _known_errors()):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        _remove_empty_folders(new_folder)
        return EXIT_ERROR


def _first_missing(path: Path) -> Path | None:
    """The highest folder of ``path`` (or itself) that does not exist yet: the --out write test creates it."""
    missing = None
    for candidate in [path.absolute(), *path.absolute().parents]:
        if candidate.exists():
            break
        missing = candidate
    return missing


def _remove_empty_folders(top: Path | None) -> None:
    """A failed start leaves no empty --out folder behind (a folder with files in it stays)."""
    if top is None or not top.is_dir():
        return
    for folder in sorted((p for p in [top, *top.rglob("*")] if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
