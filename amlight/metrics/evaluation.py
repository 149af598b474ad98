"""The paired benchmark behind ``python -m amlight evaluate``: every attention mode, same pairs, same noise.

For each pair of a pairs file (exemplar, target labels, ground truth) and each seed, every requested
mode (docs/method.md#ablation-modes: structure_only, augmented, hard_mask, adapter) draws the target
from the same initial noise (``Generator().manual_seed(seed)`` per target), so the modes differ only
in how the generation branch reads the exemplar. Pairs are processed in fixed chunks of
``batch_size`` (pair ``i`` is always in chunk ``i // batch_size``); each chunk's distinct exemplars
are DDIM-inverted and their banks built once, in one call
(:func:`amlight.pipeline.pair_batches.group_banks`), and the three bank-reading modes reuse them.

**Cache.** Generated images are PNGs at ``CACHE/<config_key>/<mode>/<pair_key>_s<seed>.png``. The
config key hashes what changes that mode's images and nothing else (:func:`cache_config`): the
stage-1 checkpoint's sha256, the resolution, dtype, steps and guidance scale for every mode; the
appearance strength and block groups for the modes that read the bank; the adapter file's sha256 and
the 4D pooling size for ``adapter``. So a sweep over ``max_resolution`` redraws only the adapter
column, and ``--max-pairs 32`` reuses the images of a 64-pair run. The pair key is the pair's index,
its exemplar and target stems and a digest of the three input files (:func:`pair_key`), so an edited
pairs file never reuses a stale image. Existing files are reused, new ones written atomically, and
scores are always computed from the PNGs read back: a fresh and a cached run give identical numbers.

**Scores.** Per image against the ground truth with :func:`amlight.metrics.ground_truth_scores`
(PSNR, SSIM, ΔE per class, label-recovery mIoU), plus the paper's metrics when their weights are
given (:class:`MetricModels`). A pair's value is the mean over seeds; means and 95% intervals are
over pairs (the independent unit).
"""
from __future__ import annotations

import hashlib
import json
import re
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from amlight.utils.atomic_write import atomic_write
from amlight.checkpoints.stage1 import file_sha256, load_stage1
from amlight.data.pairing import PairDataset, read_pairs_file
from amlight.metrics import (
    ClipImageSimilarity,
    FIDMetric,
    SegmentationMIoU,
    SelfSimilarityDistance,
    class_color_error,
    ground_truth_scores,
)
from amlight.metrics.images import images_from_uint8, images_to_uint8
from amlight.metrics.report import json_number, summarize
from amlight.modules.attention_modes import ATTENTION_MODES, BLOCK_GROUPS, AttentionSettings
from amlight.pipeline.pair_batches import fixed_batches, group_banks
from amlight.pipeline.schedulers import SCHEDULERS, scheduler_by_name
from amlight.pipeline.synthesis import UncoveredClassWarning

CACHE_VERSION = 1
SWEEP_PARAMS = ("guidance_scale", "steps", "max_resolution", "blocks", "strength", "controlnet_scale")
GROUND_TRUTH = ("psnr", "ssim", "delta_e", "label_miou")
PAPER_METRICS = ("self_sim", "clip", "fid", "seg_miou")
# With a ControlNet as the structure guidance the four modes are the paper's baselines (and its method):
# the rows of the table are named so (results.json keeps the mode keys and adds these as "label").
CONTROLNET_LABELS = {"structure_only": "ControlNet", "augmented": "ControlNet + cross-image attention",
                     "hard_mask": "ControlNet + masked attention", "adapter": "ControlNet + AM-Adapter"}
DIRECTION = {"psnr": "higher", "ssim": "higher", "delta_e": "lower", "label_miou": "higher",
             "self_sim": "lower", "clip": "higher", "fid": "lower", "seg_miou": "higher"}


class EvaluationError(ValueError):
    """Bad input to the benchmark, reported as one line."""


