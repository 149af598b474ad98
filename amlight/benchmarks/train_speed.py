"""Training cost of the adapter: step time of stage 2 against stage 1, and one attention layer's memory.

Part 1 times full optimizer steps (loss, backward, AdamW) of the quickstart stages on CPU. The stages
are stepped round-robin (stage A, B, C, A, B, C, ...) rather than one after the other, so that a
change in background load during the run slows all of them alike instead of skewing the ratio.

Part 2 measures the peak memory of one adapter self-attention layer at Stable Diffusion 1.5 size
(64x64 latent) and compares it with keeping the full logits of every SD 1.5 self-attention layer at
once. Each measurement runs in a fresh interpreter (``python -m amlight.benchmarks.train_speed
--probe NAME``): the allocator's cached memory and earlier peaks of this process cannot leak into it.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from amlight.utils.cpu_threads import available_cores, default_threads, idle_cores  # noqa: F401 - re-exported

GIB = 1 << 30
MIB = 1 << 20
RATIO_GOAL = 1.6

# Self-attention layers of SD 1.5 at 512 px by latent side: each resolution has 2 down-block and 3
# up-block transformer layers, and the mid block has one at 8x8. 16 in all.
SD15_SELF_ATTENTION: tuple[tuple[int, int], ...] = ((64, 5), (32, 5), (16, 5), (8, 1))
SD15_HEADS = 8


@dataclass(frozen=True)
class TrainBenchConfig:
    name: str
    batch_size: int
    resolution: int
    num_classes: int
    backbone_options: dict[str, Any] = field(default_factory=dict)
    guidance_channels: int = 32


# configs/quickstart/stage{1,2}.yaml on the synthetic scenes (10 classes), tiny backbone defaults.
QUICKSTART = TrainBenchConfig("quickstart", batch_size=8, resolution=32, num_classes=10)
# Small enough for a test that takes seconds; the same shapes as the test suite's tiny stages.
TINY = TrainBenchConfig(
    "tiny", batch_size=2, resolution=16, num_classes=10,
    backbone_options={"sample_size": 16, "block_out_channels": [16, 32], "attention_heads": 2},
    guidance_channels=16,
)

STAGE_LABELS = {
    "stage1_structure_only": "stage 1, structure_only (context)",
    "stage1_augmented": "stage 1, augmented (quickstart)",
    "stage2_adapter": "stage 2, adapter",
}


# --- analytic memory of the naive reference -------------------------------------------------------

def logits_bytes(tokens: int, heads: int = SD15_HEADS, batch: int = 1, element_size: int = 4,
                 exemplar_tokens: int | None = None) -> int:
    """Bytes of one augmented self-attention layer's logits, (batch, heads, N, N + N_exemplar)."""
    exemplar_tokens = tokens if exemplar_tokens is None else exemplar_tokens
    return batch * heads * tokens * (tokens + exemplar_tokens) * element_size


def naive_all_layers_bytes(layers=SD15_SELF_ATTENTION, heads: int = SD15_HEADS, batch: int = 1,
                           element_size: int = 4) -> int:
    """Bytes of every layer's full [self ; exemplar] logits held at once; layers: (latent side, count)."""
    return sum(count * logits_bytes(side * side, heads, batch, element_size) for side, count in layers)


# --- part 1: step time ----------------------------------------------------------------------------

def synthetic_batch(cfg: TrainBenchConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch shaped like the DataModule's: images in [-1, 1], int64 label maps with region layouts."""
    g = torch.Generator().manual_seed(seed)
    b, r = cfg.batch_size, cfg.resolution

    def labels() -> torch.Tensor:
        # Blocky regions rather than per-pixel noise, like scenes; the compute does not depend on it.
        coarse = torch.randint(0, cfg.num_classes, (b, 1, 4, 4), generator=g).float()
        return F.interpolate(coarse, size=(r, r), mode="nearest")[:, 0].long()

    def image() -> torch.Tensor:
        return torch.rand(b, 3, r, r, generator=g) * 2 - 1

    return {"image": image(), "labels": labels(), "exemplar_image": image(), "exemplar_labels": labels()}


@contextmanager
def _quiet_lightning():
    # The Trainer that writes the stage-1 checkpoint announces accelerators on INFO; not benchmark output.
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _save_checkpoint(stage, path: Path) -> Path:
    import lightning as L

    with _quiet_lightning():
        trainer = L.Trainer(
            accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, max_steps=0,
        )
        trainer.strategy.connect(stage)
        trainer.save_checkpoint(path)
    return path


@dataclass
class _Runner:
    stage: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any

    def step(self, batch: dict) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.stage.denoising_loss(batch)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.item()

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for group in self.optimizer.param_groups for p in group["params"])


