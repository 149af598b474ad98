"""Inference cost of the pipeline against the reference schedule: UNet evaluations and wall time per pair.

One exemplar serves N targets (8 by default), classifier-free guidance on. Two schedules draw the same
N images:

- **pipeline** (:class:`amlight.pipeline.synthesis.AMPipeline`): the exemplar is encoded, DDIM-inverted
  and its per-step banks written ONCE (``2 * steps`` UNet calls over one row), then every target is
  drawn in one batched call per step over 2N rows [unconditional ; conditional].
- **reference** (:func:`reference_schedule`): how the public reference code, which has no exemplar
  cache, draws them: for EACH (exemplar, target) pair separately, encode and DDIM-invert the exemplar
  afresh (``steps`` calls over one row), then at every denoising step run the appearance branch on the
  inverted latent duplicated for both CFG halves (2 rows) and the generation branch on [uncond ; cond]
  (2 rows), combine, step, decode. Nothing is reused between pairs.

Both use the same weights, attention mode and seed, and start each target from the same noise (a
fresh ``torch.Generator().manual_seed(seed)``, as AMPipeline does for every target under one int
seed), so they give the same images up to float rounding (checked on every run).

UNet "sample-evaluations" are counted in rows: a batched call over R rows is R evaluations. Counts
come from a forward pre-hook on the diffusers UNet, so they are measured, not assumed.
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from amlight.benchmarks.train_speed import QUICKSTART_ADAPTER, available_cores, default_threads
from amlight.modules.exemplar_context import ExemplarRead

EVALS_RATIO_GOAL = 0.5  # pipeline UNet evaluations per pair / reference's: at most
SPEEDUP_GOAL = 2.0  # reference seconds per pair / pipeline's: at least
# Largest |reference - pipeline| over the images (in [-1, 1]) still called "the same image" at fp32.
MATCH_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6, torch.bfloat16: 0.1, torch.float16: 0.05}

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "float64": torch.float64}


@dataclass(frozen=True)
class PipelineBenchPreset:
    name: str
    description: str
    resolution: int  # image side in pixels
    num_classes: int
    steps: int  # default number of DDIM steps
    backbone: str  # "tiny" or "sd15-random"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    guidance_channels: int = 32
    # AMAdapter(heads=<the UNet's>, channels, num_layers, max_resolution)
    adapter: dict[str, int] = field(default_factory=dict)


PRESETS: dict[str, PipelineBenchPreset] = {
    # The quickstart model (configs/quickstart: tiny backbone defaults, 10 classes, guidance 32
    # channels, the stage-2 adapter) with random weights.
    "tiny": PipelineBenchPreset(
        "tiny", "quickstart tiny backbone (pixel space), random weights", resolution=32, num_classes=10,
        steps=20, backbone="tiny",
        adapter=dict(channels=QUICKSTART_ADAPTER["adapter_channels"], num_layers=QUICKSTART_ADAPTER["adapter_layers"],
                     max_resolution=QUICKSTART_ADAPTER["max_resolution"]),
    ),
    # Stable Diffusion 1.5's UNet, VAE and scheduler, built from their configs with random weights
    # in memory (nothing downloaded or saved). On 2 idle CPU cores one adapter-mode generation row
    # costs ~10 s (the adapter's 4D convolutions on the 32^4 volumes of the five 32x32 layers dominate
    # it), so the whole run costs ~5 minutes per step: 2 steps by default; --steps overrides.
    "sd15-random": PipelineBenchPreset(
        "sd15-random", "SD 1.5 architecture (UNet 860M + VAE), random weights", resolution=256, num_classes=10,
        steps=2, backbone="sd15-random", adapter=dict(channels=16, num_layers=3, max_resolution=32),
    ),
}
# The test suite's shrunken tiny model (tests/conftest.py TINY_OPTIONS): seconds, numbers not comparable.
TEST_PRESET = PipelineBenchPreset(
    "tiny-test", "shrunken tiny backbone for tests, random weights", resolution=16, num_classes=5, steps=3,
    backbone="tiny", backbone_options={"sample_size": 16, "block_out_channels": [16, 32], "attention_heads": 2},
    guidance_channels=16, adapter=dict(channels=4, num_layers=2, max_resolution=8),
)

# Stable Diffusion 1.5's configs (unet/config.json, vae/config.json, scheduler/scheduler_config.json).
SD15_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2, act_fn="silu",
    norm_num_groups=32, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.18215,
)
SD15_SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    trained_betas=None, prediction_type="epsilon", timestep_spacing="leading", steps_offset=1,
    set_alpha_to_one=False, clip_sample=False,
)
SD15_PROMPT_SHAPE = (1, 77, 768)


# --- models ---------------------------------------------------------------------------------------

def build_sd15_random_backbone(seed: int = 0):
    """A :class:`Backbone` with SD 1.5's architecture and random weights, built in memory.

    The prompt embeddings are fixed random (1, 77, 768) tensors standing in for CLIP's encoding of
    the prompt and of the empty prompt (same shape, so the same attention cost).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from amlight.backbone import Backbone, freeze

    def unet_factory() -> UNet2DConditionModel:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return UNet2DConditionModel(**SD15_UNET_CONFIG)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        vae = freeze(AutoencoderKL(**SD15_VAE_CONFIG))
    g = torch.Generator().manual_seed(seed + 2)
    prompt = torch.randn(SD15_PROMPT_SHAPE, generator=g)
    negative = torch.randn(SD15_PROMPT_SHAPE, generator=g)
    # Exactly SD's keys (no DDIM-only extras), so DDIMInverseScheduler takes the config without warnings.
    scheduler_config = dict(SD15_SCHEDULER_CONFIG)
    return Backbone(
        preset="sd15-random", unet_factory=unet_factory, scheduler_config=scheduler_config,
        prompt_embeds=prompt, negative_prompt_embeds=negative, vae=vae,
        scaling_factor=float(vae.config.scaling_factor), spec={"preset": "sd15-random", "seed": seed},
    )


