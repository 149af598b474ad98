"""Peak memory of the pipeline's memory options on one SD 1.5 self-attention layer at 512x512.

One inference read of SD 1.5's first 64x64 self-attention layer (4096 tokens, 8 heads of 40) by a
classifier-free-guidance pair of rows [unconditional ; conditional], exactly as ``AMPipeline`` calls
it: the unconditional row attends plainly, the conditional row reads the exemplar bank. Each case
runs in a fresh interpreter (:class:`~amlight.benchmarks.train_speed.PeakRSS`), so the numbers are
the resident memory the read adds on the CPU. They show what each option changes in the amount of
memory the layer holds; the GPU's figures (other kernels, other allocator) are not measured here.

Cases: ``augmented`` and ``hard_mask`` whole and with ``attention_chunk`` (``query_chunk``) target
queries at a time, ``augmented`` in bfloat16, and ``adapter`` (never chunked: its 4D convolution
needs the whole logit volume). Chunked reads are checked to give the whole read's output.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from amlight.benchmarks.train_speed import SD15_LAYER, SD15_LAYER_NAME, PeakRSS, _bytes, _labels, run_probe


@dataclass(frozen=True)
class Case:
    attention: str
    chunk: int | None = None
    dtype: str = "float32"

    def chunk_for(self, override: int | None = None) -> int | None:
        """The case's chunk, or ``override`` (the shrunken test layer's) when the case chunks at all."""
        return override if (override and self.chunk) else self.chunk

    def label(self, chunk: int | None = None) -> str:
        chunk = self.chunk_for(chunk)
        text = self.attention + (f", attention_chunk {chunk}" if chunk else ", whole")
        return text + ("" if self.dtype == "float32" else f", {self.dtype}")


CHUNK = 1024
CASES: dict[str, Case] = {
    "augmented": Case("augmented"),
    "augmented_chunk": Case("augmented", CHUNK),
    "augmented_bf16": Case("augmented", dtype="bfloat16"),
    "hard_mask": Case("hard_mask"),
    "hard_mask_chunk": Case("hard_mask", CHUNK),
    "adapter": Case("adapter"),
}
# Each case's baseline for the ratio column: the same read without the option.
BASELINE = {"augmented_chunk": "augmented", "augmented_bf16": "augmented", "hard_mask_chunk": "hard_mask"}
# The test suite's shrunken layer: seconds, numbers not comparable.
TINY_LAYER = dict(SD15_LAYER, latent=8, heads=2, head_dim=8, query_dim=16, image_size=64, max_resolution=8)
TINY_CHUNK = 16


def read_layer(case: Case, layer: dict = SD15_LAYER, chunk_override: int | None = None,
               measure: bool = True) -> dict[str, Any]:
    """Run one CFG read of the layer for ``case``; peak resident memory it added, seconds, output."""
    from diffusers.models.attention_processor import Attention

    from amlight.modules.adapter import AMAdapter
    from amlight.modules.exemplar_attention import ExemplarAttnProcessor
    from amlight.modules.exemplar_context import ExemplarContext, ExemplarRead

    dtype = getattr(torch, case.dtype)
    s, rows = layer, 2
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    attn = Attention(query_dim=s["query_dim"], heads=s["heads"], dim_head=s["head_dim"]).to(dtype).eval()
    adapter = None
    if case.attention == "adapter":
        adapter = AMAdapter(heads=s["heads"], max_resolution=s["max_resolution"]).to(dtype).eval()
        weights = torch.Generator().manual_seed(1)  # its own stream: the inputs stay those of every case
        for p in adapter.parameters():  # not the identity: the refinement is really computed and added
            torch.nn.init.normal_(p, std=0.05, generator=weights)
    processor = ExemplarAttnProcessor(SD15_LAYER_NAME)
    n = s["latent"] ** 2
    hidden = torch.randn(rows, n, s["query_dim"], generator=g).to(dtype)
    bank = torch.randn(1, n, s["query_dim"], generator=g).to(dtype)
    chunk = case.chunk_for(chunk_override)
    target_labels = _labels(rows, s["image_size"], s["num_classes"], g)
    read = ExemplarRead(
        {processor.name: bank}, case.attention, adapter=adapter, exemplar_keep=torch.tensor([False, True]),
        exemplar_index=torch.zeros(rows, dtype=torch.long), query_chunk=chunk,
        exemplar_labels=_labels(1, s["image_size"], s["num_classes"], g),
    )
    ctx = ExemplarContext(mode="read", latent_size=(s["latent"], s["latent"]), read=read, target_labels=target_labels)
    t0 = time.perf_counter()
    with torch.no_grad(), PeakRSS() as peak:
        out = processor(attn, hidden, exemplar_ctx=ctx)
    return {"peak_bytes": peak.peak_bytes if measure else None, "seconds": time.perf_counter() - t0,
            "method": peak.method, "output": out.float()}


def probe(name: str, tiny: bool = False) -> dict[str, Any]:
    """One case in this (fresh) process, as JSON-able numbers; chunked cases also check their output."""
    layer = TINY_LAYER if tiny else SD15_LAYER
    override = TINY_CHUNK if tiny else None
    result = read_layer(CASES[name], layer, override)
    record = {k: v for k, v in result.items() if k != "output"}
    base = BASELINE.get(name)
    if base is not None and CASES[name].chunk:
        # After the measurement: the whole read must give the same output (not part of the peak).
        whole = read_layer(CASES[base], layer, measure=False)["output"]
        record["max_abs_diff_to_whole"] = float((result["output"] - whole).abs().max())
    return record


def memory_options_benchmark(threads: int, tiny: bool = False,
                             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    layer = TINY_LAYER if tiny else SD15_LAYER
    chunk = TINY_CHUNK if tiny else CHUNK
    cases = {}
    for name, case in CASES.items():
        if progress is not None:
            progress(f"{case.label(chunk)} (fresh process)")
        extra = ["--tiny"] if tiny else []
        cases[name] = {"label": case.label(chunk), "attention": case.attention, "dtype": case.dtype,
                       "chunk": case.chunk_for(chunk),
                       **run_probe(name, threads, module="amlight.benchmarks.memory_options", extra=extra)}
    for name, base in BASELINE.items():
        peak, base_peak = cases[name]["peak_bytes"], cases[base]["peak_bytes"]
        cases[name]["baseline"] = base
        cases[name]["ratio_to_baseline"] = peak / base_peak if base_peak else None
    return {
        "benchmark": "memory_options",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "layer": {**layer, "tokens": layer["latent"] ** 2, "rows": "2 (CFG: unconditional plain, conditional reads)",
                  "device": "cpu", "name": SD15_LAYER_NAME, "tiny": tiny},
        "torch": torch.__version__,
        "threads": threads,
        "method": cases["augmented"]["method"],
        "cases": cases,
    }


def format_table(result: dict[str, Any]) -> str:
    layer = result["layer"]
    lines = [
        f"amlight benchmark memory: one CFG read (2 rows) of SD 1.5's {layer['latent']}x{layer['latent']} "
        f"self-attention layer ({layer['tokens']} tokens, {layer['heads']} heads x {layer['head_dim']})"
        + (" [shrunken test layer]" if layer["tiny"] else ""),
        f"CPU, torch {result['torch']}, {result['threads']} threads; peak resident memory added by the read, "
        f"each case in a fresh process ({result['method']})",
        "",
        f"{'case':<40} {'peak':>10} {'vs without the option':>22} {'seconds':>8}",
        "-" * 83,
    ]
    for name, c in result["cases"].items():
        ratio = c.get("ratio_to_baseline")
        vs = f"{ratio:.2f}x of {c['baseline']}" if ratio is not None else ""
        lines.append(f"{c['label']:<40} {_bytes(c['peak_bytes']):>10} {vs:>22} {c['seconds']:>8.2f}")
    diffs = {n: c["max_abs_diff_to_whole"] for n, c in result["cases"].items() if "max_abs_diff_to_whole" in c}
    if diffs:
        lines.append("")
        lines.append("chunked = whole: " + ", ".join(f"{n} max |diff| {d:.1e}" for n, d in diffs.items()))
    return "\n".join(lines)


def _probe_main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="one case of `amlight benchmark memory` (internal)")
    parser.add_argument("--probe", choices=sorted(CASES), required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(probe(args.probe, tiny=args.tiny)))
    return 0


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))
