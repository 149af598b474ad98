"""``python -m amlight benchmark gpu``: the SD 1.5 speed and memory figures, in one run on one CUDA device.

Runs on a bare machine after ``pip install -e .``: it first prints the torch, CUDA runtime and driver
versions (and stops with one line when the driver cannot run this torch's CUDA, amlight.utils.cuda_runtime),
then writes (or reuses) the SD 1.5 stand-in (exact architecture, random weights) and loads it through
the ``sd15`` preset, the user's path. Sections, most wanted first, each timed after a warm-up, each
with its peak GPU memory (``torch.cuda.max_memory_allocated``):

1. generate: AMPipeline at 512 px, bf16, 20 DDIM steps, classifier-free guidance, modes
   structure_only / augmented / adapter, batch 1 and 4: seconds per image (exemplar inversion and
   banks included, once per batch). Every image, warm-ups included, is checked for NaN / inf.
2. training: steps/s of stage 1 and stage 2 at the shipped configs' batch sizes
   (configs/sd15/cityscapes/stage{1,2}.yaml), bf16 autocast (bf16-mixed: fp32 weights, AdamW), the
   stages' own ``denoising_loss``; the shipped settings (gradient checkpointing, checkpoint_attention
   on) first, then each with it off.
3. memory options: one adapter / augmented image in fp32 vs bf16, augmented with attention_chunk
   1024, and adapter with the VAE offloaded to the CPU (images checked for NaN too).
4. conv4d: the center-pivot 4D conv at SD size (2 rows, 9 -> 16 channels, 32^4) as two conv3d on
   views (amlight's form) vs a reference form that permutes the volume into batches of 2D images
   for conv2d, forward + backward, bf16 on cuDNN (``cudnn.benchmark`` on, then restored); each
   form's bf16 output checked against the fp32 one (pass: within CONV4D_BF16_TOLERANCE).
5. torch.compile of the diffusers UNet (structure_only, batch 2): eager vs compiled, or the error.

Each section has its own deadline, a share of the time budget (default 480 s) plus what earlier
sections left unused, so a slow section cannot starve a later one. Within a section the first row
(in training, both stages' shipped-config rows) always runs; a later row is skipped, and says so,
when the time left is less than the row before it took. ``tiny`` shrinks every model (the test
suite's dry run on the CPU: seconds, numbers meaningless).
"""
from __future__ import annotations

import gc
import math
import os
import platform
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from amlight.backbone.sd15_standin import SD15_TEXT_CONFIG
from amlight.utils.cuda_runtime import CudaVersions, cuda_problem, detect
from amlight.modules.exemplar_context import ExemplarRead

NUM_CLASSES = 19  # Cityscapes / BDD100K train classes, as the shipped SD 1.5 configs
GUIDANCE_CHANNELS = 64  # configs/sd15/*/stage1.yaml
ADAPTER = dict(channels=16, num_layers=3, max_resolution=32)  # configs/sd15/*/stage2.yaml
SHIPPED_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "sd15" / "cityscapes"
# The 4D conv's bf16 output may differ from its fp32 output by this share of the fp32 output's largest
# magnitude. bf16 rounding of inputs, weights and the two partial sums alone gives about 0.5 %
# (measured on the CPU at 4^4 to 16^4, 9 -> 16 channels); 2 % leaves room for cuDNN's algorithms and
# still fails a kernel that computes something else.
CONV4D_BF16_TOLERANCE = 2e-2
# Order and share of the time budget of each section: the figures most wanted first.
SECTIONS = (("generate", 0.30), ("training", 0.35), ("memory_options", 0.15), ("conv4d", 0.05), ("compile", 0.15))
COMPILE_ESTIMATE_S = 60  # inductor's first call on the SD 1.5 UNet: about a minute

TINY_CONFIGS = {
    "unet": dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=[32, 64], layers_per_block=1,
                 down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=32,
                 attention_head_dim=2, norm_num_groups=8),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 16], norm_num_groups=8,
                down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                layers_per_block=1),
    "text_encoder": {**SD15_TEXT_CONFIG, "vocab_size": 600, "hidden_size": 32, "intermediate_size": 37,
                     "projection_dim": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
}
TINY_ADAPTER = dict(channels=4, num_layers=2, max_resolution=4)