def _self_attention_heads(model) -> int:
    heads = {m.heads for name, m in model.unet.named_modules() if name.endswith("attn1")}
    if len(heads) != 1:
        raise ValueError(f"self-attention layers with different head counts {sorted(heads)}")
    return heads.pop()


@dataclass
class BenchModels:
    model: Any  # ExemplarUNet, eval, no grad
    backbone: Any  # Backbone
    adapter: Any  # AMAdapter, zero-initialised (the identity), eval

    @property
    def unet_parameters(self) -> int:
        return sum(p.numel() for p in self.model.unet.parameters())


def build_models(preset: PipelineBenchPreset, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0) -> BenchModels:
    """Random-weight stage-1 model, backbone and a fresh (zero-init) adapter for ``preset``."""
    from amlight.backbone.backbone import freeze
    from amlight.backbone.presets import build_tiny
    from amlight.modules.adapter import AMAdapter
    from amlight.modules.exemplar_unet import build_exemplar_unet

    if preset.backbone == "tiny":
        # Built directly, not through get_backbone's cache: .to() below must not move a shared instance.
        backbone = build_tiny(seed=seed, options=dict(preset.backbone_options))
    elif preset.backbone == "sd15-random":
        backbone = build_sd15_random_backbone(seed=seed)
    else:
        raise ValueError(f"unknown benchmark backbone {preset.backbone!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_exemplar_unet(backbone, preset.num_classes, guidance_channels=preset.guidance_channels)
        adapter = AMAdapter(heads=_self_attention_heads(model), **preset.adapter)
    model = freeze(model).to(device=device, dtype=dtype)
    adapter = freeze(adapter).to(device=device, dtype=dtype)
    if torch.device(device) != backbone.device or dtype != torch.float32:
        backbone.to(device, dtype)  # built on the CPU in float32
    return BenchModels(model, backbone, adapter)


def synthetic_inputs(num_targets: int, resolution: int, num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """One exemplar image in [-1, 1] with its label map, and ``num_targets`` target label maps.

    Labels are blocky region layouts like scenes (the compute does not depend on them); the exemplar
    has every class, so every target region has something to copy.
    """
    g = torch.Generator().manual_seed(seed)
    side = max(4, math.ceil(math.sqrt(num_classes)))

    def upsample(coarse: torch.Tensor) -> torch.Tensor:
        return F.interpolate(coarse.float(), size=(resolution, resolution), mode="nearest")[:, 0].long()

    cells = torch.cat([torch.arange(num_classes), torch.randint(0, num_classes, (side * side - num_classes,), generator=g)])
    exemplar = cells[torch.randperm(side * side, generator=g)].view(1, 1, side, side)
    return {
        "exemplar_image": torch.rand(1, 3, resolution, resolution, generator=g) * 2 - 1,
        "exemplar_labels": upsample(exemplar),
        "target_labels": upsample(torch.randint(0, num_classes, (num_targets, 1, side, side), generator=g)),
    }


# --- counting and timing --------------------------------------------------------------------------

class UNetCounter:
    """Counts calls of the diffusers UNet inside an ExemplarUNet, and the sample rows they evaluate."""

    def __init__(self, model):
        self.unet = model.unet
        self.calls = 0
        self.rows = 0
        self._handle = None

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.calls += 1
        self.rows += int(sample.shape[0])

    def __enter__(self) -> "UNetCounter":
        self._handle = self.unet.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _timer(device: torch.device, into: dict, key: str) -> Iterator[None]:
    _sync(device)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _sync(device)
        into[key] = into.get(key, 0.0) + time.perf_counter() - t0


def initial_noise(backbone, latent_size: tuple[int, int], seed: int) -> torch.Tensor:
    """One target's initial latent (1, C, h, w), drawn as AMPipeline draws a target's: a fresh CPU
    generator seeded with ``seed`` (then moved to the model's device)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((1, backbone.latent_channels, *latent_size), generator=generator)


# --- the two schedules ----------------------------------------------------------------------------

@torch.no_grad()
def reference_schedule(
    model,
    backbone,
    exemplar_image: torch.Tensor,
    exemplar_labels: torch.Tensor,
    target_labels: torch.Tensor,
    steps: int,
    adapter=None,
    mode: str = "adapter",
    guidance_scale: float = 3.0,
    seed: int = 0,
    phases: dict[str, float] | None = None,
    pair_times: list[float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """Draw every target with the exemplar the way the public reference code does: one pair at a time.

    ``exemplar_image`` (1, 3, H, W) in [-1, 1], ``exemplar_labels`` (1, H, W), ``target_labels``
    (N, H, W). Per pair: encode and DDIM-invert the exemplar afresh (``steps`` one-row UNet calls);
    then per step the appearance branch writes the bank from the inverted latent duplicated for both
    CFG halves (one 2-row call; the halves under the unconditional and the conditional prompt) and
    the generation branch runs on [uncond ; cond] (one 2-row call; the unconditional row with
    ``exemplar_keep=False``, i.e. plain self-attention, as in the pipeline), then guidance and a DDIM
    step. That is 5 * ``steps`` UNet row-evaluations per pair. Returns the N images (N, 3, H, W).

    Every pair starts from :func:`initial_noise` for ``seed``, like every target of the pipeline
    under one int seed, so this returns the pipeline's images up to float rounding. ``phases`` accumulates seconds spent in
    "invert" (encode + inversion), "denoise" (appearance + generation) and "decode"; ``pair_times``
    gets each pair's seconds.
    """
    from amlight.pipeline.inversion import ddim_invert

    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    phases = {} if phases is None else phases
    n, (height, width) = target_labels.shape[0], target_labels.shape[-2:]
    f = backbone.latent_downsample
    latent_size = (height // f, width // f)
    use_adapter = adapter if mode == "adapter" else None
    if mode == "adapter" and adapter is None:
        raise ValueError("mode 'adapter' needs an adapter")

    ex_image = exemplar_image.to(device, dtype)
    ex_labels = exemplar_labels.to(device)
    cond = backbone.prompt_batch(1).to(device, dtype)
    uncond = backbone.prompt_batch(1, negative=True).to(device, dtype)
    prompt2 = torch.cat([uncond, cond])
    keep = torch.tensor([False, True], device=device)
    ex_labels2 = torch.cat([ex_labels, ex_labels])
    read = ExemplarRead(settings=mode, exemplar_labels=ex_labels2, exemplar_keep=keep, adapter=use_adapter)
    images = []
    for j in range(n):
        _sync(device)
        t_pair = time.perf_counter()
        labels2 = torch.cat([target_labels[j:j + 1], target_labels[j:j + 1]]).to(device)
        with _timer(device, phases, "invert"):
            # No cache: the exemplar is encoded and inverted again for every pair.
            latents = backbone.encode(ex_image, generator=torch.Generator().manual_seed(seed))
            trajectory = ddim_invert(model, backbone, latents, ex_labels, steps=steps)
        scheduler = backbone.sample_scheduler()
        scheduler.set_timesteps(steps)
        x = initial_noise(backbone, latent_size, seed).to(device, dtype)
        with _timer(device, phases, "denoise"):
            for i, t in enumerate(scheduler.timesteps):
                tt = torch.full((2,), int(t), device=device, dtype=torch.long)
                # Appearance branch on both CFG halves: the inverted latent at this step, twice.
                bank = model.write_bank(torch.cat([trajectory[i], trajectory[i]]), tt, ex_labels2, prompt2)
                out = model(torch.cat([x, x]), tt, labels2, prompt2, read.at(bank))
                out_uncond, out_cond = out.chunk(2)
                out = out_uncond + guidance_scale * (out_cond - out_uncond)
                x = scheduler.step(out.to(x.dtype), t, x).prev_sample
        with _timer(device, phases, "decode"):
            images.append(backbone.decode(x))
        _sync(device)
        elapsed = time.perf_counter() - t_pair
        if pair_times is not None:
            pair_times.append(elapsed)
        if progress is not None:
            progress(f"reference pair {j + 1}/{n}: {elapsed:.2f} s")
    return torch.cat(images)


@torch.no_grad()
def pipeline_schedule(
    pipe,
    exemplar_image: torch.Tensor,
    exemplar_labels: torch.Tensor,
    target_labels: torch.Tensor,
    steps: int,
    mode: str = "adapter",
    guidance_scale: float = 3.0,
    seed: int = 0,
    phases: dict[str, float] | None = None,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, dict[str, int]]:
    """The pipeline's schedule: banks built once for the exemplar, then one batched CFG call per step
    for all targets (or for ``batch_size`` targets at a time). Returns the images and the pipeline's own
    counters (banks + sampling)."""
    phases = {} if phases is None else phases
    device = pipe.device
    pipe.reset_counters()
    with _timer(device, phases, "banks"):
        banks = pipe.build_banks(exemplar_image, exemplar_labels, steps=steps, seed=seed)
    index = torch.zeros(target_labels.shape[0], dtype=torch.long)
    with _timer(device, phases, "sample"):
        images = pipe.draw(target_labels, banks, exemplar_index=index, attention=mode, guidance_scale=guidance_scale, seed=seed,
                      batch_size=batch_size)
    counters = {"bank_calls": banks.unet_calls, "bank_rows": banks.unet_rows,
                "sample_calls": pipe.unet_calls, "sample_rows": pipe.unet_rows}
    return images, counters


def expected_rows(steps: int, targets: int) -> dict[str, float]:
    """UNet row-evaluations of each schedule by formula, for one exemplar and ``targets`` targets."""
    reference = steps + 2 * steps + 2 * steps  # inversion, appearance on both halves, generation
    pipeline_total = 2 * steps + 2 * targets * steps  # inversion + banks once, then 2N rows a step
    return {
        "reference_per_pair": float(reference),
        "reference_total": float(reference * targets),
        "pipeline_total": float(pipeline_total),
        "pipeline_per_pair": pipeline_total / targets,
        "ratio": pipeline_total / targets / reference,
    }


# --- the whole benchmark --------------------------------------------------------------------------

def _machine(threads: int, idle: float | None, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "available_cores": available_cores(),
        "torch_threads": threads,
        "idle_cores_at_start": idle,  # None when --threads was given or /proc/stat is missing
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
    }
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except Exception:  # pragma: no cover
        pass
    if device.type == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(device)
    return env


def _peak_rss_bytes() -> int | None:
    try:
        from amlight.benchmarks.train_speed import _ru_maxrss_bytes

        return _ru_maxrss_bytes()
    except Exception:  # pragma: no cover - no resource module
        return None


def pipeline_benchmark(
    preset: str | PipelineBenchPreset = "tiny",
    steps: int | None = None,
    targets: int = 8,
    batch_size: int | None = None,
    repeats: int = 1,
    mode: str = "adapter",
    guidance_scale: float = 3.0,
    resolution: int | None = None,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    threads: int | None = None,
    seed: int = 0,
    warmup: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Count and time the pipeline against the reference schedule (module docstring); a JSON-able record."""
    from amlight.modules.attention_modes import check_mode
    from amlight.pipeline.synthesis import AMPipeline

    wall0 = time.perf_counter()
    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    steps = cfg.steps if steps is None else steps
    resolution = cfg.resolution if resolution is None else resolution
    mode = check_mode(mode)
    if mode == "structure_only":
        raise ValueError("mode structure_only uses no exemplar: there is nothing to compare")
    if steps < 1 or targets < 1 or repeats < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError("steps, targets, batch_size and repeats must be >= 1")
    if guidance_scale == 1.0:
        raise ValueError("guidance_scale 1.0 turns classifier-free guidance off; this benchmark is about CFG on")
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but CUDA is not available")
    say = progress or (lambda message: None)

    idle = None
    if threads is None:
        threads, idle = default_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        say(f"building {cfg.name} models ({cfg.description}) on {dev} {torch_dtype}")
        t0 = time.perf_counter()
        models = build_models(cfg, dev, torch_dtype, seed=seed)
        build_s = time.perf_counter() - t0
        f = models.backbone.latent_downsample
        if resolution % (f * 8):
            raise ValueError(f"resolution {resolution} must be a multiple of {f * 8} for this backbone")
        data = synthetic_inputs(targets, resolution, cfg.num_classes, seed=seed)
        pipe = AMPipeline.from_model(models.model, models.backbone, adapter=models.adapter)
        ex_image, ex_labels, target_labels = data["exemplar_image"], data["exemplar_labels"], data["target_labels"]
        common = dict(mode=mode, guidance_scale=guidance_scale, seed=seed)

        warmup_s = None
        if warmup:
            # Untimed: lazy initialisation (allocator, kernels, oneDNN primitives) must not count.
            # One step and one target each: small, yet every kind of call runs once.
            say("warm-up (1 step, 1 target, untimed)")
            t0 = time.perf_counter()
            pipeline_schedule(pipe, ex_image, ex_labels, target_labels[:1], 1, **common)
            reference_schedule(models.model, models.backbone, ex_image, ex_labels, target_labels[:1], 1,
                               adapter=models.adapter, **common)
            warmup_s = time.perf_counter() - t0

        runs: dict[str, list[dict[str, Any]]] = {"pipeline": [], "reference": []}
        outputs: dict[str, torch.Tensor] = {}

        def run_pipeline() -> dict[str, Any]:
            phases: dict[str, float] = {}
            with UNetCounter(models.model) as counter:
                _sync(dev)
                t = time.perf_counter()
                images, counters = pipeline_schedule(pipe, ex_image, ex_labels, target_labels, steps,
                                                     phases=phases, batch_size=batch_size, **common)
                _sync(dev)
                total = time.perf_counter() - t
            outputs["pipeline"] = images.float().cpu()
            return {"total_s": total, "phases_s": phases, "unet_calls": counter.calls, "unet_rows": counter.rows,
                    "pipeline_counters": counters}

        def run_reference() -> dict[str, Any]:
            phases: dict[str, float] = {}
            pair_times: list[float] = []
            with UNetCounter(models.model) as counter:
                _sync(dev)
                t = time.perf_counter()
                images = reference_schedule(models.model, models.backbone, ex_image, ex_labels, target_labels, steps,
                                            adapter=models.adapter, phases=phases, pair_times=pair_times,
                                            progress=say, **common)
                _sync(dev)
                total = time.perf_counter() - t
            outputs["reference"] = images.float().cpu()
            return {"total_s": total, "phases_s": phases, "pair_s": pair_times,
                    "unet_calls": counter.calls, "unet_rows": counter.rows}

        schedules = {"pipeline": run_pipeline, "reference": run_reference}
        for r in range(repeats):
            # Alternate which schedule goes first, so a drift in background load hits both alike.
            order = ["pipeline", "reference"] if r % 2 == 0 else ["reference", "pipeline"]
            for name in order:
                say(f"repeat {r + 1}/{repeats}: {name}, {targets} targets, {steps} steps")
                record = schedules[name]()
                runs[name].append(record)
                say(f"repeat {r + 1}/{repeats}: {name} took {record['total_s']:.2f} s "
                    f"({record['unet_rows']} UNet rows in {record['unet_calls']} calls)")
        peak_cuda = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    finally:
        torch.set_num_threads(previous_threads)

    expected = expected_rows(steps, targets)
    per_pair_rows = {name: runs[name][0]["unet_rows"] / targets for name in runs}
    evals_ratio = per_pair_rows["pipeline"] / per_pair_rows["reference"]
    median_s = {name: statistics.median(r["total_s"] for r in runs[name]) for name in runs}
    per_pair_s = {name: median_s[name] / targets for name in runs}
    speedup = per_pair_s["reference"] / per_pair_s["pipeline"]
    diff = float((outputs["pipeline"] - outputs["reference"]).abs().max())
    tolerance = MATCH_TOLERANCE.get(torch_dtype, 1e-3)
    p_counters = runs["pipeline"][0]["pipeline_counters"]

    schedules_record = {}
    for name in runs:
        schedules_record[name] = {
            "unet_calls_total": runs[name][0]["unet_calls"],
            "unet_rows_total": runs[name][0]["unet_rows"],
            "unet_rows_per_pair": per_pair_rows[name],
            "seconds_total_median": median_s[name],
            "seconds_per_pair": per_pair_s[name],
            "pairs_per_s": 1.0 / per_pair_s[name],
            "runs": runs[name],
        }
    schedules_record["pipeline"]["counters_agree"] = (
        p_counters["bank_rows"] + p_counters["sample_rows"] == runs["pipeline"][0]["unet_rows"]
    )

    latent = resolution // models.backbone.latent_downsample
    return {
        "benchmark": "pipeline",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": {**_machine(threads, idle, dev, torch_dtype), "peak_rss_bytes": _peak_rss_bytes(),
                        "peak_cuda_bytes": peak_cuda},
        "config": {
            "preset": cfg.name,
            "description": cfg.description,
            "preset_config": asdict(cfg),
            "resolution": resolution,
            "latent_size": [latent, latent],
            "latent_channels": models.backbone.latent_channels,
            "num_classes": cfg.num_classes,
            "steps": steps,
            "default_steps": cfg.steps,
            "exemplars": 1,
            "targets": targets,
            "batch_size": min(batch_size or targets, targets),
            "guidance_scale": guidance_scale,
            "cfg": True,
            "mode": mode,
            "adapter": {**models.adapter.config, "init": "zero (identity), still computed"},
            "unet_parameters": models.unet_parameters,
            "repeats": repeats,
            "seed": seed,
            "warmup": warmup,
        },
        "schedules": schedules_record,
        "evals": {
            "pipeline_per_pair": per_pair_rows["pipeline"],
            "reference_per_pair": per_pair_rows["reference"],
            "ratio": evals_ratio,
            "goal": EVALS_RATIO_GOAL,
            "goal_met": evals_ratio <= EVALS_RATIO_GOAL,
            "expected": expected,
            "match_formula": (abs(per_pair_rows["pipeline"] - expected["pipeline_per_pair"]) < 1e-9
                              and abs(per_pair_rows["reference"] - expected["reference_per_pair"]) < 1e-9),
        },
        "time": {
            "pipeline_s_per_pair": per_pair_s["pipeline"],
            "reference_s_per_pair": per_pair_s["reference"],
            "speedup": speedup,
            "goal": SPEEDUP_GOAL,
            "goal_met": speedup >= SPEEDUP_GOAL,
        },
        "agreement": {"max_abs_diff": diff, "tolerance": tolerance, "match": diff <= tolerance},
        "timings_s": {"build_models": build_s, "warmup": warmup_s, "wall": time.perf_counter() - wall0},
    }


def format_table(result: dict[str, Any]) -> str:
    cfg, env, ev, tm = result["config"], result["environment"], result["evals"], result["time"]
    sch = result["schedules"]
    latent = cfg["latent_size"]
    batch = cfg.get("batch_size", cfg["targets"])
    lines = [
        f"amlight benchmark pipeline: preset {cfg['preset']} ({cfg['description']}), "
        f"{cfg['resolution']}x{cfg['resolution']} (latent {latent[0]}x{latent[1]}x{cfg['latent_channels']}), "
        f"{cfg['num_classes']} classes",
        f"1 exemplar x {cfg['targets']} targets, {cfg['steps']} DDIM steps (preset default {cfg['default_steps']}), "
        f"CFG {cfg['guidance_scale']} on, mode {cfg['mode']} (fresh zero-init adapter, still computed), "
        f"{env['device']} {env['dtype']}, torch threads {env['torch_threads']} of {env['available_cores']} cores"
        + (f" ({env['idle_cores_at_start']:.1f} idle at start)" if env.get("idle_cores_at_start") is not None else ""),
        f"reference = per pair: fresh encode + {cfg['steps']}-step inversion, appearance branch on both CFG halves, "
        f"no reuse; pipeline = banks once + one CFG call per step over 2 x {batch} rows "
        f"({cfg['targets']} targets, --batch-size {batch})",
        "",
    ]
    goal_e = f"(goal <={ev['goal']})"
    goal_t = f"(goal >={tm['goal']:g}x)"
    head1 = f"{'':<12} {'':>5} {'':>7} | {'UNet evals/pair':<36} | {'s/pair':<38}"
    head2 = (f"{'preset':<12} {'steps':>5} {'targets':>7} | {'pipeline':>8} {'reference':>9} {'ratio ' + goal_e:>17} | "
             f"{'pipeline':>8} {'reference':>9} {'speedup ' + goal_t:>19}")
    ratio = f"{ev['ratio']:.3f} {'met' if ev['goal_met'] else 'NOT met'}"
    speed = f"{tm['speedup']:.2f}x {'met' if tm['goal_met'] else 'NOT met'}"
    row = (f"{cfg['preset']:<12} {cfg['steps']:>5} {cfg['targets']:>7} | {ev['pipeline_per_pair']:>8.2f} "
           f"{ev['reference_per_pair']:>9.2f} {ratio:>17} | {tm['pipeline_s_per_pair']:>8.3f} "
           f"{tm['reference_s_per_pair']:>9.3f} {speed:>19}")
    lines += [head1, head2, "-" * len(head2), row, ""]
    p, r = sch["pipeline"], sch["reference"]
    pp, rp = p["runs"][0]["phases_s"], r["runs"][0]["phases_s"]
    lines.append(f"pipeline : {p['unet_rows_total']} UNet rows in {p['unet_calls_total']} calls, "
                 f"{p['seconds_total_median']:.2f} s for all {cfg['targets']} "
                 f"(banks {pp.get('banks', 0):.2f} s, sampling + decode {pp.get('sample', 0):.2f} s; first repeat)")
    lines.append(f"reference: {r['unet_rows_total']} UNet rows in {r['unet_calls_total']} calls, "
                 f"{r['seconds_total_median']:.2f} s for all {cfg['targets']} "
                 f"(encode + inversion {rp.get('invert', 0):.2f} s, appearance + generation {rp.get('denoise', 0):.2f} s, "
                 f"decode {rp.get('decode', 0):.2f} s; first repeat)")
    lines.append(f"evals by formula: reference {ev['expected']['reference_per_pair']:g}/pair "
                 f"(steps + 2*steps + 2*steps), pipeline {ev['expected']['pipeline_per_pair']:g}/pair "
                 f"((2*steps + 2*targets*steps)/targets): {'match' if ev['match_formula'] else 'MISMATCH'}")
    ag = result["agreement"]
    lines.append(f"same images: max |reference - pipeline| = {ag['max_abs_diff']:.2e} "
                 f"(tolerance {ag['tolerance']:g}: {'match' if ag['match'] else 'MISMATCH'})")
    ts = result["timings_s"]
    lines.append(f"timed repeats: {cfg['repeats']} (median), schedules alternating; wall {ts['wall']:.1f} s "
                 f"(model build {ts['build_models']:.1f} s"
                 + (f", warm-up {ts['warmup']:.1f} s" if ts.get("warmup") is not None else "") + ")"
                 + (f"; peak RSS {env['peak_rss_bytes'] / (1 << 30):.2f} GiB" if env.get("peak_rss_bytes") else ""))
    return "\n".join(lines)
