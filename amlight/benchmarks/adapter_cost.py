"""``python -m amlight benchmark adapter``: the AM-Adapter's cost on its own, against one plain UNet row.

One "adapter call" is what one UNet row pays for the adapter: ``adapter.refine`` (phi over the pooled
[A ; C] volume, added to the logits) on every self-attention layer of the model, with that layer's
logits and categorical cost as inputs. It is timed forward, and forward + backward (phi's parameters;
the logits are the UNet's and detached inside the adapter), against a plain UNet row of the same
size: batch 1, random weights, forward under no_grad, and forward + backward to the latent with
frozen weights (what stage 2 runs through the UNet). Each ratio is measured in one run, the adapter
and the UNet alternating, so that background load moves both.

Cases: ``sd15`` (512 px: SD 1.5's 16 self-attention layers, 64x64 pooled 4D to 32x32, 8 heads, the
SD adapter: 16 channels, 3 layers) and ``quickstart`` (the tiny preset at 32 px and the adapter of
configs/quickstart/stage2.yaml). ``--with-before`` also times the formulation before the fast path
(channels-first, two conv3d on views, materialised unpooling), which is the same numbers slower.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from amlight.benchmarks.train_speed import QUICKSTART_ADAPTER, SD15_HEADS, SD15_SELF_ATTENTION

QUICKSTART_STAGE2 = Path("configs/quickstart/stage2.yaml")


@dataclass(frozen=True)
class AdapterCase:
    name: str
    description: str
    layers: tuple[tuple[int, int, str], ...]  # (latent side, count, block group)
    heads: int
    channels: int
    num_layers: int
    max_resolution: int
    unet: str  # "sd15" or "tiny"
    latent: int
    unet_options: tuple = ()


def _sd15_layers() -> tuple[tuple[int, int, str], ...]:
    # Per side: 2 down-block layers and 3 up-block layers; the mid block's one layer is the 8x8 one.
    out = []
    for side, count in SD15_SELF_ATTENTION:
        if count == 1:
            out.append((side, 1, "mid"))
        else:
            out += [(side, 2, "down"), (side, count - 2, "up")]
    return tuple(out)


def quickstart_adapter(path: Path = QUICKSTART_STAGE2) -> dict[str, int]:
    """The adapter of configs/quickstart/stage2.yaml (the train benchmark's copy where it is missing)."""
    shape = dict(QUICKSTART_ADAPTER)
    if path.is_file():
        import yaml

        args = (yaml.safe_load(path.read_text()) or {}).get("model", {}).get("init_args", {})
        shape.update({k: int(args[k]) for k in shape if k in args})
    return shape


def cases(tiny: bool = False) -> list[AdapterCase]:
    if tiny:  # the test suite's: seconds, numbers not comparable
        return [AdapterCase("tiny-test", "shrunken tiny backbone (tests)", ((8, 1, "down"), (4, 1, "mid")),
                            heads=2, channels=4, num_layers=2, max_resolution=4, unet="tiny", latent=16,
                            unet_options=(("sample_size", 16), ("block_out_channels", (16, 32)),
                                          ("attention_heads", 2)))]
    q = quickstart_adapter()
    return [
        AdapterCase("sd15", "SD 1.5 at 512 px: 16 self-attention layers, UNet row 64x64 latent",
                    _sd15_layers(), heads=SD15_HEADS, channels=16, num_layers=3, max_resolution=32,
                    unet="sd15", latent=64),
        # tiny preset: layers_per_block 1, attention at 16x16 (1 down, 2 up) and 8x8 (1 down, mid, 2 up)
        AdapterCase("quickstart", "tiny preset at 32 px, configs/quickstart/stage2.yaml adapter",
                    ((16, 1, "down"), (16, 2, "up"), (8, 1, "down"), (8, 1, "mid"), (8, 2, "up")),
                    heads=4, channels=q["adapter_channels"], num_layers=q["adapter_layers"],
                    max_resolution=q["max_resolution"], unet="tiny", latent=32),
    ]


# --- models and inputs ----------------------------------------------------------------------------

def build_unet(case: AdapterCase, dtype: torch.dtype, device: torch.device):
    from diffusers import UNet2DConditionModel

    if case.unet == "sd15":
        from amlight.benchmarks.pipeline_speed import SD15_PROMPT_SHAPE, SD15_UNET_CONFIG

        config, prompt_shape, channels = SD15_UNET_CONFIG, SD15_PROMPT_SHAPE, 4
    else:
        from amlight.backbone.presets import TINY_DEFAULTS, tiny_unet_config

        options = {k: list(v) if isinstance(v, tuple) else v for k, v in case.unet_options}
        config = tiny_unet_config(options)
        merged = {**TINY_DEFAULTS, **options}
        prompt_shape, channels = (1, merged["prompt_tokens"], merged["cross_attention_dim"]), 3
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).to(device=device, dtype=dtype).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(1, channels, case.latent, case.latent, generator=g).to(device, dtype)
    prompt = torch.randn(prompt_shape, generator=g).to(device, dtype)
    return unet, latent, prompt


