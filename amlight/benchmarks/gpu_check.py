"""``python -m amlight benchmark gpu``: the SD 1.5 speed and memory figures, in one run on one CUDA device.

Runs on a bare machine after ``pip install -e .``: it writes (or reuses) the SD 1.5 stand-in (exact
architecture, random weights) and loads it through the ``sd15`` preset, the user's path. Sections,
each timed after a warm-up, each with its peak GPU memory (``torch.cuda.max_memory_allocated``):

1. generate: AMPipeline at 512 px, bf16, 20 DDIM steps, classifier-free guidance, modes
   structure_only / augmented / adapter, batch 1 and 4: seconds per image (exemplar inversion and
   banks included, once per batch).
2. memory options: one adapter / augmented image in fp32 vs bf16, augmented with attention_chunk
   1024, and adapter with the VAE offloaded to the CPU.
3. training: steps/s of stage 1 (the shipped config: trainable attention, gradient checkpointing
   on and off) and stage 2 (checkpoint_attention on and off), batch 2, bf16 autocast (bf16-mixed:
   fp32 weights, AdamW), the stages' own ``denoising_loss``.
4. conv4d: the center-pivot 4D conv at SD size (2 rows, 9 -> 16 channels, 32^4) as two conv3d on
   views (amlight's form) vs a reference form that permutes the volume into batches of 2D images
   for conv2d, forward + backward, bf16 on cuDNN; outputs compared.
5. torch.compile of the diffusers UNet (structure_only, batch 2): eager vs compiled, or the error.

A time budget (default 480 s) skips what does not fit and says so. ``tiny`` shrinks every model
(the test suite's dry run on the CPU: seconds, numbers meaningless).
"""
from __future__ import annotations

import gc
import math
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from amlight.backbone.sd15_standin import SD15_TEXT_CONFIG
from amlight.modules.exemplar_context import ExemplarRead

NUM_CLASSES = 19  # Cityscapes / BDD100K train classes, as the shipped SD 1.5 configs
GUIDANCE_CHANNELS = 64  # configs/sd15/*/stage1.yaml
ADAPTER = dict(channels=16, num_layers=3, max_resolution=32)  # configs/sd15/*/stage2.yaml

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
    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    @property
    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


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
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


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


# --- 1 and 2: generate ----------------------------------------------------------------------------

def _generate_once(backbone, model, adapter, device, size, mode, batch, steps, attention_chunk=None):
    from amlight.pipeline.synthesis import AMPipeline

    pipe = AMPipeline(model, backbone, adapter, attention_chunk=attention_chunk)
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
    rows = []
    for mode in ("structure_only", "augmented", "adapter"):
        if not tiny:
            _generate_once(backbone, model, adapter, device, size, mode, 1, 2)  # warm-up (cuDNN plans)
        for batch in ((1, 2) if tiny else (1, 4)):
            if budget.left < 30:
                rows.append({"mode": mode, "batch": batch, "skipped": "time budget"})
                continue
            _reset_peak(device)
            seconds = _timed(device, lambda: _generate_once(backbone, model, adapter, device, size, mode, batch, steps))
            rows.append({"mode": mode, "batch": batch, "steps": steps, "s_per_image": round(seconds / batch, 3),
                         "peak_gib": _peak_gib(device)})
            progress(f"generate {mode} batch {batch}: {seconds / batch:.2f} s/image")
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
    rows = []
    for name, mode, dtype, chunk, offload in cases:
        if budget.left < 30:
            rows.append({"case": name, "skipped": "time budget"})
            continue
        _cast(backbone, model, adapter, device, dtype)
        if offload and backbone.vae is not None:
            backbone.vae.to("cpu")  # as AMPipeline.from_checkpoints(offload_vae=True) does
        _reset_peak(device)
        seconds = _timed(device, lambda: _generate_once(backbone, model, adapter, device, size, mode, 1, steps, chunk))
        rows.append({"case": name, "steps": steps, "s_per_image": round(seconds, 3), "peak_gib": _peak_gib(device)})
        progress(f"memory {name}: peak {rows[-1]['peak_gib']} GiB")
    _cast(backbone, model, adapter, device, torch.bfloat16)
    return rows


