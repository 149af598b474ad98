"""``python -m amlight predict``: generate a whole split's pairs with Lightning, on one device or many.

:class:`SynthesisModule` is a LightningModule whose ``predict_step`` draws a batch of exemplar-target
pairs from :class:`~amlight.data.ExemplarPairDataModule` (its predict split: the listed pairs of
``<root>/val/pairs.json`` by default) and writes them with the same
:class:`~amlight.apps.outputs.ResultWriter` as ``amlight generate``: the same file names, triplets,
``summary.json`` and ``grid.png``; outputs already there are skipped, so a run resumes. Under DDP each
rank draws and writes its own share of the pairs; rank 0 writes the summary of all of them.

    python -m amlight predict --config configs/quickstart/generate.yaml
    python -m amlight predict --config configs/quickstart/generate.yaml --trainer.devices 4 --trainer.accelerator gpu

Python::

    import lightning as L
    from amlight.data import ExemplarPairDataModule
    from amlight.apps.predict_module import SynthesisModule

    module = SynthesisModule("runs/quickstart/stage1/checkpoints/last.ckpt",
                             adapter="runs/quickstart/stage2/checkpoints/last.ckpt", out_dir="runs/predict")
    data = ExemplarPairDataModule("synthetic", root="data/synthetic", resolution=32)
    L.Trainer(accelerator="cpu", devices=1, logger=False).predict(module, datamodule=data, return_predictions=False)

The frozen stage-1 model and the adapter are plain attributes, not submodules: Lightning never
checkpoints, casts or wraps them.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from amlight.apps.inputs import Job, JobInputs, output_stem
from amlight.apps.outputs import GenerationReport, ResultWriter, generate_pairs, prepare_out_dir
from amlight.utils.cpu_threads import default_threads
from amlight.modules.attention_modes import AttentionSettings

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class SynthesisModule(L.LightningModule):
    """Args:
        stage1_checkpoint: the GenerationStage checkpoint (default with ``adapter``: the one it was trained on,
            found next to it or by hash).
        adapter: an exported adapter (.safetensors) or a stage-2 checkpoint; needed by mode ``adapter``.
        pipeline: an exported pipeline folder (``python -m amlight export``) instead of the two checkpoints.
        base: the SD 1.5 folder, when the ``backbone_path`` stored in the stage-1 checkpoint does not exist here.
        mode: adapter | augmented | hard_mask | structure_only.
        steps, guidance_scale, seed, appearance_strength: sampling (see ``amlight generate``); every
            target starts from the noise of ``seed``.
        out_dir: where results go (``<exemplar>__<target>[__mode].png``, ``summary.json``, ``grid.png``);
            default: the trainer's ``default_root_dir``, where ``python -m amlight predict`` writes its
            ``config.yaml`` too, so that ``--trainer.default_root_dir DIR`` moves the whole run.
        triplets: also write ``out_dir/triplets/``: exemplar | target labels | result [| ground truth].
        overwrite: redraw outputs that exist (default: skip them and resume).
        batch_size: targets per UNet call (default: the whole dataloader batch).
        dtype: fp32 | bf16 | fp16 for the frozen model (default: fp32).
        threads: torch CPU threads per process on a CPU (default: the cores other processes leave idle,
            shared among this machine's ranks; a busy core makes every extra thread wait).
        num_classes, ignore_index: linked from the data by the CLI; must match stage 1's.
    """

    def __init__(
        self,
        stage1_checkpoint: str | None = None,
        adapter: str | None = None,
        mode: str = "adapter",
        steps: int = 20,
        guidance_scale: float = 3.0,
        seed: int = 0,
        appearance_strength: float = 1.0,
        out_dir: str | None = None,
        triplets: bool = False,
        overwrite: bool = False,
        batch_size: int | None = None,
        dtype: str = "fp32",
        threads: int | None = None,
        num_classes: int | None = None,
        ignore_index: int | None = None,
        pipeline: str | None = None,
        base: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        # The hparams stay loose values (the YAML config's keys); the run reads this one object.
        self.attention = AttentionSettings(mode, appearance_strength=appearance_strength)
        given = [name for name, value in (("stage1_checkpoint", stage1_checkpoint), ("adapter", adapter),
                                          ("base", base)) if value]
        if pipeline and given:  # a config's checkpoints and a pipeline folder: which one was meant is unclear
            raise ValueError(f"pipeline {pipeline} holds the whole model: set {' and '.join(given)} to null "
                             f"(--model.init_args.{given[0]} null)")
        if not pipeline and not stage1_checkpoint and not adapter:
            raise ValueError("no model: set pipeline (an exported pipeline folder) or stage1_checkpoint [+ adapter]")
        if self.attention.uses_adapter and adapter is None and pipeline is None:
            raise ValueError("mode 'adapter' needs adapter: (a stage-2 checkpoint or exported adapter); "
                             "without one use mode: augmented")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        pipe = self._pipeline()  # fails now on a missing or mismatched checkpoint, not mid-run
        for name, value, expected in [("num_classes", num_classes, pipe.num_classes),
                                      ("ignore_index", ignore_index, pipe.ignore_index)]:
            if value is not None and value != expected:
                raise ValueError(f"the data has {name}={value} but stage 1 ({pipeline or stage1_checkpoint}) was trained with "
                                 f"{expected}: generate with the label space of stage 1")
        # Plain attributes: the frozen model stays out of checkpoints, dtype casts and DDP.
        self.__dict__["pipe"] = pipe
        self.__dict__["writer"] = None
        self._records: list[dict] = []
        self._report = GenerationReport()

    def _pipeline(self, device=None):
        from amlight.pipeline.model_options import open_pipeline

        hp = self.hparams
        pipe = open_pipeline(hp.stage1_checkpoint, hp.adapter, hp.pipeline, hp.base, device=device,
                             dtype=_DTYPES[hp.dtype] if hp.dtype != "fp32" or device else None)
        if self.attention.uses_adapter and pipe.adapter is None:
            raise ValueError(f"mode 'adapter' needs an adapter, and the pipeline folder {hp.pipeline} has none: "
                             "use mode: augmented")
        return pipe

    @property
    def out_dir(self) -> str:
        """Where the results go: ``out_dir``, else the trainer's ``default_root_dir`` (with the config)."""
        if self.hparams.out_dir is not None:
            return str(self.hparams.out_dir)
        trainer = self._trainer
        return str(trainer.default_root_dir) if trainer is not None else "."

    def on_predict_start(self) -> None:
        self.__dict__["pipe"] = self._pipeline(self.device)
        self._threads_before = torch.get_num_threads()
        if self.device.type == "cpu":
            threads = self.hparams.threads
            if threads is None:  # a resumed run computes as the first did (the same bytes)
                previous = (ResultWriter(self.out_dir).previous_summary() or {}).get("settings") or {}
                threads = previous.get("threads") if isinstance(previous.get("threads"), int) else None
            if threads is None:
                local_ranks = max(1, int(getattr(self.trainer, "num_devices", 1) or 1))
                threads = max(1, default_threads()[0] // local_ranks)
            torch.set_num_threads(int(threads))
        self._threads = torch.get_num_threads()
        if self.trainer.is_global_zero:
            prepare_out_dir(self.out_dir)
        self.trainer.strategy.barrier()
        datamodule = getattr(self.trainer, "datamodule", None)
        metadata = getattr(datamodule, "metadata", None)
        self.__dict__["writer"] = ResultWriter(self.out_dir, overwrite=self.hparams.overwrite,
                                               triplets=self.hparams.triplets, metadata=metadata)
        self._records, self._report = [], GenerationReport()

    def jobs(self, batch: dict) -> list[Job]:
        """One job per row of a DataModule batch (see :func:`jobs_from_batch`)."""
        return jobs_from_batch(batch, self.attention)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        hp = self.hparams
        rank = self.global_rank

        def warn(message: str) -> None:
            print(f"[rank {rank}] {message}" if self.trainer.world_size > 1 else message, file=sys.stderr)

        report = generate_pairs(
            self.pipe, self.jobs(batch), self.writer, attention=self.attention, steps=hp.steps,
            guidance_scale=hp.guidance_scale, seed=hp.seed, batch_size=hp.batch_size or len(batch["labels"]),
            progress=False, warn=warn,
        )
        self._records += report.records
        self._report.written += report.written
        self._report.skipped += report.skipped
        self._report.warnings += report.warnings
        self._report.seconds += report.seconds
        self._report.unet_calls += report.unet_calls
        return {"written": report.written, "skipped": report.skipped}

    def on_predict_end(self) -> None:
        torch.set_num_threads(getattr(self, "_threads_before", torch.get_num_threads()))
        records, report = self._records, self._report
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, (records, report.written, report.skipped, report.warnings,
                                                           report.seconds, report.unet_calls))
            merged = GenerationReport()
            seen: dict[str, dict] = {}
            for recs, written, skipped, warns, seconds, calls in gathered:
                for r in recs:  # a DistributedSampler repeats items to even out the ranks: keep one each
                    seen.setdefault(r["output"], r)
                merged.written += [w for w in written if w not in merged.written]
                merged.skipped += [s for s in skipped if s not in merged.skipped and s not in merged.written]
                merged.warnings += warns
                merged.seconds = max(merged.seconds, seconds)
                merged.unet_calls += calls
            records, report = list(seen.values()), merged
        if not self.trainer.is_global_zero:
            return
        hp = self.hparams
        from amlight.pipeline.model_options import stage1_path

        model = ({"pipeline": str(Path(hp.pipeline).resolve())} if hp.pipeline else
                 {"stage1": str(Path(stage1_path(hp.stage1_checkpoint, hp.adapter)).resolve()),
                  "adapter": str(Path(hp.adapter).resolve()) if hp.adapter and self.attention.uses_adapter else None})
        report.settings = {**model,
                           "mode": self.attention.mode, "steps": hp.steps, "guidance_scale": hp.guidance_scale,
                           "seed": hp.seed, "appearance_strength": hp.appearance_strength, "dtype": hp.dtype,
                           "devices": self.trainer.world_size, "threads": self._threads}
        self.writer.write_summary({"command": "predict", **dict(hp)}, report, records=records)
        self.writer.write_grid()
        print(f"predict: {len(records)} output(s) in {self.out_dir}: {len(report.written)} written, "
              f"{len(report.skipped)} skipped (already there), {len(report.warnings)} warning(s)", file=sys.stderr)

    def configure_optimizers(self):  # predict only: Lightning asks for none
        return None


def jobs_from_batch(batch: dict, attention: AttentionSettings = AttentionSettings()) -> list[Job]:
    """Jobs for the rows of a DataModule batch (``exemplar_image``, ``exemplar_labels``, ``labels``,
    ``image``/``has_ground_truth``, and the names ``exemplar_name``/``target_name``/``exemplar_path``/``target_path``
    of the predict dataset; without names, the row's ``name``)."""
    n = len(batch["labels"])
    jobs = []
    for i in range(n):
        target_name = _row(batch, "target_name", i) or _row(batch, "name", i) or f"target{i}"
        exemplar_name = _row(batch, "exemplar_name", i) or f"exemplar_of_{target_name}"
        exemplar_path = _row(batch, "exemplar_path", i) or exemplar_name
        target_path = _row(batch, "target_path", i) or target_name
        has_gt = bool(_row(batch, "has_ground_truth", i)) if "has_ground_truth" in batch else False
        inputs = JobInputs(
            exemplar_image=batch["exemplar_image"][i], exemplar_labels=batch["exemplar_labels"][i],
            target_labels=batch["labels"][i], target_image=batch["image"][i] if has_gt and "image" in batch else None,
        )
        info = {"exemplar": exemplar_path, "target_labels": target_path}
        jobs.append(Job(output_stem(exemplar_name, target_name, attention), exemplar_path, target_path,
                        (lambda inputs=inputs: inputs), info))
    return jobs


def _row(batch: dict, key: str, i: int):
    value = batch.get(key)
    if value is None:
        return None
    item = value[i]
    return item.item() if isinstance(item, torch.Tensor) else item