class Budget:
    """A deadline ``seconds`` from now."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    @property
    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def fits(self, estimate: float) -> bool:
        """Whether a row expected to take ``estimate`` seconds (the previous row's time) ends in time."""
        return self.left >= estimate


def shipped_batch_size(stage: int, default: int) -> int:
    """``data.init_args.batch_size`` of configs/sd15/cityscapes/stage{stage}.yaml (``default`` in an
    install without the configs folder)."""
    import yaml

    path = SHIPPED_CONFIGS / f"stage{stage}.yaml"
    if not path.is_file():
        return default
    return int(yaml.safe_load(path.read_text())["data"]["init_args"]["batch_size"])


def nonfinite_images(images: torch.Tensor) -> int:
    """How many images of a batch hold a NaN or inf anywhere."""
    return int((~torch.isfinite(images.float())).flatten(1).any(1).sum())


def _error(e: BaseException) -> str:
    text = str(e).splitlines()[0][:300] if str(e) else ""
    if isinstance(e, torch.OutOfMemoryError):
        return f"out of memory: {text}"[:200]
    return f"{type(e).__name__}: {text}"


@contextmanager
def cudnn_flags(**values):
    """Set ``torch.backends.cudnn`` flags (benchmark, allow_tf32) for a block and put the caller's
    values back after it: the flags are process-wide, and what runs after the block (later sections,
    the caller's own code) must not inherit settings it did not ask for."""
    before = {name: getattr(torch.backends.cudnn, name) for name in values}
    for name, value in values.items():
        setattr(torch.backends.cudnn, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(torch.backends.cudnn, name, value)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None  # the CPU dry run has no per-section peak
    return round(torch.cuda.max_memory_allocated(device) / (1 << 30), 2)


def _timed(device: torch.device, fn: Callable[[], Any]) -> float:
    return _timed_call(device, fn)[0]


def _timed_call(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    _sync(device)
    t0 = time.perf_counter()
    value = fn()
    _sync(device)
    return time.perf_counter() - t0, value


def _labels(n: int, size: int, classes: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    side = 8
    coarse = torch.randint(0, classes, (n, 1, side, side), generator=g).float()
    return F.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()


# --- setup ----------------------------------------------------------------------------------------

def load_parts(standin: Path, tiny: bool, device: torch.device, progress):
    """(backbone, random stage-1 model, random adapter), loaded through the sd15 preset."""
    from amlight.backbone.presets import build_sd15
    from amlight.backbone.sd15_standin import write_sd15_standin
    from amlight.modules.adapter import AMAdapter
    from amlight.modules.exemplar_unet import build_exemplar_unet

    write_sd15_standin(standin, configs=TINY_CONFIGS if tiny else None, progress=progress)
    backbone = build_sd15(str(standin), prompt="a photo of a driving scene")
    torch.manual_seed(0)
    model = build_exemplar_unet(backbone, NUM_CLASSES, guidance_channels=16 if tiny else GUIDANCE_CHANNELS)
    heads = {m.heads for n, m in model.unet.named_modules() if n.endswith("attn1")}.pop()
    adapter = AMAdapter(heads=heads, **(TINY_ADAPTER if tiny else ADAPTER))
    with torch.no_grad():  # a trained adapter's last layer is not zero; the cost is the same either way
        for p in adapter.parameters():
            if p.ndim > 1:
                p.normal_(0, 0.01)
    model.requires_grad_(False).eval()
    adapter.requires_grad_(False).eval()
    return backbone, model.to(device), adapter.to(device)


def _cast(backbone, model, adapter, device, dtype) -> None:
    model.to(device=device, dtype=dtype)
    adapter.to(device=device, dtype=dtype)
    backbone.to(device, dtype)


# --- 1 and 3: generate ----------------------------------------------------------------------------

def _generate_once(backbone, model, adapter, device, size, mode, batch, steps, attention_chunk=None):
    from amlight.pipeline.synthesis import AMPipeline

    pipe = AMPipeline.from_model(model, backbone, adapter, attention_chunk=attention_chunk)
    g = torch.Generator().manual_seed(0)
    ex = (torch.rand(1, 3, size, size, generator=g) * 2 - 1).to(device, pipe.dtype)
    ex_labels = _labels(1, size, NUM_CLASSES, 1).to(device)
    targets = _labels(batch, size, NUM_CLASSES, 2)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uncovered classes: random labels, expected
        return pipe.generate(ex, ex_labels, targets, steps=steps, attention=mode, guidance_scale=3.0)


def generate_section(parts, device, size, steps, budget: Budget, progress, tiny: bool = False) -> list[dict]:
    backbone, model, adapter = parts
    _cast(backbone, model, adapter, device, torch.bfloat16)
    rows, last = [], 0.0
    for mode in ("structure_only", "augmented", "adapter"):
        for batch in ((1, 2) if tiny else (1, 4)):
            row = {"mode": mode, "batch": batch}
            if not budget.fits(last):
                rows.append({**row, "skipped": "time budget"})
                continue
            t0 = time.perf_counter()
            try:
                if batch == 1 and not tiny:  # warm-up (cuDNN plans); its images are checked too
                    bad = nonfinite_images(_generate_once(backbone, model, adapter, device, size, mode, 1, 2))
                    if bad:
                        rows.append({**row, "batch": "1 (warm-up)", "nan_images": bad})
                _reset_peak(device)
                seconds, images = _timed_call(
                    device, lambda: _generate_once(backbone, model, adapter, device, size, mode, batch, steps))
                row.update(steps=steps, s_per_image=round(seconds / batch, 3), peak_gib=_peak_gib(device),
                           nan_images=nonfinite_images(images))
                progress(f"generate {mode} batch {batch}: {seconds / batch:.2f} s/image, "
                         f"{row['nan_images']} of {batch} images with NaN/inf")
            except Exception as e:  # one mode's failure must not hide the other modes' figures
                row["error"] = _error(e)
                progress(f"generate {mode} batch {batch} FAILED: {row['error']}")
            rows.append(row)
            last = time.perf_counter() - t0
    return rows


def memory_section(parts, device, size, budget: Budget, progress, steps: int = 4) -> list[dict]:
    """One image per case; peak memory does not depend on the number of steps, so 4 suffice."""
    backbone, model, adapter = parts
    cases = [
        ("adapter, fp32", "adapter", torch.float32, None, False),
        ("adapter, bf16", "adapter", torch.bfloat16, None, False),
        ("augmented, fp32", "augmented", torch.float32, None, False),
        ("augmented, bf16", "augmented", torch.bfloat16, None, False),
        ("augmented, bf16, attention_chunk 1024", "augmented", torch.bfloat16, 1024, False),
        ("adapter, bf16, offload_vae", "adapter", torch.bfloat16, None, True),
    ]
    rows, last = [], 0.0
    for name, mode, dtype, chunk, offload in cases:
        if not budget.fits(last):
            rows.append({"case": name, "skipped": "time budget"})
            continue
        t0 = time.perf_counter()
        try:
            _cast(backbone, model, adapter, device, dtype)
            if offload and backbone.vae is not None:
                backbone.vae.to("cpu")  # as AMPipeline.from_checkpoints(offload_vae=True) does
            _reset_peak(device)
            seconds, images = _timed_call(
                device, lambda: _generate_once(backbone, model, adapter, device, size, mode, 1, steps, chunk))
            rows.append({"case": name, "steps": steps, "s_per_image": round(seconds, 3), "peak_gib": _peak_gib(device),
                         "nan_images": nonfinite_images(images)})
            progress(f"memory {name}: peak {rows[-1]['peak_gib']} GiB")
        except Exception as e:  # out of memory in one case is a finding; the next case may fit
            rows.append({"case": name, "error": _error(e)})
            progress(f"memory {name} FAILED: {rows[-1]['error']}")
        last = time.perf_counter() - t0
    _cast(backbone, model, adapter, device, torch.bfloat16)
    return rows


# --- 2: training ----------------------------------------------------------------------------------

def _batch(n: int, size: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    labels = _labels(n, size, NUM_CLASSES, 3)
    return {"image": (torch.rand(n, 3, size, size, generator=g) * 2 - 1).to(device),
            "labels": labels.to(device),
            "exemplar_image": (torch.rand(n, 3, size, size, generator=g) * 2 - 1).to(device),
            "exemplar_labels": labels.flip(-1).to(device)}


def _train_rate(stage, device, size, batch_size, steps, warmup) -> tuple[float, float | None]:
    params = [p for p in stage.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    batch = _batch(batch_size, size, device)
    stage.train()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = stage.denoising_loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    _reset_peak(device)
    seconds = _timed(device, lambda: [step() for _ in range(steps)])
    peak = _peak_gib(device)
    del opt
    return steps / seconds, peak


def _stage1_checkpoint(stage, path: Path) -> Path:
    import lightning as L

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0,
                        accelerator="cpu", devices=1)
    trainer.strategy.connect(stage)
    trainer.save_checkpoint(path)
    return path


# (stage, its memory-saving switch on?): the shipped configs' settings first, so they always run.
TRAINING_ROWS = ((1, True), (2, True), (1, False), (2, False))


def _build_stage(number: int, switch: bool, standin: Path, tiny: bool, ckpt: Path | None):
    from amlight.stages import AdapterStage, GenerationStage

    torch.manual_seed(0)
    if number == 1:
        stage = GenerationStage(num_classes=NUM_CLASSES, backbone="sd15", backbone_path=str(standin),
                                prompt="a photo of a driving scene", guidance_channels=16 if tiny else GUIDANCE_CHANNELS,
                                trainable="attention", attention="augmented", gradient_checkpointing=switch)
        stage.backbone.to("cpu", torch.float32)  # the shared backbone may be bf16 from the generate section
        return stage
    a = TINY_ADAPTER if tiny else ADAPTER
    return AdapterStage(stage1_checkpoint=str(ckpt), num_classes=NUM_CLASSES, checkpoint_attention=switch,
                        adapter_channels=a["channels"], adapter_layers=a["num_layers"],
                        max_resolution=a["max_resolution"])


def training_section(standin: Path, tiny: bool, device, size, budget: Budget, work: Path, progress,
                     steps: int = 5, warmup: int = 2) -> list[dict]:
    batches = {1: shipped_batch_size(1, 4), 2: shipped_batch_size(2, 2)}
    switch_name = {1: "gradient_checkpointing", 2: "checkpoint_attention"}
    rows, ckpt, last = [], None, 0.0
    for number, switch in TRAINING_ROWS:
        row = {"stage": number, switch_name[number]: switch, "batch": batches[number]}
        shipped = switch  # both shipped configs turn their switch on
        if number == 2 and ckpt is None:
            rows.append({**row, "skipped": "no stage-1 checkpoint (stage 1 failed)"})
            continue
        if not shipped and not budget.fits(last):
            rows.append({**row, "skipped": "time budget"})
            continue
        t0 = time.perf_counter()
        stage = None
        try:
            stage = _build_stage(number, switch, standin, tiny, ckpt)
            if number == 1 and ckpt is None:
                ckpt = _stage1_checkpoint(stage, work / "stage1.ckpt")
            stage.to(device)
            rate, peak = _train_rate(stage, device, size, batches[number], steps, warmup)
            row.update(it_per_s=round(rate, 3), peak_gib=peak)
        except Exception as e:  # out of memory in one setting is a finding; the others may fit
            row["error"] = _error(e)
        rows.append(row)
        progress(f"train stage {number}, {switch_name[number]} {switch}: {row}")
        del stage
        gc.collect()  # the checkpoint's Trainer and the stage reference each other
        _reset_peak(device)
        last = time.perf_counter() - t0
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
    return rows


# --- 4: conv4d ------------------------------------------------------------------------------------

def center_pivot_permute(x: torch.Tensor, wt: torch.Tensor, we: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Reference form of the center-pivot 4D conv: permute the volume into batches of 2D images.

    The target conv runs conv2d over (h1, w1) with the exemplar positions folded into the batch,
    the exemplar conv over (h2, w2) with the target positions folded in; both results are permuted
    back and summed. The same numbers as :func:`amlight.modules.conv4d.center_pivot_views`."""
    b, c, h1, w1, h2, w2 = x.shape
    co, pad = wt.shape[0], wt.shape[-1] // 2
    xt = x.permute(0, 4, 5, 1, 2, 3).reshape(b * h2 * w2, c, h1, w1)
    yt = F.conv2d(xt, wt, padding=pad).reshape(b, h2, w2, co, h1, w1).permute(0, 3, 4, 5, 1, 2)
    xe = x.permute(0, 2, 3, 1, 4, 5).reshape(b * h1 * w1, c, h2, w2)
    ye = F.conv2d(xe, we, padding=pad).reshape(b, h1, w1, co, h2, w2).permute(0, 3, 1, 2, 4, 5)
    return yt + ye + bias.view(1, co, 1, 1, 1, 1)


def bf16_check(name: str, fn, x: torch.Tensor, wt: torch.Tensor, we: torch.Tensor, bias: torch.Tensor,
               reference: torch.Tensor, tolerance: float = CONV4D_BF16_TOLERANCE) -> dict:
    """A form's bf16 output against the fp32 ``reference``: max |difference| over max |reference|."""
    with torch.no_grad():
        y = fn(*(t.detach().to(torch.bfloat16) for t in (x, wt, we, bias))).float()
    error = float((y - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
    if not math.isfinite(error):  # NaN compares False with everything: say fail, not pass
        error = float("inf")
    return {"form": f"bf16 vs fp32: {name}", "max_rel_error": round(error, 5), "tolerance": tolerance,
            "pass": error <= tolerance}


def conv4d_section(device, tiny: bool, budget: Budget, progress, repeats: int = 10,
                   forms: dict[str, Callable] | None = None) -> list[dict]:
    """``forms`` replaces the two forms (tests inject a broken one)."""
    from amlight.modules.conv4d import center_pivot_views

    if forms is None:
        forms = {"3D convs on views (amlight)": center_pivot_views, "permuted 2D convs": center_pivot_permute}
    side = 4 if tiny else 32
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    c_in, c_out = 9, 16  # 8 heads + the cost channel -> the adapter's 16 channels
    x0 = torch.randn(2, c_in, side, side, side, side, generator=g).to(device)
    wt0 = (torch.randn(c_out, c_in, 3, 3, generator=g) * 0.1).to(device)
    we0 = (torch.randn(c_out, c_in, 3, 3, generator=g) * 0.1).to(device)
    bias0 = (torch.randn(c_out, generator=g) * 0.1).to(device)
    # What bf16 is checked against: true fp32 (cuDNN convolutions default to TF32, a 10-bit mantissa).
    with torch.no_grad(), cudnn_flags(allow_tf32=False):
        reference = center_pivot_views(x0, wt0, we0, bias0).float()
    wt, we, bias = (t.to(dtype).requires_grad_() for t in (wt0, we0, bias0))
    outputs, rows, checks, last = {}, [], [], 0.0
    # On for the timings (the 3D convs' algorithm choice is what is measured), back to the caller's
    # value afterwards: the flag is process-wide.
    with cudnn_flags(benchmark=True):
        for name, fn in forms.items():
            if not budget.fits(last):
                rows.append({"form": name, "skipped": "time budget"})
                continue
            t0 = time.perf_counter()
            checks.append(bf16_check(name, fn, x0, wt0, we0, bias0, reference))
            x = x0.to(dtype).requires_grad_()

            def run():
                y = fn(x, wt, we, bias)
                y.float().square().mean().backward()
                return y

            outputs[name] = run().detach().float()
            _reset_peak(device)
            seconds = _timed(device, lambda: [run() for _ in range(repeats)])
            rows.append({"form": name, "shape": list(x0.shape), "dtype": str(dtype).removeprefix("torch."),
                         "ms_forward_backward": round(1000 * seconds / repeats, 2), "peak_gib": _peak_gib(device)})
            progress(f"conv4d {name}: {rows[-1]['ms_forward_backward']} ms; {checks[-1]}")
            last = time.perf_counter() - t0
    if len(outputs) == 2:
        a, b = outputs.values()
        rows.append({"form": "max |difference|", "value": float((a - b).abs().max())})
    return rows + checks


# --- 5: torch.compile -----------------------------------------------------------------------------

def compile_section(parts, device, size, tiny: bool, budget: Budget, progress, repeats: int = 5,
                    backend: str | None = None) -> list[dict]:
    """Eager vs ``torch.compile`` (inductor) UNet calls. The tiny dry run times eager only unless a
    ``backend`` is given: tracing even the tiny UNet takes tens of seconds on a CPU."""
    backbone, model, adapter = parts
    _cast(backbone, model, adapter, device, torch.bfloat16)
    f = backbone.latent_downsample
    latents = torch.randn(2, backbone.latent_channels, size // f, size // f, device=device, dtype=torch.bfloat16)
    labels = _labels(2, size, NUM_CLASSES, 4).to(device)
    t = torch.full((2,), 500, device=device, dtype=torch.long)
    prompt = backbone.prompt_batch(2).to(device, torch.bfloat16)
    unet = model.unet

    # The generation branch without an exemplar: what is timed is the UNet itself.
    plain = ExemplarRead(settings="structure_only")

    def forward():
        with torch.no_grad():
            return model(latents, t, labels, prompt, plain)

    forward()
    eager = _timed(device, lambda: [forward() for _ in range(repeats)]) / repeats
    rows = [{"unet": "eager", "ms_per_call": round(1000 * eager, 2)}]
    if tiny and backend is None:
        rows.append({"unet": "torch.compile", "skipped": "tiny dry run"})
        return rows
    if not budget.fits(COMPILE_ESTIMATE_S):
        rows.append({"unet": "torch.compile", "skipped": "time budget"})
        return rows
    backend = backend or "inductor"
    name = f"torch.compile ({backend if isinstance(backend, str) else getattr(backend, '__name__', 'custom')})"
    try:
        model.unet = torch.compile(unet, backend=backend)
        t0 = time.perf_counter()
        forward()
        _sync(device)
        compile_s = time.perf_counter() - t0
        compiled = _timed(device, lambda: [forward() for _ in range(repeats)]) / repeats
        rows.append({"unet": name, "ms_per_call": round(1000 * compiled, 2),
                     "first_call_s": round(compile_s, 1), "speedup": round(eager / compiled, 2)})
    except Exception as e:  # a compile failure is a result to report, not a crash
        rows.append({"unet": name, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"})
    finally:
        model.unet = unet
    progress(f"compile: {rows[-1]}")
    return rows


# --- all ------------------------------------------------------------------------------------------

def check_cuda(dev: torch.device, versions: CudaVersions) -> None:
    """Raise a one-line RuntimeError when ``dev`` is CUDA and this torch cannot use it."""
    if dev.type != "cuda":
        return
    problem = cuda_problem(versions)
    if problem:
        raise RuntimeError(f"benchmark gpu: {problem}")
    if not versions.available:
        raise RuntimeError("benchmark gpu: no CUDA device is available (torch.cuda.is_available() is False); "
                           "--device cpu --tiny is the dry run")


def section_deadlines(budget_s: float) -> dict[str, float]:
    return {name: share * budget_s for name, share in SECTIONS}


def gpu_check(device: str = "cuda", standin: str | Path = "runs/sd15-standin", tiny: bool = False,
              budget_s: float = 480.0, work: str | Path = "runs/benchmarks/gpu_check_work",
              progress: Callable[[str], None] = lambda m: None, versions: CudaVersions | None = None,
              sections: dict[str, Callable[..., list[dict]]] | None = None) -> dict:
    """``versions`` (default: this machine's) and ``sections`` (name -> function of the section's
    :class:`Budget`, replacing the real one) are for tests."""
    dev = torch.device(device)
    versions = versions or detect()
    progress(versions.line())  # first: the line that explains most first-contact failures
    check_cuda(dev, versions)
    if tiny and dev.type == "cpu":
        # Tiny ops: a second thread only waits at every op's barrier when another process holds the core.
        torch.set_num_threads(1)
    start = time.perf_counter()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    size, steps = (32, 1) if tiny else (512, 20)
    record: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": versions.torch, "cuda_runtime": versions.runtime and ".".join(map(str, versions.runtime)),
        "cuda_driver": versions.driver and ".".join(map(str, versions.driver)), "tiny": tiny, "resolution": size,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    parts = None
    if sections is None:
        t0 = time.perf_counter()
        parts = load_parts(Path(standin), tiny, dev, progress)
        record["setup_s"] = round(time.perf_counter() - t0, 1)
        sections = {
            "generate": lambda b: generate_section(parts, dev, size, steps, b, progress, tiny),
            # The inference models leave the device first: the training peaks are the stages' own.
            "training": lambda b: (_cast(*parts, torch.device("cpu"), torch.float32),
                                   training_section(Path(standin), tiny, dev, size, b, work, progress,
                                                    steps=1 if tiny else 5, warmup=0 if tiny else 2))[1],
            "memory_options": lambda b: memory_section(parts, dev, size, b, progress, steps=1 if tiny else 4),
            "conv4d": lambda b: conv4d_section(dev, tiny, b, progress, repeats=1 if tiny else 10),
            "compile": lambda b: compile_section(parts, dev, size, tiny, b, progress, repeats=1 if tiny else 5),
        }
    carry = 0.0
    for name, share in SECTIONS:
        # Its own share, plus what the sections before it left unused (never less than its share).
        deadline = Budget(share * budget_s + carry)
        record[f"{name}_deadline_s"] = round(deadline.seconds, 1)
        try:
            record[name] = sections[name](deadline)
        except Exception as e:  # one broken section must not hide the others' figures
            record[name] = [{"error": _error(e), "traceback": traceback.format_exc()[-2000:]}]
            progress(f"{name} FAILED: {record[name][0]['error']}")
        record[f"{name}_s"] = round(time.perf_counter() - deadline.start, 1)
        carry = max(0.0, deadline.left)
    record["total_s"] = round(time.perf_counter() - start, 1)
    return record


def failures(record: dict) -> list[str]:
    """Sections with a row that failed: an error other than running out of memory (a finding, not a
    bug), an image with NaN / inf, or a bf16 check outside its tolerance. A compile error is a finding."""
    failed = []
    for name in ("generate", "training", "memory_options", "conv4d"):
        for row in record.get(name) or []:
            if (("error" in row and "out of memory" not in str(row["error"])) or row.get("nan_images")
                    or row.get("pass") is False):
                failed.append(name)
                break
    return failed


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    return str(value)


def format_table(record: dict) -> str:
    lines = [f"# benchmark gpu: {record['device']} (torch {record['torch']}, CUDA runtime "
             f"{record['cuda_runtime'] or 'none'}, driver CUDA {record['cuda_driver'] or 'unknown'}, "
             f"{record['resolution']} px{', TINY dry run: numbers meaningless' if record['tiny'] else ''})", ""]
    for section, _ in SECTIONS:
        rows = record.get(section) or []
        keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "traceback"]
        took, deadline = record.get(section + "_s", "-"), record.get(section + "_deadline_s", "-")
        lines += [f"## {section} ({took} s of its {deadline} s)", "",
                  "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in rows]
        lines.append("")
    if any("max_rel_error" in r for r in record.get("conv4d") or []):
        lines += [f"conv4d bf16 check: pass when max |bf16 - fp32| <= {CONV4D_BF16_TOLERANCE:g} x max |fp32|", ""]
    lines.append(f"total {record['total_s']} s (setup {record.get('setup_s', '-')} s)")
    return "\n".join(lines)