# --- 3: training ----------------------------------------------------------------------------------

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


def training_section(standin: Path, tiny: bool, device, size, budget: Budget, work: Path, progress,
                     steps: int = 5, warmup: int = 2) -> list[dict]:
    from amlight.stages import AdapterStage, GenerationStage

    rows = []
    ckpt = None
    for checkpointing in (True, False):
        if budget.left < 60:
            rows.append({"stage": 1, "gradient_checkpointing": checkpointing, "skipped": "time budget"})
            continue
        torch.manual_seed(0)
        stage = GenerationStage(num_classes=NUM_CLASSES, backbone="sd15", backbone_path=str(standin),
                                prompt="a photo of a driving scene", guidance_channels=16 if tiny else GUIDANCE_CHANNELS,
                                trainable="attention", attention="augmented", gradient_checkpointing=checkpointing)
        stage.backbone.to("cpu", torch.float32)  # the shared backbone may be bf16 from the generate sections
        if ckpt is None:
            ckpt = _stage1_checkpoint(stage, work / "stage1.ckpt")
        stage.to(device)
        try:
            rate, peak = _train_rate(stage, device, size, 2, steps, warmup)
            rows.append({"stage": 1, "gradient_checkpointing": checkpointing, "it_per_s": round(rate, 3),
                         "peak_gib": peak})
        except torch.OutOfMemoryError as e:
            rows.append({"stage": 1, "gradient_checkpointing": checkpointing, "error": f"out of memory: {e}"[:200]})
        progress(f"train stage 1, gradient_checkpointing {checkpointing}: {rows[-1]}")
        del stage
        gc.collect()  # the checkpoint's Trainer and the stage reference each other
        _reset_peak(device)
    if ckpt is None:
        return rows
    for checkpoint_attention in (True, False):
        if budget.left < 60:
            rows.append({"stage": 2, "checkpoint_attention": checkpoint_attention, "skipped": "time budget"})
            continue
        torch.manual_seed(0)
        a = TINY_ADAPTER if tiny else ADAPTER
        stage = AdapterStage(stage1_checkpoint=str(ckpt), num_classes=NUM_CLASSES,
                             checkpoint_attention=checkpoint_attention, adapter_channels=a["channels"],
                             adapter_layers=a["num_layers"], max_resolution=a["max_resolution"])
        stage.to(device)
        try:
            rate, peak = _train_rate(stage, device, size, 2, steps, warmup)
            rows.append({"stage": 2, "checkpoint_attention": checkpoint_attention, "it_per_s": round(rate, 3),
                         "peak_gib": peak})
        except torch.OutOfMemoryError as e:
            rows.append({"stage": 2, "checkpoint_attention": checkpoint_attention, "error": f"out of memory: {e}"[:200]})
        progress(f"train stage 2, checkpoint_attention {checkpoint_attention}: {rows[-1]}")
        del stage
        gc.collect()
        _reset_peak(device)
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