def _runner(stage) -> _Runner:
    stage.train()
    opt = stage.configure_optimizers()
    return _Runner(stage, opt["optimizer"], opt["lr_scheduler"]["scheduler"])


# The adapter of configs/quickstart/stage2.yaml (a test keeps the two in step).
QUICKSTART_ADAPTER = dict(adapter_channels=8, adapter_layers=3, max_resolution=8)


def build_runners(cfg: TrainBenchConfig, workdir: Path) -> dict[str, _Runner]:
    from amlight.stages import AdapterStage, GenerationStage

    common = dict(num_classes=cfg.num_classes, backbone_options=dict(cfg.backbone_options),
                  guidance_channels=cfg.guidance_channels)
    torch.manual_seed(0)
    # Hyperparameters as in configs/quickstart; only attention, dropout and the adapter's size affect speed.
    augmented = GenerationStage(attention="augmented", exemplar_dropout=0.1, lr=5e-4, warmup_steps=50, **common)
    structure_only = GenerationStage(attention="structure_only", lr=5e-4, warmup_steps=50, **common)
    ckpt = _save_checkpoint(augmented, workdir / "stage1.ckpt")
    adapter = AdapterStage(stage1_checkpoint=str(ckpt), num_classes=cfg.num_classes, **QUICKSTART_ADAPTER,
                           lr=1e-3, warmup_steps=20)
    return {
        "stage1_structure_only": _runner(structure_only),
        "stage1_augmented": _runner(augmented),
        "stage2_adapter": _runner(adapter),
    }


def time_steps(runners: dict[str, _Runner], batch: dict, steps: int, warmup: int,
               progress: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + steps):
        # Rotating the order too: no stage always runs right after the same other one.
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            loss = runners[name].step(batch)
            elapsed = time.perf_counter() - t0
            if not torch.isfinite(torch.tensor(loss)):
                raise RuntimeError(f"{name}: non-finite loss {loss} at step {r}")
            if r >= warmup:
                times[name].append(elapsed)
        if progress is not None:
            progress(f"round {r + 1}/{warmup + steps}" + (" (warm-up)" if r < warmup else ""))
    return times


def summarise(times: list[float]) -> dict[str, Any]:
    median = statistics.median(times)
    return {
        "median_s": median,
        "steps_per_s": 1.0 / median,
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": times,
    }


