"""Writing what generation draws: results, triplets, a grid, ``summary.json``.

:func:`generate_pairs` is the loop behind ``python -m amlight generate`` and ``python -m amlight
predict``: :class:`~amlight.pipeline.pair_batches.PairBatches` groups the jobs
(:class:`~amlight.apps.inputs.Job`) by exemplar, builds each exemplar's banks (DDIM inversion) once
for all its targets and draws up to ``batch_size`` targets per UNet call (exemplars are inverted
``batch_size`` at a time too); :class:`PairGenerator` hands every image to a :class:`ResultWriter`:

- ``OUT/<exemplar>__<target>[__mode].png``: the result, at the model's size;
- ``OUT/triplets/<same name>.png`` (``triplets=True``): exemplar | target labels | result [| target image];
- ``OUT/grid.png``: the first 16 triplets drawn in this run, one per row;
- ``OUT/summary.json``: the arguments, and per output its exemplar, target, seed, mode and the
  target classes its exemplar lacks.

Every file is written atomically (a crash or Ctrl-C never leaves a partial file), and outputs that
already exist are skipped unless ``overwrite``: a run resumes where it stopped. A target's initial
noise depends only on the seed, and the batches of targets and of exemplars are fixed by the job
list (a batch with a missing output is redrawn whole), so a resumed run redraws
exactly the bytes an uninterrupted one writes, given the same torch thread count (floating-point
sums can differ, in the last bit, with the batch size or the number of threads).

Python::

    from amlight.apps.inputs import InputCache, LabelSpace, pairs_from_file
    from amlight.apps.outputs import ResultWriter, generate_pairs
    from amlight.modules.attention_modes import AttentionSettings
    from amlight.pipeline import AMPipeline

    pipe = AMPipeline.from_checkpoints("runs/quickstart/stage1/checkpoints/last.ckpt",
                                       "runs/quickstart/stage2/checkpoints/last.ckpt")
    space = LabelSpace.resolve("data/synthetic")
    jobs = pairs_from_file("data/synthetic/val/pairs.json", InputCache(space, pipe.resolution))
    writer = ResultWriter("runs/generate", triplets=True, metadata=space.metadata)
    report = generate_pairs(pipe, jobs, writer, attention=AttentionSettings("adapter"), steps=20, seed=0)
    writer.write_summary({"pairs": "data/synthetic/val/pairs.json"}, report)
    writer.write_grid()

The same from files to files in one call, every input checked first:
:func:`amlight.apps.generate_files.generate_files`.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from amlight.apps.inputs import Job, JobInputs, dedupe
from amlight.utils.atomic_write import atomic_write
from amlight.data.registry import DatasetMetadata
from amlight.modules.attention_modes import AttentionSettings
from amlight.pipeline.pair_batches import PairBatches
from amlight.pipeline.synthesis import uncovered_classes
from amlight.utils.visualize import colorize, column_grid, save_png, to_uint8

GRID_LIMIT = 16
SUMMARY_FILE = "summary.json"
GRID_FILE = "grid.png"
TRIPLETS_DIR = "triplets"
PRIOR_NOTE = "that region has nothing to copy; it is drawn from the prior"


class OutputError(ValueError):
    """The output folder cannot be used."""


def prepare_out_dir(path: str | Path) -> list[Path]:
    """Create ``path`` if needed and check that files can be written in it (before any model loads).

    Returns the folders it created, innermost first, so that a run failing before it writes anything
    can remove them again (:func:`remove_if_empty`).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {path} exists and is not a folder")
    missing = [p for p in [path, *path.parents] if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".amlight-write-test.", dir=path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        remove_if_empty(missing)
        raise OutputError(f"cannot write to --out {path}: {e.strerror or e}") from None
    return missing


def remove_if_empty(folders: Sequence[Path]) -> None:
    """Remove ``folders`` (innermost first) while they are empty: undoing :func:`prepare_out_dir`."""
    for folder in folders:
        try:
            Path(folder).rmdir()
        except OSError:
            return


def upscale_for_viewing(height: int, min_height: int = 128) -> int:
    """The nearest-neighbour zoom that makes tiny images visible (1 from ``min_height`` pixels on)."""
    return max(1, min_height // max(1, int(height)))


class ResultWriter:
    """Writes results (and triplets) under ``out_dir``; knows what is already there.

    ``metadata`` colours the label maps in triplets (without it, a fixed fallback palette).
    """

    def __init__(self, out_dir: str | Path, *, overwrite: bool = False, triplets: bool = False,
                 metadata: DatasetMetadata | None = None, grid_limit: int = GRID_LIMIT):
        self.out_dir = Path(out_dir)
        self.overwrite = overwrite
        self.triplets = triplets
        self.metadata = metadata
        self.grid_limit = grid_limit
        self.grid_rows: list[list[torch.Tensor]] = []  # this run's first rows, columns uint8 (3, H, W)

    def result_path(self, name: str) -> Path:
        return self.out_dir / f"{name}.png"

    def triplet_path(self, name: str) -> Path:
        return self.out_dir / TRIPLETS_DIR / f"{name}.png"

    def done(self, name: str) -> bool:
        """Whether the output exists (and its triplet, when asked for), so the job can be skipped."""
        if self.overwrite:
            return False
        return self.result_path(name).is_file() and (not self.triplets or self.triplet_path(name).is_file())

    def has_result(self, name: str) -> bool:
        return not self.overwrite and self.result_path(name).is_file()

    def columns(self, inputs: JobInputs, result: torch.Tensor) -> list[torch.Tensor]:
        """exemplar | target labels | result [| target image], each uint8 (3, H, W)."""
        cols = [to_uint8(inputs.exemplar_image[None])[0], colorize(inputs.target_labels[None].cpu(), self.metadata)[0],
                result]
        if inputs.target_image is not None:
            cols.append(to_uint8(inputs.target_image[None])[0])
        return cols

    def write(self, name: str, result: torch.Tensor, inputs: JobInputs) -> list[Path]:
        """Write result ``name`` (uint8 (3, H, W)) and, if asked, its triplet; remember it for the grid."""
        paths = [save_png(result, self.result_path(name))]
        paths += self._triplet(name, result, inputs)
        return paths

    def complete(self, name: str, inputs: JobInputs) -> list[Path]:
        """Add the missing triplet of an existing result (a run without triplets, resumed with them)."""
        from PIL import Image

        with Image.open(self.result_path(name)) as img:
            result = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)
        return self._triplet(name, result, inputs)

    def _triplet(self, name: str, result: torch.Tensor, inputs: JobInputs) -> list[Path]:
        cols = self.columns(inputs, result.cpu())
        if len(self.grid_rows) < self.grid_limit:
            self.grid_rows.append(cols)
        if not self.triplets:
            return []
        image = column_grid([c[None] for c in cols], upscale=upscale_for_viewing(result.shape[-2]))
        return [save_png(image, self.triplet_path(name))]

    def grid_image(self, rows: Sequence[Sequence[torch.Tensor]] | None = None) -> torch.Tensor | None:
        """One row per triplet (missing target-image columns left white), or None without rows."""
        rows = list(self.grid_rows if rows is None else rows)[: self.grid_limit]
        if not rows:
            return None
        width = max(len(r) for r in rows)
        blank = torch.full_like(rows[0][0], 255)
        columns = [torch.stack([r[c] if c < len(r) else blank for r in rows]) for c in range(width)]
        return column_grid(columns, upscale=upscale_for_viewing(rows[0][0].shape[-2]))

    def write_grid(self, rows: Sequence[Sequence[torch.Tensor]] | None = None) -> Path | None:
        """``OUT/grid.png`` of this run's triplets; nothing (and an older grid kept) when none was drawn."""
        image = self.grid_image(rows)
        return None if image is None else save_png(image, self.out_dir / GRID_FILE)

    def previous_summary(self) -> dict | None:
        try:
            return json.loads((self.out_dir / SUMMARY_FILE).read_text())
        except (OSError, ValueError):
            return None

    def write_summary(self, arguments: dict, report: "GenerationReport", settings: dict | None = None,
                      records: Sequence[dict] | None = None) -> Path:
        data = {
            "arguments": _plain(arguments),
            "settings": _plain(settings or report.settings),
            "counts": {"outputs": len(records if records is not None else report.records),
                       "written": len(report.written), "skipped": len(report.skipped),
                       "warnings": len(report.warnings)},
            "seconds": round(report.seconds, 3),
            "interrupted": report.interrupted,
            "outputs": list(records if records is not None else report.records),
        }
        text = json.dumps(data, indent=2) + "\n"
        return atomic_write(self.out_dir / SUMMARY_FILE, lambda tmp: Path(tmp).write_text(text))


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@dataclass
class GenerationReport:
    records: list[dict] = field(default_factory=list)  # one per job, in job order
    written: list[str] = field(default_factory=list)  # output names drawn in this run
    skipped: list[str] = field(default_factory=list)  # output names that already existed
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    unet_calls: int = 0
    interrupted: bool = False
    settings: dict = field(default_factory=dict)


def _default_warn(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


class PairGenerator:
    """One :func:`generate_pairs` run: the :class:`~amlight.pipeline.pair_batches.PairBatches` that
    draws, and the sink that writes each image, records it and keeps the report so far.

    The report is an attribute so that a Ctrl-C anywhere leaves it consistent with the files written.
    """

    def __init__(self, pipe, jobs: Sequence[Job], writer: ResultWriter, *, attention: AttentionSettings,
                 steps: int, guidance_scale: float, seed: int, batch_size: int,
                 warn: Callable[[str], None] | None = None, class_name: Callable[[int], str] | None = None,
                 controlnet_scale: float | None = None):
        self.pipe, self.writer, self.attention, self.seed = pipe, writer, attention, seed
        self.jobs = dedupe(jobs)
        self.warn = warn or _default_warn
        if class_name is None:
            names = writer.metadata.class_names if writer.metadata is not None else ()
            class_name = (lambda c: names[c] if 0 <= c < len(names) else f"#{c}")
        self.class_name = class_name
        self.ignore_index = int(getattr(pipe, "ignore_index",
                                        writer.metadata.ignore_index if writer.metadata else 255))
        self.start = time.perf_counter()
        self.report = GenerationReport(settings={
            "mode": attention.mode, "steps": steps, "guidance_scale": guidance_scale, "seed": seed,
            "appearance_strength": attention.appearance_strength,
        })
        self.records: dict[str, dict] = {}  # output name -> its summary entry
        self.batches = PairBatches(pipe, self.jobs, attention=attention, steps=steps, guidance_scale=guidance_scale,
                                   seed=seed, batch_size=batch_size, done=writer.has_result,
                                   controlnet_scale=controlnet_scale)
        self.calls_before = getattr(pipe, "unet_calls", 0)
        self.bar = None

    def run(self, progress: bool = True) -> GenerationReport:
        todo = self.batches.plan.todo
        self.bar = tqdm(total=len(self.jobs), initial=len(self.jobs) - len(todo), desc="generate", unit="pair",
                        disable=not progress, file=sys.stderr, dynamic_ncols=True)
        try:
            self.batches.run(self)
        except KeyboardInterrupt as exc:
            self.report.interrupted = True
            exc.report = self.finish()  # type: ignore[attr-defined]
            raise
        finally:
            self.bar.close()
        return self.finish()

    def skipped(self, job: Job, inputs: JobInputs) -> None:
        if not self.writer.done(job.name):  # only the triplet is missing: no need to redraw
            self.writer.complete(job.name, inputs)
        self.report.skipped.append(job.name)
        self.record(job, inputs, "skipped")

    def drawn(self, job: Job, inputs: JobInputs, image: torch.Tensor) -> None:
        self.writer.write(job.name, image, inputs)
        self.report.written.append(job.name)
        self.record(job, inputs, "written")
        if self.bar is not None:
            self.bar.update(1)

    def record(self, job: Job, inputs: JobInputs, status: str) -> None:
        """The job's summary entry; a drawn pair whose target has classes its exemplar lacks also warns."""
        writer = self.writer
        missing = (uncovered_classes(inputs.target_labels, inputs.exemplar_labels, self.ignore_index)
                   if self.attention.reads_exemplar else [])
        entry = {"output": writer.result_path(job.name).name, **job.info, "exemplar_key": job.exemplar,
                 "target_key": job.target, "seed": self.seed, "mode": self.attention.mode,
                 "uncovered_classes": [self.class_name(int(c)) for c in missing], "status": status}
        for key in ("exemplar_key", "target_key"):  # only when they add something to the info fields
            if entry[key] in (entry.get("exemplar"), entry.get("target_labels")):
                del entry[key]
        if writer.triplets:
            entry["triplet"] = f"{TRIPLETS_DIR}/{writer.result_path(job.name).name}"
        self.records[job.name] = entry
        if status == "written" and missing:
            message = (f"warning: target {job.target} has class(es) {', '.join(entry['uncovered_classes'])} "
                       f"that exemplar {job.exemplar} lacks: {PRIOR_NOTE}")
            self.report.warnings.append(message)
            self.warn(message)

    def finish(self) -> GenerationReport:
        report = self.report
        report.records = [self.records[job.name] for job in self.jobs if job.name in self.records]
        report.seconds = time.perf_counter() - self.start
        report.unet_calls = (self.batches.bank_unet_calls
                             + getattr(self.pipe, "unet_calls", self.calls_before) - self.calls_before)
        return report


def generate_pairs(
    pipe,
    jobs: Sequence[Job],
    writer: ResultWriter,
    *,
    attention: AttentionSettings = AttentionSettings(),
    steps: int = 20,
    guidance_scale: float = 3.0,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
    class_name: Callable[[int], str] | None = None,
    controlnet_scale: float | None = None,
) -> GenerationReport:
    """Draw every job whose output is not there yet and write it; returns what happened.

    ``attention``: how every pair reads its exemplar (mode, block groups, appearance strength).
    ``controlnet_scale``: a ControlNet's conditioning scale for every bank and image (None: the model's own).
    Warns (``warn``, default: stderr) once per drawn pair whose target has classes its exemplar
    lacks. On Ctrl-C the files written so far stay complete and the exception carries the partial
    report as ``.report``.
    """
    generator = PairGenerator(pipe, jobs, writer, attention=attention, steps=steps, guidance_scale=guidance_scale,
                              seed=seed, batch_size=batch_size, warn=warn, class_name=class_name,
                              controlnet_scale=controlnet_scale)
    return generator.run(progress)