def build_adapter(case: AdapterCase, dtype: torch.dtype, device: torch.device):
    from amlight.modules.adapter import AMAdapter

    adapter = AMAdapter(heads=case.heads, channels=case.channels, num_layers=case.num_layers,
                        max_resolution=case.max_resolution)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # random, not zero-init: the backward then carries real gradients
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return adapter.to(device=device, dtype=dtype)


def layer_inputs(case: AdapterCase, dtype: torch.dtype, device: torch.device, classes: int = 10):
    """One (logits, cost, size, group, count) per distinct layer shape; ``count`` layers share it."""
    g = torch.Generator().manual_seed(3)
    out = []
    for side, count, group in case.layers:
        n = side * side
        logits = (torch.randn(1, case.heads, n, n, generator=g) * 3.0).to(device, dtype)
        # Blocky label maps, like segmentations: 4x4-token regions of random classes.
        coarse = max(1, side // 4)
        t = torch.randint(0, classes, (1, coarse, coarse), generator=g)
        e = torch.randint(0, classes, (1, coarse, coarse), generator=g)
        up = lambda m: m.repeat_interleave(side // coarse, 1).repeat_interleave(side // coarse, 2).flatten(1)
        cost = (up(t)[:, :, None] == up(e)[:, None, :]).to(device)
        out.append((logits, cost, (side, side), group, count))
    return out


# --- timing ---------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def adapter_call(adapter, inputs, backward: bool, before: bool = False) -> Callable[[], None]:
    """Every layer's adapter work for one UNet row; each distinct shape run ``count`` times."""
    try:
        from amlight.modules.conv4d_cpu import fast_path_enabled
    except ImportError:  # a checkout from before the fast path (timed as the "before" side)
        from contextlib import nullcontext

        fast_path_enabled = lambda enabled: nullcontext()  # noqa: E731
    before = before or not hasattr(adapter, "refine")

    def run() -> None:
        with fast_path_enabled(not before), torch.set_grad_enabled(backward):
            for logits, cost, size, group, count in inputs:
                for _ in range(count):
                    if before:  # the formulation before the fast path: explicit unpooled sum
                        out = logits + adapter(group, logits, cost, size)
                    else:  # as the attention processor calls it: in place when no graph is recorded
                        out = adapter.refine(group, logits, cost, size, inplace=not backward)
                    if backward:
                        out.float().sum().backward()
                    del out
    return run


def unet_call(unet, latent, prompt, backward: bool) -> Callable[[], None]:
    def run() -> None:
        if backward:
            x = latent.detach().requires_grad_(True)
            unet(x, 10, encoder_hidden_states=prompt).sample.float().sum().backward()
        else:
            with torch.no_grad():
                unet(latent, 10, encoder_hidden_states=prompt)
    return run


def _measure(name: str, fns: dict[str, Callable[[], None]], repeats: int, device: torch.device,
             progress: Callable[[str], None]) -> dict[str, list[float]]:
    """Untimed warm-up of each, then ``repeats`` rounds of all of them in turn (load hits all alike)."""
    for key, fn in fns.items():
        progress(f"{name}: warm-up {key}")
        fn()
    times: dict[str, list[float]] = {key: [] for key in fns}
    for r in range(repeats):
        for key, fn in fns.items():
            times[key].append(_timed(fn, device))
            progress(f"{name}: {key} round {r + 1}/{repeats}: {times[key][-1]:.3f} s")
    return times


def run_case(case: AdapterCase, dtype: torch.dtype, device: torch.device, repeats: int, backward: bool,
             before: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    unet, latent, prompt = build_unet(case, dtype, device)
    adapter = build_adapter(case, dtype, device)
    inputs = layer_inputs(case, dtype, device)
    modes = ["forward"] + (["forward+backward"] if backward else [])
    rows = []
    for mode in modes:
        bw = mode != "forward"
        fns = {"unet": unet_call(unet, latent, prompt, bw), "adapter": adapter_call(adapter, inputs, bw)}
        if before:
            fns["adapter_before"] = adapter_call(adapter, inputs, bw, before=True)
        times = _measure(f"{case.name} {_dtype_name(dtype)} {device.type} {mode}", fns, repeats, device, progress)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"mode": mode, "times_s": times, "median_s": med, "ratio": med["adapter"] / med["unet"]}
        if before:
            row["ratio_before"] = med["adapter_before"] / med["unet"]
            row["speedup"] = med["adapter_before"] / med["adapter"]
        rows.append(row)
    return {"case": asdict(case), "dtype": _dtype_name(dtype), "device": device.type,
            "adapter_parameters": adapter.num_parameters, "rows": rows}


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def adapter_benchmark(threads: int | None = None, repeats: int = 2, quick: bool = False, tiny: bool = False,
                      before: bool = False, devices: list[str] | None = None, dtypes: list[str] | None = None,
                      only: list[str] | None = None,
                      progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """``quick``: forward only, fp32 only (the SD-size backward of a UNet row takes minutes on a CPU)."""
    from amlight.benchmarks.train_speed import default_threads

    idle = None
    if threads is None:
        threads, idle = default_threads()
    torch.set_num_threads(threads)
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if dtypes is None:
        dtypes = ["fp32"] if quick else ["fp32", "bf16"]
    names = {"fp32": torch.float32, "bf16": torch.bfloat16}
    results = []
    for case in cases(tiny):
        if only and not tiny and case.name not in only:
            continue
        for device in devices:
            for dt in dtypes:
                results.append(run_case(case, names[dt], torch.device(device), repeats, backward=not quick,
                                        before=before, progress=progress))
    return {
        "benchmark": "adapter", "threads": threads, "idle_cores_before": idle, "repeats": repeats,
        "quick": quick, "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "cpu_cores": os.cpu_count()},
        "results": results,
    }


def format_table(result: dict[str, Any]) -> str:
    before = any("ratio_before" in row for r in result["results"] for row in r["rows"])
    head = "| case | dtype | device | pass | UNet row s | adapter s | adapter / UNet row |"
    rule = "|---|---|---|---|---|---|---|"
    if before:
        head += " adapter before s | before / UNet row | speed-up |"
        rule += "---|---|---|"
    lines = [head, rule]
    for r in result["results"]:
        for row in r["rows"]:
            med = row["median_s"]
            line = (f"| {r['case']['name']} | {r['dtype']} | {r['device']} | {row['mode']} | {med['unet']:.3f} | "
                    f"{med['adapter']:.3f} | **{row['ratio']:.2f}** |")
            if before:
                line += f" {med['adapter_before']:.3f} | {row['ratio_before']:.2f} | {row['speedup']:.2f}x |"
            lines.append(line)
    load = result.get("load_average")
    lines.append("")
    lines.append(f"torch threads: {result['threads']}; median of {result['repeats']} (after a warm-up); "
                 f"load average after: {' '.join(f'{v:.2f}' for v in load) if load else 'n/a'}")
    return "\n".join(lines)