# --- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What one evaluation draws. ``max_resolution`` None: the adapter's trained value."""

    modes: tuple[str, ...] = ATTENTION_MODES
    seeds: tuple[int, ...] = (0,)
    steps: int = 20
    guidance_scale: float = 3.0
    strength: float = 1.0
    blocks: tuple[str, ...] = BLOCK_GROUPS
    max_resolution: int | None = None
    batch_size: int = 16
    scheduler: str = "ddim"  # a name of amlight.pipeline.schedulers.SCHEDULERS: the sampler, and the banks' timesteps
    controlnet_scale: float | None = None  # a ControlNet's conditioning scale; None: the model's own

    def __post_init__(self):
        modes = tuple(dict.fromkeys(self.modes))
        unknown = [m for m in modes if m not in ATTENTION_MODES]
        if unknown or not modes:
            raise EvaluationError(f"unknown mode(s) {', '.join(unknown) or '(none given)'}; "
                                  f"choose from {', '.join(ATTENTION_MODES)}")
        # Canonical order (the ablation order) so tables and cache keys do not depend on how they were typed.
        object.__setattr__(self, "modes", tuple(m for m in ATTENTION_MODES if m in modes))
        if not self.seeds:
            raise EvaluationError("no seeds given")
        object.__setattr__(self, "seeds", tuple(dict.fromkeys(int(s) for s in self.seeds)))
        object.__setattr__(self, "blocks", parse_blocks(self.blocks))
        if int(self.steps) < 1:
            raise EvaluationError(f"steps must be >= 1, got {self.steps}")
        if not float(self.guidance_scale) >= 0:
            raise EvaluationError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if not float(self.strength) >= 0:
            raise EvaluationError(f"strength must be >= 0, got {self.strength}")
        if self.max_resolution is not None and int(self.max_resolution) < 1:
            raise EvaluationError(f"max_resolution must be >= 1, got {self.max_resolution}")
        if int(self.batch_size) < 1:
            raise EvaluationError(f"batch_size must be >= 1, got {self.batch_size}")
        object.__setattr__(self, "steps", int(self.steps))
        object.__setattr__(self, "guidance_scale", float(self.guidance_scale))
        object.__setattr__(self, "strength", float(self.strength))
        object.__setattr__(self, "batch_size", int(self.batch_size))
        if str(self.scheduler).lower() not in SCHEDULERS:
            raise EvaluationError(f"unknown scheduler {self.scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
        object.__setattr__(self, "scheduler", str(self.scheduler).lower())
        if self.controlnet_scale is not None:
            if not (np.isfinite(float(self.controlnet_scale)) and float(self.controlnet_scale) >= 0):
                raise EvaluationError(f"controlnet_scale must be a finite number >= 0, got {self.controlnet_scale}")
            object.__setattr__(self, "controlnet_scale", float(self.controlnet_scale))
        try:
            self.attentions  # built (and checked) once, here
        except ValueError as e:
            raise EvaluationError(str(e)) from None

    def with_value(self, param: str, value) -> "Settings":
        """These settings with one sweep parameter changed."""
        if param not in SWEEP_PARAMS:
            raise EvaluationError(f"unknown sweep parameter {param!r}; choose from {', '.join(SWEEP_PARAMS)}")
        return replace(self, **{param: value})

    @cached_property
    def attentions(self) -> dict[str, AttentionSettings]:
        """``{mode: AttentionSettings}`` for every drawn mode, built once from the loose fields (which
        stay, as the record's keys); a sweep's :meth:`with_value` makes new Settings, hence new ones.
        ``max_resolution`` None keeps the adapter's trained pooling size."""
        return {mode: AttentionSettings(mode, self.blocks, self.strength, self.max_resolution) for mode in self.modes}


def parse_blocks(value) -> tuple[str, ...]:
    """'down+up', ['down', 'up'] or ('up', 'down') -> ('down', 'up') in UNet order; EvaluationError if bad."""
    parts = value.split("+") if isinstance(value, str) else list(value)
    parts = [str(p).strip() for p in parts if str(p).strip()]
    unknown = [p for p in parts if p not in BLOCK_GROUPS]
    if unknown or not parts:
        raise EvaluationError(f"bad block group(s) {'+'.join(unknown) or '(none)'}: use down, mid, up joined "
                              "with '+', e.g. down+up")
    return tuple(g for g in BLOCK_GROUPS if g in parts)


def parse_sweep(text: str) -> tuple[str, list]:
    """'guidance_scale=1,3,5' -> ('guidance_scale', [1.0, 3.0, 5.0]); EvaluationError if bad."""
    if "=" not in text:
        raise EvaluationError(f"--sweep {text!r}: expected PARAM=V1,V2,... with PARAM one of {', '.join(SWEEP_PARAMS)}")
    param, _, values = text.partition("=")
    param = param.strip().replace("-", "_")
    if param not in SWEEP_PARAMS:
        raise EvaluationError(f"--sweep: unknown parameter {param!r}; choose from {', '.join(SWEEP_PARAMS)}")
    raw = [v.strip() for v in values.split(",") if v.strip()]
    if not raw:
        raise EvaluationError(f"--sweep {param}=: no values given (e.g. {param}={_SWEEP_EXAMPLE[param]})")
    parsed = []
    for v in raw:
        try:
            parsed.append(_parse_value(param, v))
        except (ValueError, EvaluationError) as e:
            raise EvaluationError(f"--sweep {param}: bad value {v!r} ({e}); e.g. {param}={_SWEEP_EXAMPLE[param]}") from None
    unique = []
    for v in parsed:
        if v not in unique:
            unique.append(v)
    return param, unique


_SWEEP_EXAMPLE = {"guidance_scale": "1,3,5", "steps": "10,20,50", "max_resolution": "4,8,16",
                  "blocks": "down,mid,up,down+mid+up", "strength": "0.5,1,1.5", "controlnet_scale": "0.5,1"}


def _parse_value(param: str, text: str):
    if param in ("steps", "max_resolution"):
        value = int(text)
        if value < 1:
            raise ValueError("must be an integer >= 1")
        return value
    if param in ("guidance_scale", "strength", "controlnet_scale"):
        value = float(text)
        if not np.isfinite(value) or value < 0:
            raise ValueError("must be a number >= 0")
        return value
    return parse_blocks(text)


def format_value(param: str, value) -> str:
    """How a setting reads in tables: guidance_scale=5, blocks=down+up."""
    if param == "blocks":
        return "+".join(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --- model and pairs ------------------------------------------------------------------------------


@dataclass
class PairSet:
    """The pairs of one benchmark at the model's resolution, in pairs-file order."""

    keys: list[str]
    exemplar_images: torch.Tensor  # (N, 3, H, W) in [-1, 1]
    exemplar_labels: torch.Tensor  # (N, H, W)
    target_labels: torch.Tensor  # (N, H, W)
    ground_truth: torch.Tensor  # (N, 3, H, W) in [-1, 1]; grey where has_ground_truth is False
    has_ground_truth: np.ndarray  # (N,) bool
    exemplar_ids: list[str]  # pairs with the same exemplar files share one bank
    sources: list[dict]  # file paths of each pair, for the record

    def __len__(self) -> int:
        return len(self.keys)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def file_digest(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def pair_key(index: int, exemplar: Path, target_labels: Path, digest: str) -> str:
    """``0007_<exemplar stem>__<target stem>_<8 hex of the input files' digest>``."""
    return f"{index:04d}_{_safe(Path(exemplar).stem)}__{_safe(Path(target_labels).stem)}_{digest[:8]}"


def load_pairs(pairs_file: str | Path, source, size: tuple[int, int], max_pairs: int | None = None) -> PairSet:
    """The first ``max_pairs`` pairs of ``pairs_file`` (all when None), read with ``source``'s classes and
    resized to ``size`` exactly as validation does (:class:`amlight.data.pairing.PairDataset`, no augmentation)."""
    pairs = read_pairs_file(pairs_file)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    for i, pair in enumerate(pairs):
        for what in ("exemplar", "exemplar_labels", "target_labels", "ground_truth"):
            path = getattr(pair, what)
            if path is not None and not Path(path).is_file():
                raise EvaluationError(f"pairs file {pairs_file}, entry {i}: {what} {path} does not exist")
    dataset = PairDataset(source, "listed", tuple(size), augment=False, pairs=pairs)
    items = [dataset[i] for i in range(len(pairs))]
    keys, exemplar_ids, sources = [], [], []
    for i, pair in enumerate(pairs):
        digest = file_digest([pair.exemplar, pair.exemplar_labels, pair.target_labels])
        keys.append(pair_key(i, pair.exemplar, pair.target_labels, digest))
        exemplar_ids.append(file_digest([pair.exemplar, pair.exemplar_labels]))
        sources.append({k: None if getattr(pair, k) is None else str(getattr(pair, k))
                        for k in ("exemplar", "exemplar_labels", "target_labels", "ground_truth")})
    return PairSet(
        keys=keys,
        exemplar_images=torch.stack([it["exemplar_image"] for it in items]),
        exemplar_labels=torch.stack([it["exemplar_labels"] for it in items]),
        target_labels=torch.stack([it["labels"] for it in items]),
        ground_truth=torch.stack([it["image"] for it in items]),
        has_ground_truth=np.array([bool(it["has_ground_truth"]) for it in items]),
        exemplar_ids=exemplar_ids,
        sources=sources,
    )


@dataclass
class Model:
    """The pipeline plus what identifies its weights."""

    pipe: object
    stage1_path: str
    stage1_sha256: str
    adapter_path: str | None
    adapter_sha256: str | None
    dtype: str
    notes: list[str] = field(default_factory=list)

    @property
    def trained_max_resolution(self) -> int | None:
        adapter = getattr(self.pipe, "adapter", None)
        return None if adapter is None else int(adapter.max_resolution)


def load_model(stage1: str | Path | None, adapter: str | Path | None = None, device: str | None = None,
               dtype: str = "fp32", base: str | Path | None = None, pipeline: str | Path | None = None) -> Model:
    """The pipeline of a stage-1 checkpoint (``base``: its SD 1.5 folder when the stored one is gone; no
    ``stage1``: the one ``adapter`` names) and adapter, or of an exported ``pipeline`` folder."""
    from amlight.pipeline.model_options import open_pipeline, stage1_path

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if dtype not in dtypes:
        raise EvaluationError(f"unknown dtype {dtype!r}; choose from {', '.join(dtypes)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise EvaluationError(f"--device {device}: no CUDA device is available here; use --device cpu")
    if pipeline is None:
        stage1 = stage1_path(None if stage1 is None else str(stage1), None if adapter is None else str(adapter))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = open_pipeline(None if pipeline else str(stage1), None if adapter is None else str(adapter),
                             None if pipeline is None else str(pipeline), None if base is None else str(base),
                             device=device, dtype=dtypes[dtype])
    notes = [f"warning: {w.message}" for w in caught if issubclass(w.category, UserWarning)]
    if pipeline is not None:
        # The folder's weights identify it: the cache keys stay valid when the folder moves.
        from amlight.checkpoints.pipeline_folder import folder_digest

        adapter_sha = _folder_adapter_sha256(Path(pipeline)) if getattr(pipe, "adapter", None) is not None else None
        return Model(pipe, str(pipeline), folder_digest(pipeline),  # what the folder's stage 1 is hashed as
                     None if adapter_sha is None else str(pipeline), adapter_sha, dtype, notes)
    return Model(pipe, str(stage1), load_stage1(stage1, base=base).sha256, None if adapter is None else str(adapter),
                 None if adapter is None else file_sha256(adapter), dtype, notes)


def _folder_adapter_sha256(folder: Path) -> str:
    """A digest of a pipeline folder's adapter weights (its am_adapter/ files, in name order)."""
    digest = hashlib.sha256()
    for path in sorted((folder / "am_adapter").glob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(file_sha256(path).encode())
    return digest.hexdigest()


# --- cache ---------------------------------------------------------------------------------------


def cache_config(mode: str, settings: Settings, model: Model) -> dict:
    """Everything that changes ``mode``'s images under ``settings``, and nothing that does not."""
    attention = settings.attentions[mode]
    pipe = model.pipe
    config = {
        "cache_version": CACHE_VERSION,
        "stage1_sha256": model.stage1_sha256,
        "resolution": list(pipe.resolution),
        "dtype": model.dtype,
        "steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
    }
    if settings.scheduler != "ddim":  # absent for DDIM: the cache keys of runs before --scheduler stay valid
        config["scheduler"] = settings.scheduler
    if is_controlnet(model):  # every mode, banks included, is guided at this scale
        config["controlnet_scale"] = effective_controlnet_scale(settings, model)
    if attention.reads_exemplar:
        config["strength"] = attention.appearance_strength
        config["blocks"] = list(settings.blocks)
        if pipe.backbone.vae is not None:
            # A VAE samples its posterior with one generator per bank batch: an exemplar's latent
            # depends on its position in the chunk, hence on the chunk size.
            config["bank_batch_size"] = settings.batch_size
    if attention.uses_adapter:
        config["adapter_sha256"] = model.adapter_sha256
        config["max_resolution"] = effective_max_resolution(settings, model)
    return config


def is_controlnet(model: Model) -> bool:
    return bool(getattr(model.pipe, "is_controlnet", False))


def effective_controlnet_scale(settings: Settings, model: Model) -> float | None:
    """The ControlNet scale drawn with (given, else the model's own); None without a ControlNet, where
    giving one is an EvaluationError."""
    if settings.controlnet_scale is not None and not is_controlnet(model):
        raise EvaluationError(f"controlnet_scale {settings.controlnet_scale:g}: the model {model.stage1_path} has no "
                              "ControlNet (its structure guidance is ControlNeXt-style)")
    return model.pipe.model.controlnet_scale(settings.controlnet_scale) if is_controlnet(model) else None


def effective_max_resolution(settings: Settings, model: Model) -> int | None:
    return settings.max_resolution if settings.max_resolution is not None else model.trained_max_resolution


def config_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def image_path(cache: Path, key: str, mode: str, pair: str, seed: int) -> Path:
    return Path(cache) / key / mode / f"{pair}_s{seed}.png"


def write_png(path: Path, image: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@dataclass
class GenerationReport:
    generated: int = 0
    reused: int = 0
    banks_built: int = 0
    seconds: float = 0.0
    uncovered_warnings: int = 0


def generate(model: Model, pairs: PairSet, settings: Settings, cache: Path, progress=None) -> tuple[dict, GenerationReport]:
    """Draw every (pair, mode, seed) image the cache lacks. Returns ({mode: config_key}, report).

    ``progress``: a tqdm-like object (``update(n)``, ``set_postfix_str(s)``) or None.
    """
    pipe = model.pipe
    # The sampler of these settings on the pipeline's noise schedule; every call draws from a fresh copy.
    pipe.scheduler = scheduler_by_name(settings.scheduler, pipe.scheduler.config)
    attentions = settings.attentions
    if any(a.uses_adapter for a in attentions.values()) and pipe.adapter is None:
        raise EvaluationError("mode adapter needs an adapter: pass --adapter FILE, or drop adapter from --modes")
    scale = effective_controlnet_scale(settings, model)  # refused here without a ControlNet
    cache = Path(cache)
    keys = {}
    for mode in settings.modes:
        config = cache_config(mode, settings, model)
        keys[mode] = key = config_key(config)
        record = cache / key / "config.json"
        if not record.is_file():
            atomic_write(record, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    report = GenerationReport()
    start = time.perf_counter()
    chunked = fixed_batches(range(len(pairs)), settings.batch_size)
    chunks = len(chunked)
    # The adapter's pooling size travels in each mode's AttentionSettings (the pipeline sets it per call).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UncoveredClassWarning)
        for c, rows in enumerate(chunked):
            begin = rows[0]
            todo = {(mode, seed): [i for i in rows
                                   if not image_path(cache, keys[mode], mode, pairs.keys[i], seed).is_file()]
                    for mode in settings.modes for seed in settings.seeds}
            reused = sum(len(rows) - len(v) for v in todo.values())
            report.reused += reused
            if progress is not None and reused:
                progress.update(reused)
            banks, index = None, None
            for mode, attention in attentions.items():
                for seed in settings.seeds:
                    missing = todo[(mode, seed)]
                    if not missing:
                        continue
                    if attention.reads_exemplar and banks is None:
                        if progress is not None:
                            progress.set_postfix_str(f"chunk {c + 1}/{chunks}: inverting exemplars")
                        # Every exemplar of the chunk, cached images or not: a bank never depends on
                        # which images happened to be cached.
                        picked = torch.as_tensor(rows)
                        banks, index = group_banks(pipe, pairs.exemplar_images[picked], pairs.exemplar_labels[picked],
                                                   [pairs.exemplar_ids[i] for i in rows], settings.steps, seed=0,
                                                   controlnet_scale=scale)
                        report.banks_built += banks.batch
                    if progress is not None:
                        progress.set_postfix_str(f"chunk {c + 1}/{chunks}: {mode} seed {seed}")
                    picked = torch.as_tensor(missing)
                    local = picked - begin
                    images = pipe.draw(
                        pairs.target_labels[picked],
                        banks if attention.reads_exemplar else None,
                        exemplar_index=index[local] if attention.reads_exemplar else None,
                        attention=attention,
                        guidance_scale=settings.guidance_scale,
                        seed=seed,
                        steps=None if attention.reads_exemplar else settings.steps,
                        controlnet_conditioning_scale=scale,
                    )
                    for i, image in zip(missing, images_to_uint8(images.float())):
                        write_png(image_path(cache, keys[mode], mode, pairs.keys[i], seed), image)
                    report.generated += len(missing)
                    if progress is not None:
                        progress.update(len(missing))
        report.uncovered_warnings = sum(1 for w in caught if issubclass(w.category, UncoveredClassWarning))
    report.seconds = time.perf_counter() - start
    return keys, report


# --- scoring -------------------------------------------------------------------------------------


@dataclass
class MetricModels:
    """The paper's metrics, each loaded from local weights when a path is given."""

    self_sim: object = None
    clip: object = None
    fid: object = None
    seg_miou: object = None

    @classmethod
    def load(cls, dino=None, clip=None, inception=None, segmenter=None, num_classes=None, ignore_index=255,
             device=None, batch_size=16) -> "MetricModels":
        return cls(
            self_sim=SelfSimilarityDistance(dino, device=device, batch_size=batch_size) if dino else None,
            clip=ClipImageSimilarity(clip, device=device, batch_size=batch_size) if clip else None,
            fid=FIDMetric(weights_path=inception, device=device) if inception else None,
            seg_miou=SegmentationMIoU(segmenter, num_classes, ignore_index, device=device, batch_size=batch_size)
            if segmenter else None,
        )

    @property
    def names(self) -> list[str]:
        return [name for name in PAPER_METRICS if getattr(self, name) is not None]


def metric_names(pairs: PairSet, models: MetricModels | None) -> list[str]:
    names = list(GROUND_TRUTH) if pairs.has_ground_truth.any() else []
    return names + (models.names if models is not None else [])


def read_images(cache: Path, key: str, mode: str, pairs: PairSet, seed: int) -> torch.Tensor:
    return images_from_uint8([read_png(image_path(cache, key, mode, k, seed)) for k in pairs.keys])


def score(pairs: PairSet, settings: Settings, keys: dict, cache: Path, num_classes: int, ignore_index: int,
          class_names: Sequence[str], models: MetricModels | None = None) -> dict:
    """Scores of every mode from the cached PNGs: {mode: {"metrics": {name: summary}, "delta_e_per_class": ...}}.

    A summary is {"mean", "ci95", "n", "direction", "per_pair"}: per-pair values (mean over seeds,
    None where undefined) in pair order; FID is one number over all images (per_pair None).
    """
    names = metric_names(pairs, models)
    with_gt = torch.from_numpy(pairs.has_ground_truth)
    gt_idx = np.flatnonzero(pairs.has_ground_truth)
    labels = pairs.target_labels.numpy().astype(np.int64)
    result = {}
    for mode in settings.modes:
        per_seed: dict[str, list[np.ndarray]] = {m: [] for m in names if m != "fid"}
        per_class = []
        images_all = []
        for seed in settings.seeds:
            images = read_images(cache, keys[mode], mode, pairs, seed)
            images_all.append(images)
            values = {}
            if len(gt_idx):
                scores = ground_truth_scores(images[gt_idx], pairs.ground_truth[gt_idx], labels[gt_idx],
                                             num_classes, ignore_index)
                for m in GROUND_TRUTH:
                    full = np.full(len(pairs), np.nan)
                    full[gt_idx] = scores[m]
                    values[m] = full
                colour = class_color_error(images[gt_idx], pairs.ground_truth[gt_idx], labels[gt_idx],
                                           num_classes, ignore_index)
                per_class.append(colour.per_class)
            if models is not None and models.self_sim is not None:
                full = np.full(len(pairs), np.nan)
                full[gt_idx] = models.self_sim(images[with_gt], pairs.ground_truth[with_gt])
                values["self_sim"] = full
            if models is not None and models.clip is not None:
                values["clip"] = np.asarray(models.clip(images, pairs.exemplar_images), dtype=np.float64)
            if models is not None and models.seg_miou is not None:
                models.seg_miou.reset()
                values["seg_miou"] = np.asarray(models.seg_miou(images, labels), dtype=np.float64)
            for m in per_seed:
                per_seed[m].append(values[m])
        summaries = {}
        for m in names:
            if m == "fid":
                models.fid.reset()
                models.fid.update(pairs.ground_truth[with_gt], real=True)
                for images in images_all:
                    models.fid.update(images, real=False)
                try:
                    value = models.fid.compute()
                except ValueError as e:
                    raise EvaluationError(str(e)) from None
                summaries[m] = {"mean": json_number(value), "ci95": None, "n": sum(len(x) for x in images_all),
                                "direction": DIRECTION[m], "per_pair": None}
                continue
            stacked = np.stack(per_seed[m])  # (seeds, pairs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pairs (no ground truth) stay NaN
                per_pair = np.nanmean(stacked, axis=0)
            summaries[m] = {**summarize(per_pair), "direction": DIRECTION[m],
                            "per_pair": [json_number(v) for v in per_pair]}
        entry = {"cache_key": keys[mode], "metrics": summaries}
        if per_class:
            table = np.concatenate(per_class)  # (seeds * pairs with gt, classes)
            entry["delta_e_per_class"] = {class_names[c]: summarize(table[:, c]) for c in range(num_classes)
                                          if not np.isnan(table[:, c]).all()}
        result[mode] = entry
    return result


# --- one evaluation ------------------------------------------------------------------------------


def settings_record(settings: Settings, model: Model) -> dict:
    record = asdict(settings)
    record["modes"], record["seeds"], record["blocks"] = list(settings.modes), list(settings.seeds), list(settings.blocks)
    record["max_resolution"] = effective_max_resolution(settings, model) if model.pipe.adapter is not None else None
    record.update({
        "stage1": model.stage1_path, "stage1_sha256": model.stage1_sha256,
        "adapter": model.adapter_path, "adapter_sha256": model.adapter_sha256,
        "resolution": list(model.pipe.resolution), "dtype": model.dtype, "device": str(model.pipe.device),
        "structure_guidance": "controlnet" if is_controlnet(model) else "structure",
        "controlnet_scale": effective_controlnet_scale(settings, model),
    })
    return record


def evaluate(model: Model, pairs: PairSet, settings: Settings, cache: Path, metadata,
             models: MetricModels | None = None, progress: Callable | None = None) -> dict:
    """Generate what is missing, score everything from the cache; the record of :func:`score` plus settings."""
    bar = progress(len(pairs) * len(settings.modes) * len(settings.seeds)) if progress is not None else None
    try:
        keys, report = generate(model, pairs, settings, cache, bar)
    finally:
        if bar is not None:
            bar.close()
    start = time.perf_counter()
    modes = score(pairs, settings, keys, cache, model.pipe.num_classes, model.pipe.ignore_index,
                  metadata.class_names, models)
    if is_controlnet(model):
        for mode, entry in modes.items():
            entry["label"] = CONTROLNET_LABELS[mode]
    return {
        "settings": settings_record(settings, model),
        "n_pairs": len(pairs),
        "n_with_ground_truth": int(pairs.has_ground_truth.sum()),
        "pairs": list(pairs.keys),
        "modes": modes,
        "generation": {"generated": report.generated, "reused": report.reused,
                       "exemplars_inverted": report.banks_built, "seconds": round(report.seconds, 2),
                       "scoring_seconds": round(time.perf_counter() - start, 2),
                       "uncovered_class_warnings": report.uncovered_warnings},
    }
