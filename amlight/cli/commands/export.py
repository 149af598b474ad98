"""``python -m amlight export``: a stage-1 checkpoint (and an adapter) as a diffusers pipeline folder.

    python -m amlight export --stage1 runs/quickstart/stage1/checkpoints/last.ckpt \\
        --adapter runs/quickstart/stage2/checkpoints/last.ckpt --out models/quickstart

The folder (``model_index.json``, one subfolder per component, safetensors) is what a model is shared
as: ``generate --pipeline DIR`` and ``AMPipeline.from_pretrained(DIR)`` read it anywhere, and it holds
the label space, so no dataset files travel with it. No optimiser state is written (a Lightning
checkpoint keeps it for resuming). ``README.md`` is the model card: base model and licence, dataset and
classes, training steps, the training config, and the measured results of an ``evaluate`` report of
these very weights when one lies next to the run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from amlight.cli.commands import parse_or_exit_code

PROG = "amlight export"
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
LICENCES = {  # the base model's licence, by backbone preset (what a Hub model card's `license:` says)
    "sd15": ("CreativeML OpenRAIL-M", "creativeml-openrail-m"),
    "tiny": (None, None),
}


class ExportError(ValueError):
    """Bad input, reported as one line and exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m amlight export",
        description="Write a stage-1 checkpoint (and optionally its adapter) as a diffusers pipeline folder with "
        "a model card: the form in which a model is shared and loaded (generate --pipeline DIR, "
        "AMPipeline.from_pretrained(DIR)).",
        epilog="example:\n  python -m amlight export --stage1 runs/quickstart/stage1/checkpoints/last.ckpt \\\n"
        "      --adapter runs/quickstart/stage2/checkpoints/last.ckpt --out models/quickstart",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stage1", metavar="CKPT", help="stage-1 (GenerationStage) checkpoint (default with "
                        "--adapter: the one the adapter was trained on)")
    parser.add_argument("--adapter", metavar="FILE", help="the AM-Adapter: a stage-2 .ckpt or an exported .safetensors")
    parser.add_argument("--out", required=True, metavar="DIR", help="the pipeline folder to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="weights' precision in the folder (default: %(default)s; fp16 halves the size)")
    parser.add_argument("--base", metavar="DIR", help="the SD 1.5 folder, when the backbone_path stored in the "
                        "stage-1 checkpoint does not exist here")
    parser.add_argument("--data", metavar="NAME_OR_DIR", help="the dataset whose classes and colours the model "
                        "uses (default: the one in the stage-1 run's config.yaml)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out when it holds a pipeline folder already (default: refuse)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_or_exit_code(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        out, info = export(args.stage1, args.out, adapter=args.adapter, dtype=args.dtype, base=args.base,
                           data=args.data, overwrite=args.overwrite)
    except (ValueError, OSError) as e:  # bad input (ExportError, CheckpointError, ...): one line, no traceback
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    sources = ", ".join(f"{p} {_mib(size)}" for p, size in info["checkpoint_sizes"].items())
    print(f"wrote {out}: {_mib(info['folder_size'])} ({args.dtype}); checkpoint(s): {sources}")
    print(f"load it with: python -m amlight generate --pipeline {out} ...   or   "
          f"AMPipeline.from_pretrained({str(out)!r})")
    return 0


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


# --- the export ----------------------------------------------------------------------------------


def export(stage1: str | None, out: str | Path, adapter: str | None = None, dtype: str = "fp32",
           base: str | None = None, data: str | None = None, overwrite: bool = False) -> tuple[Path, dict]:
    """Write the pipeline folder ``out``; (its path, {folder_size, checkpoint_sizes})."""
    from amlight.cli.commands import stage1_path

    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if not stage1 and not adapter:
        raise ExportError("give --stage1 CKPT (and optionally --adapter FILE)")
    out = Path(out)
    check_out_folder(out, overwrite)
    for flag, path in (("--stage1", stage1), ("--adapter", adapter)):
        if path and not Path(path).exists():
            raise ExportError(f"{flag} {path} does not exist")
    stage1 = stage1_path(stage1, adapter)
    source_folder = Path(stage1) if Path(stage1).is_dir() else None  # a stage 2 trained on a folder adds to it
    if source_folder is not None and not (source_folder / "model_index.json").is_file():
        raise ExportError(f"--stage1 {stage1} is a folder without model_index.json: give a stage-1 checkpoint "
                          "(.ckpt) or a pipeline folder")

    from amlight.checkpoints.adapter_files import load_adapter
    from amlight.checkpoints.stage1 import load_stage1
    from amlight.pipeline.synthesis import AMPipeline

    model = load_stage1(stage1, base=base)
    am_adapter = load_adapter(adapter, model) if adapter else None
    space = _label_space(stage1, data, source_folder)
    if space.num_classes != model.num_classes:
        raise ExportError(f"the dataset {space.origin or space.metadata.name!r} has {space.num_classes} classes but "
                          f"{stage1} was trained on {model.num_classes}: pass the --data it was trained on")
    pipe = AMPipeline.from_stage1(model, adapter=am_adapter, label_space=pipeline_label_space(space, model))

    write_pipeline_folder(pipe, out, lambda: model_card(model, stage1, adapter, space, dtype),
                          None if dtype == "fp32" else DTYPES[dtype], "export")
    sizes = {str(p): folder_size(Path(p)) if Path(p).is_dir() else Path(p).stat().st_size for p in (stage1, adapter) if p}
    return out, {"folder_size": folder_size(out), "checkpoint_sizes": sizes}


def write_pipeline_folder(pipe, out: Path, card: Callable[[], str], cast_to: str | None, tag: str) -> None:
    """``pipe`` saved as the pipeline folder ``out``, with ``card()`` as its README.md and its weight files
    cast to ``cast_to`` (a torch dtype name; None: as they are). Written beside ``out`` and moved into
    place at the end: a failed write leaves no half folder, and a replaced folder goes only then."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.{tag}-", dir=out.parent))
    try:
        pipe.save_pretrained(work)
        if cast_to is not None:
            cast_safetensors(work, cast_to)  # the files, not the (possibly shared) in-memory model
        (work / "README.md").write_text(card())
        _shareable(work)
        if out.exists():
            shutil.rmtree(out) if any(out.iterdir()) else out.rmdir()
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _shareable(folder: Path) -> None:
    """Permissions as any new file gets them (the umask's): mkdtemp makes the folder private (0700), and
    a shared model must be readable by whoever it is given to."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def check_out_folder(out: Path, overwrite: bool, error: type[Exception] = ExportError) -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder other than a pipeline folder to overwrite."""
    if out.exists() and not out.is_dir():
        raise error(f"--out {out} is a file: give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise error(f"--out {out} is not empty: choose a new folder, or pass --overwrite to replace the "
                              "pipeline folder there")
        if not (out / "model_index.json").is_file():
            raise error(f"--out {out} holds files but no pipeline folder (no model_index.json): --overwrite "
                              "only replaces a pipeline folder; choose a new folder")


def _label_space(stage1: str, data: str | None, source_folder: Path | None = None):
    from amlight.apps.inputs import InputError, LabelSpace, label_space_from_run

    if data:
        return LabelSpace.resolve(data)
    if source_folder is not None:
        from amlight.pipeline.label_space import PipelineLabelSpace

        return LabelSpace.from_pipeline(PipelineLabelSpace.from_pretrained(source_folder, subfolder="label_space"),
                                        origin=str(source_folder))
    try:
        return label_space_from_run(stage1)
    except InputError as e:
        raise ExportError(str(e).replace("cannot tell which dataset the label files belong to",
                                         "cannot tell which dataset the model was trained on")) from None


def pipeline_label_space(space, stage1):
    """The folder's ``label_space`` component from a :class:`~amlight.apps.inputs.LabelSpace`."""
    from amlight.pipeline.label_space import PipelineLabelSpace

    meta = space.metadata
    return PipelineLabelSpace(
        class_names=list(meta.class_names), colors=[list(map(int, c)) for c in meta.colors],
        ignore_index=int(meta.ignore_index), label_format=space.label_format, unknown_colors=space.unknown_colors,
        ignore_colors=[list(c) if isinstance(c, (list, tuple)) else c for c in space.ignore_colors],
        id_map=_id_map_list(space.id_map, meta.ignore_index), name=meta.name,
        prompt=str((stage1.hparams.get("backbone") or {}).get("prompt", stage1.hparams.get("prompt", "")) or ""),
    )


def _id_map_list(id_map, ignore_index: int) -> list[int] | None:
    """A raw-id -> class table as a list (what a JSON config holds)."""
    if id_map is None:
        return None
    from collections.abc import Mapping

    if isinstance(id_map, Mapping):
        table = [ignore_index] * (max(int(k) for k in id_map) + 1 if id_map else 0)
        for raw, cls in id_map.items():
            table[int(raw)] = int(cls)
        return table
    try:
        return [int(v) for v in id_map]
    except (TypeError, ValueError):
        raise ExportError(f"the dataset's label id map ({type(id_map).__name__}) cannot be stored in a pipeline "
                          "folder: pass --data with a dataset whose label files hold class indices or colours") from None


def cast_safetensors(folder: Path, dtype_name: str) -> None:
    """Cast the floating-point tensors of every ``*.safetensors`` under ``folder`` to ``dtype_name``."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    dtype = getattr(torch, dtype_name)
    for path in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
        state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in load_file(path).items()}
        save_file(state, str(path), metadata=metadata)
    for config in sorted(folder.rglob("config.json")):  # transformers' own record of the weights' dtype
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "torch_dtype" in data:
            data["torch_dtype"] = dtype_name
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# --- the model card ------------------------------------------------------------------------------


def model_card(stage1, stage1_file: str, adapter: str | None, space, dtype: str) -> str:
    """README.md of the folder: what the model is, what it was trained on and how well it does."""
    from amlight.apps.inputs import find_run_config
    from amlight.checkpoints.files import read_checkpoint

    spec = stage1.hparams.get("backbone") or {}
    preset = spec.get("preset", "?")
    licence, licence_id = LICENCES.get(preset, (None, None))
    source = _source_card(Path(stage1_file)) if preset == "pipeline" else None  # stage 1 from a folder
    if source is not None:
        licence_id = source["license"]
    meta = space.metadata
    front = ["---", "library_name: diffusers", "pipeline_tag: image-to-image",
             "tags: [amlight, am-adapter, semantic-image-synthesis, exemplar-based]"]
    front += [f"license: {licence_id}"] if licence_id else []
    front += ["---", ""]
    steps1 = None if source is not None else \
        read_checkpoint(stage1_file, expect_stage="generation", mmap=True).get("global_step")
    lines = front + [f"# amlight pipeline: {meta.name}", "",
                     "Exemplar-based semantic image synthesis (AM-Adapter): draws a target label map in the "
                     "appearance of an exemplar image and its label map.", "",
                     "```python", "from amlight.pipeline import AMPipeline", "",
                     "pipe = AMPipeline.from_pretrained(\"THIS_FOLDER\")",
                     "image = pipe(\"target_labels.png\", \"exemplar.png\", \"exemplar_labels.png\""
                     + ("" if adapter else ", mode=\"augmented\"") + ").images[0]",
                     "```", "",
                     "or `python -m amlight generate --pipeline THIS_FOLDER --exemplar ex.png --exemplar-labels "
                     "ex_labels.png --target-labels target.png " + ("" if adapter else "--mode augmented ")
                     + "--out OUT`" + ("" if adapter else " (no adapter in this folder: modes structure_only, "
                                        "augmented, hard_mask)") + ".", "", "## Model", ""]
    if preset == "sd15":
        lines.append(f"- base model: Stable Diffusion 1.5 (`{spec.get('path')}`), licence {licence}: its use "
                     "restrictions apply to this model too")
    elif preset == "tiny":
        lines.append("- base model: none: amlight's `tiny` preset (a small pixel-space UNet trained from a random "
                     f"initialisation, options {json.dumps(spec.get('options') or {})}), no licence of its own")
    elif source is not None:
        lines.append(f"- base model: {source['base'] or 'as in the model card of ' + stage1_file}")
    else:
        lines.append(f"- base model: {preset} {spec.get('path') or ''}".rstrip())
    lines += [f"- stage 1 (UNet + structure guidance): `{stage1_file}`, " + (
              f"the pipeline folder's (weights digest `{stage1.sha256}`)" if source is not None else
              f"sha256 `{stage1.sha256}`, {steps1 if steps1 is not None else '?'} training steps"),
              f"- AM-Adapter: " + (_adapter_line(adapter) if adapter else "none (modes structure_only, augmented, "
                                                                          "hard_mask only)"),
              f"- weights: {dtype}", "",
              "## Label space", "",
              f"Dataset `{meta.name}`" + (f" ({space.origin})" if space.origin and space.origin != meta.name else "")
              + f", {meta.num_classes} classes, ignore index {meta.ignore_index}:", "",
              "| index | class | colour |", "|---:|---|---|"]
    lines += [f"| {i} | {name} | #{''.join(f'{int(c):02x}' for c in color)} |"
              for i, (name, color) in enumerate(zip(meta.class_names, meta.colors))]
    for title, file in (("stage 1", stage1_file), ("stage 2", adapter if adapter and adapter.endswith(".ckpt") else None)):
        config = find_run_config(file) if file else None
        if config is not None:
            lines += ["", f"## Training config ({title}: `{config}`)", "", "```yaml", config.read_text().rstrip(), "```"]
        elif title == "stage 1" and source is not None:
            lines += source["configs"]  # the source folder's own record of how stage 1 was trained
    results = find_results(stage1_file, stage1.sha256, adapter)
    lines += ["", "## Results", ""]
    if results is None:
        lines.append("No `python -m amlight evaluate` report of these weights was found next to the run.")
    else:
        from amlight.metrics.evaluation_report import markdown_table, metrics_of, mode_rows, settings_line

        path, record = results
        lines += [f"From `{path}` (`{record.get('command', '')}`):", "",
                  markdown_table(mode_rows(record), metrics_of(record)), "", settings_line(record) + "."]
    return "\n".join(lines) + "\n"


def _source_card(folder: Path) -> dict[str, Any]:
    """From the model card of the pipeline folder a stage 2 was trained on: its licence, base model line
    and training-config sections, carried into the new card."""
    text = (folder / "README.md").read_text() if (folder / "README.md").is_file() else ""
    licence = next((line.split(":", 1)[1].strip() for line in text.split("\n---", 1)[0].splitlines()
                    if line.startswith("license:")), None)
    base = next((line.removeprefix("- base model: ") for line in text.splitlines()
                 if line.startswith("- base model: ")), None)
    configs = []
    for section in text.split("\n## ")[1:]:
        if section.startswith("Training config"):
            configs += ["", "## " + section.rstrip()]
    return {"license": licence, "base": base, "configs": configs}


def _adapter_line(adapter: str) -> str:
    from amlight.checkpoints.stage1 import file_sha256

    steps = None
    if adapter.endswith(".ckpt"):
        from amlight.checkpoints.files import read_checkpoint

        steps = read_checkpoint(adapter, expect_stage="adapter", mmap=True).get("global_step")
    return f"`{adapter}`, sha256 `{file_sha256(adapter)}`" + (f", {steps} training steps" if steps is not None else "")


def find_results(stage1_file: str, stage1_sha: str, adapter: str | None) -> tuple[Path, dict[str, Any]] | None:
    """An ``evaluate`` results.json of exactly these weights (same stage-1 and adapter sha256) near the run:
    in the run folders of the experiment (runs/quickstart/*/) or under runs/evaluate/<experiment>/."""
    from amlight.checkpoints.stage1 import file_sha256

    ckpt = Path(stage1_file).resolve()
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    experiment = run.parent
    candidates = [*experiment.glob("*/results.json"), *experiment.glob("*/*/results.json"),
                  *experiment.parent.glob(f"evaluate/{experiment.name}/results.json"),
                  *experiment.parent.glob(f"evaluate/{experiment.name}*/results.json")]
    adapter_sha = file_sha256(adapter) if adapter else None
    for path in sorted(dict.fromkeys(candidates), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            record = json.loads(path.read_text())
            settings = record["settings"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if settings.get("stage1_sha256") != stage1_sha:
            continue
        if settings.get("adapter_sha256") not in (None, adapter_sha):
            continue  # scores of another adapter on this stage 1
        return path, record
    return None


if __name__ == "__main__":
    sys.exit(main())