def step_time_benchmark(cfg: TrainBenchConfig, steps: int, warmup: int,
                        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    batch = synthetic_batch(cfg)
    with tempfile.TemporaryDirectory(prefix="amlight-bench-") as tmp:
        runners = build_runners(cfg, Path(tmp))
        times = time_steps(runners, batch, steps, warmup, progress)
    stages = {
        name: {"label": STAGE_LABELS[name], "trainable_parameters": runners[name].trainable_parameters,
               **summarise(times[name])}
        for name in runners
    }
    ratio = stages["stage2_adapter"]["median_s"] / stages["stage1_augmented"]["median_s"]
    return {"stages": stages, "ratio_stage2_over_stage1": ratio, "ratio_goal": RATIO_GOAL,
            "ratio_goal_met": ratio <= RATIO_GOAL}


# --- part 2: memory of one SD 1.5 attention layer -------------------------------------------------

SD15_LAYER = dict(latent=64, heads=SD15_HEADS, head_dim=40, query_dim=320, batch=1, max_resolution=32,
                  image_size=512, num_classes=10)
SD15_LAYER_NAME = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _ru_maxrss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


class PeakRSS:
    """Peak resident memory added by the block, in bytes.

    Torch's CPU tensors come from malloc, and the large ones (anything above glibc's mmap threshold,
    at most 32 MiB) are mapped on allocation and unmapped on free, so resident memory follows the live
    tensors closely. On Linux the kernel's high-water mark is reset right before the block (writing 5
    to /proc/self/clear_refs), so earlier peaks, e.g. while importing, cannot hide the block's own
    peak; elsewhere the process-wide ru_maxrss is the fallback, which is why probes run in fresh
    interpreters with little done before.
    """

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM after reset (/proc/self/clear_refs), minus VmRSS before"
        except OSError:
            self.method = "ru_maxrss after, minus resident memory before"
        rss = _status_kib("VmRSS")
        self.before = rss * 1024 if rss is not None else _ru_maxrss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        hwm = _status_kib("VmHWM") if self.method.startswith("VmHWM") else None
        peak = hwm * 1024 if hwm is not None else _ru_maxrss_bytes()
        self.peak_bytes = max(0, peak - self.before)


def _labels(n: int, size: int, num_classes: int, g: torch.Generator) -> torch.Tensor:
    coarse = torch.randint(0, num_classes, (n, 1, 8, 8), generator=g).float()
    return F.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()


def probe_amlight_layer() -> dict[str, Any]:
    """One read of an SD 1.5 first-level self-attention layer with the adapter: forward and backward."""
    from diffusers.models.attention_processor import Attention

    from amlight.modules.adapter import AMAdapter
    from amlight.modules.exemplar_attention import ExemplarAttnProcessor
    from amlight.modules.exemplar_context import ExemplarContext, ExemplarRead

    s = SD15_LAYER
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    attn = Attention(query_dim=s["query_dim"], heads=s["heads"], dim_head=s["head_dim"]).requires_grad_(False)
    adapter = AMAdapter(heads=s["heads"], max_resolution=s["max_resolution"])
    processor = ExemplarAttnProcessor(SD15_LAYER_NAME)
    n = s["latent"] ** 2
    # Stage 2 freezes the UNet but its activations still carry gradients back to earlier adapter
    # calls, so the layer's input needs a gradient; the bank comes from a no-grad appearance pass.
    hidden = torch.randn(s["batch"], n, s["query_dim"], generator=g).requires_grad_(True)
    bank = torch.randn(s["batch"], n, s["query_dim"], generator=g)
    target_labels = _labels(s["batch"], s["image_size"], s["num_classes"], g)
    read = ExemplarRead({processor.name: bank}, "adapter", adapter=adapter,
                        exemplar_labels=_labels(s["batch"], s["image_size"], s["num_classes"], g))
    ctx = ExemplarContext(mode="read", latent_size=(s["latent"], s["latent"]), read=read, target_labels=target_labels)
    upstream = torch.randn(s["batch"], n, s["query_dim"], generator=g)
    t0 = time.perf_counter()
    with PeakRSS() as peak:
        out = processor(attn, hidden, exemplar_ctx=ctx)
        out.backward(upstream)
        del out
    seconds = time.perf_counter() - t0
    grad_norm = sum(float(p.grad.norm()) for p in adapter.parameters() if p.grad is not None)
    if not grad_norm > 0:
        raise RuntimeError("the backward pass did not reach the adapter")
    return {"peak_bytes": peak.peak_bytes, "seconds": seconds, "method": peak.method,
            "pool_factor": adapter.pool_factor((s["latent"], s["latent"])),
            "adapter_parameters": adapter.num_parameters, "adapter_grad_norm": grad_norm}


def probe_full_logits() -> dict[str, Any]:
    """One layer's full [self ; exemplar] logits (heads, N, 2N) fp32, as a plain matmul: about 1 GiB."""
    s = SD15_LAYER
    g = torch.Generator().manual_seed(0)
    n = s["latent"] ** 2
    q = torch.randn(s["batch"], s["heads"], n, s["head_dim"], generator=g)
    keys = torch.randn(s["batch"], s["heads"], 2 * n, s["head_dim"], generator=g)
    t0 = time.perf_counter()
    with PeakRSS() as peak:
        logits = q @ keys.transpose(-1, -2)
        size = logits.numel() * logits.element_size()
        del logits
    return {"peak_bytes": peak.peak_bytes, "seconds": time.perf_counter() - t0, "method": peak.method,
            "tensor_bytes": size}


PROBES: dict[str, Callable[[], dict[str, Any]]] = {
    "amlight_layer": probe_amlight_layer,
    "full_logits": probe_full_logits,
}


def run_probe(name: str, threads: int, timeout: float = 1800, module: str = "amlight.benchmarks.train_speed",
              extra: list[str] | None = None) -> dict[str, Any]:
    """Run probe ``name`` of ``module`` in a fresh interpreter (its ``--probe`` entry point); its JSON line."""
    cmd = [sys.executable, "-m", module, "--probe", name, "--threads", str(threads), *(extra or [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory probe {name!r} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def memory_benchmark(threads: int, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    s = SD15_LAYER
    results = {}
    for name in PROBES:
        if progress is not None:
            progress(f"memory probe {name}")
        results[name] = run_probe(name, threads)
    naive = naive_all_layers_bytes(heads=s["heads"], batch=s["batch"])
    amlight_peak = results["amlight_layer"]["peak_bytes"]
    return {
        "layer": {**s, "tokens": s["latent"] ** 2, "dtype": "float32", "device": "cpu", "name": SD15_LAYER_NAME},
        "method": results["amlight_layer"]["method"],
        "amlight_layer": results["amlight_layer"],
        "single_layer_full_logits": {**results["full_logits"],
                                     "expected_bytes": logits_bytes(s["latent"] ** 2, s["heads"], s["batch"])},
        "naive_all_layers_bytes": naive,
        "naive_layers": [
            {"latent": side, "count": count, "bytes_per_layer": logits_bytes(side * side, s["heads"], s["batch"])}
            for side, count in SD15_SELF_ATTENTION
        ],
        "naive_over_amlight": naive / amlight_peak if amlight_peak else None,
    }


# --- the whole benchmark --------------------------------------------------------------------------

def train_benchmark(steps: int = 20, warmup: int = 3, tiny: bool = False, skip_memory: bool = False,
                    threads: int | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    cfg = TINY if tiny else QUICKSTART
    idle = None
    if threads is None:
        threads, idle = default_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        step_time = step_time_benchmark(cfg, steps, warmup, progress)
        memory = None if skip_memory else memory_benchmark(threads, progress)
    finally:
        torch.set_num_threads(previous)
    return {
        "benchmark": "train",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "available_cores": available_cores(),
            "torch_threads": threads,
            "idle_cores_at_start": idle,  # None when --threads was given or /proc/stat is missing
            # Recorded because other work on the machine is the main source of noise in these timings.
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "config": {**asdict(cfg), "device": "cpu", "steps": steps, "warmup": warmup},
        "step_time": step_time,
        "memory": memory,
    }


def _bytes(n: int | float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 4 else f"{n / MIB:.1f} MiB"


def format_table(result: dict[str, Any]) -> str:
    cfg, env, st = result["config"], result["environment"], result["step_time"]
    head = (f"amlight benchmark train: {cfg['name']} configuration, tiny backbone "
            f"{cfg['backbone_options'] or 'defaults'}, batch {cfg['batch_size']}, "
            f"{cfg['resolution']}x{cfg['resolution']}, {cfg['num_classes']} classes, CPU")
    lines = [
        head,
        f"torch threads: {env['torch_threads']} (of {env['available_cores']} available cores"
        + (f", {env['idle_cores_at_start']:.1f} idle at start" if env.get("idle_cores_at_start") is not None else "")
        + f"); load average at the end: {', '.join(f'{x:.2f}' for x in env['load_average'] or [])}",
        f"full optimizer steps (loss, backward, AdamW), {cfg['steps']} timed after {cfg['warmup']} warm-up, "
        "stages interleaved",
        "",
        f"{'stage':<36} {'trainable params':>16} {'median s/step':>14} {'steps/s':>8} {'min s':>8}",
    ]
    for s in st["stages"].values():
        lines.append(f"{s['label']:<36} {s['trainable_parameters']:>16,} {s['median_s']:>14.4f} "
                     f"{s['steps_per_s']:>8.2f} {s['min_s']:>8.4f}")
    verdict = "met" if st["ratio_goal_met"] else "NOT met"
    lines.append(f"stage 2 / stage 1 (augmented), median: {st['ratio_stage2_over_stage1']:.2f}x "
                 f"(goal <= {st['ratio_goal']}: {verdict})")
    mem = result.get("memory")
    if mem:
        layer, full, ours = mem["layer"], mem["single_layer_full_logits"], mem["amlight_layer"]
        n_layers = sum(entry["count"] for entry in mem["naive_layers"])
        rows = [
            ("amlight layer with adapter, forward + backward (measured)", ours["peak_bytes"],
             f"{ours['seconds']:.1f} s, 4D pool factor {ours['pool_factor']}"),
            (f"one layer's full logits ({layer['heads']}, {layer['tokens']}, {2 * layer['tokens']}) fp32 (measured)",
             full["peak_bytes"], f"tensor alone {_bytes(full['expected_bytes'])}"),
            (f"naive: full logits of all {n_layers} SD 1.5 self-attention layers (analytic)",
             mem["naive_all_layers_bytes"], None),
        ]
        width = max(len(label) for label, _, _ in rows)
        lines += [
            "",
            f"peak memory, one SD 1.5 self-attention layer at {layer['latent']}x{layer['latent']} latent "
            f"(N={layer['tokens']}, {layer['heads']} heads, head dim {layer['head_dim']}, batch {layer['batch']}, "
            f"fp32, CPU; measured in fresh processes: {mem['method']}):",
        ]
        lines += [f"  {label:<{width}} {_bytes(n):>10}" + (f"  ({note})" if note else "") for label, n, note in rows]
        lines += [
            "    " + ", ".join(f"{e['count']} x {e['latent']}x{e['latent']} @ {_bytes(e['bytes_per_layer'])}"
                               for e in mem["naive_layers"]),
            f"  naive all layers / amlight layer: {mem['naive_over_amlight']:.2f}x",
        ]
    return "\n".join(lines)


def _probe_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="one memory probe of `amlight benchmark train` (internal)")
    parser.add_argument("--probe", choices=sorted(PROBES), required=True)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or available_cores())
    print(json.dumps(PROBES[args.probe]()))
    return 0


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))