def conv4d_section(device, tiny: bool, budget: Budget, progress, repeats: int = 10) -> list[dict]:
    from amlight.modules.conv4d import center_pivot_views

    side = 4 if tiny else 32
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    c_in, c_out = 9, 16  # 8 heads + the cost channel -> the adapter's 16 channels
    x0 = torch.randn(2, c_in, side, side, side, side, generator=g).to(device, dtype)
    wt = (torch.randn(c_out, c_in, 3, 3, generator=g) * 0.1).to(device, dtype).requires_grad_()
    we = (torch.randn(c_out, c_in, 3, 3, generator=g) * 0.1).to(device, dtype).requires_grad_()
    bias = torch.zeros(c_out, device=device, dtype=dtype, requires_grad=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    outputs, rows = {}, []
    for name, fn in (("3D convs on views (amlight)", center_pivot_views), ("permuted 2D convs", center_pivot_permute)):
        if budget.left < 10:
            rows.append({"form": name, "skipped": "time budget"})
            continue
        x = x0.clone().requires_grad_()

        def run():
            y = fn(x, wt, we, bias)
            y.float().square().mean().backward()
            return y

        outputs[name] = run().detach().float()
        _reset_peak(device)
        seconds = _timed(device, lambda: [run() for _ in range(repeats)])
        rows.append({"form": name, "shape": list(x0.shape), "dtype": str(dtype).removeprefix("torch."),
                     "ms_forward_backward": round(1000 * seconds / repeats, 2), "peak_gib": _peak_gib(device)})
        progress(f"conv4d {name}: {rows[-1]['ms_forward_backward']} ms")
    if len(outputs) == 2:
        a, b = outputs.values()
        rows.append({"form": "max |difference|", "value": float((a - b).abs().max())})
    return rows


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
    if budget.left < 120:
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

def gpu_check(device: str = "cuda", standin: str | Path = "runs/sd15-standin", tiny: bool = False,
              budget_s: float = 480.0, work: str | Path = "runs/benchmarks/gpu_check_work",
              progress: Callable[[str], None] = lambda m: None) -> dict:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("benchmark gpu: no CUDA device is available (torch.cuda.is_available() is False); "
                           "--device cpu --tiny is the dry run")
    if tiny and dev.type == "cpu":
        # Tiny ops: a second thread only waits at every op's barrier when another process holds the core.
        torch.set_num_threads(1)
    budget = Budget(budget_s)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    size, steps = (32, 1) if tiny else (512, 20)
    record: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "tiny": tiny, "resolution": size,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    t0 = time.perf_counter()
    parts = load_parts(Path(standin), tiny, dev, progress)
    record["setup_s"] = round(time.perf_counter() - t0, 1)
    sections = [
        ("generate", lambda: generate_section(parts, dev, size, steps, budget, progress, tiny)),
        ("memory_options", lambda: memory_section(parts, dev, size, budget, progress, steps=1 if tiny else 4)),
        ("conv4d", lambda: conv4d_section(dev, tiny, budget, progress, repeats=1 if tiny else 10)),
        ("compile", lambda: compile_section(parts, dev, size, tiny, budget, progress, repeats=1 if tiny else 5)),
        # The inference models leave the device first: the training peaks are the stages' own.
        ("training", lambda: (_cast(*parts, torch.device("cpu"), torch.float32),
                              training_section(Path(standin), tiny, dev, size, budget, work, progress,
                                               steps=1 if tiny else 5, warmup=0 if tiny else 2))[1]),
    ]
    for name, run in sections:
        t = time.perf_counter()
        try:
            record[name] = run()
        except Exception as e:  # one broken section must not hide the others' figures
            record[name] = [{"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                             "traceback": traceback.format_exc()[-2000:]}]
            progress(f"{name} FAILED: {record[name][0]['error']}")
        record[f"{name}_s"] = round(time.perf_counter() - t, 1)
    record["total_s"] = round(time.perf_counter() - budget.start, 1)
    return record


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    return str(value)


def format_table(record: dict) -> str:
    lines = [f"# benchmark gpu: {record['device']} (torch {record['torch']}, CUDA {record['cuda']}, "
             f"{record['resolution']} px{', TINY dry run: numbers meaningless' if record['tiny'] else ''})", ""]
    for section in ("generate", "memory_options", "training", "conv4d", "compile"):
        rows = record.get(section) or []
        keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "traceback"]
        lines += [f"## {section} ({record.get(section + '_s', '-')} s)", "",
                  "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in rows]
        lines.append("")
    lines.append(f"total {record['total_s']} s (setup {record['setup_s']} s)")
    return "\n".join(lines)
