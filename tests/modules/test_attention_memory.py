"""Memory of the explicit (adapter) exemplar attention in inference, and that its in-place inference
path computes what the autograd path computes."""
import json
import os
import subprocess
import sys

import pytest
import torch
from diffusers.models.attention_processor import Attention

from amlight.benchmarks.train_speed import SD15_LAYER
from amlight.modules.adapter import AMAdapter
from amlight.modules.attention_modes import AttentionSettings
from amlight.modules.exemplar_attention import ExemplarAttnProcessor
from amlight.modules.exemplar_context import ExemplarContext, ExemplarRead

LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


PROBE = """
import json, sys, torch
torch.set_num_threads(1)
from amlight.benchmarks.memory_options import CASES, read_layer
from amlight.benchmarks.train_speed import SD15_LAYER
layer = dict(SD15_LAYER, latent=48, image_size=384, max_resolution=24)
print(json.dumps(read_layer(CASES["adapter"], layer)["peak_bytes"]))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's resettable VmHWM")
def test_adapter_read_holds_about_one_logits_buffer():
    """One conditional row of a 48x48 layer, 8 heads, in a fresh interpreter (as `benchmark memory`):
    its (1, 8, N, 2N) float32 logits are 324 MiB. Separate self, cross, concatenated and softmax
    tensors held 3.3 times that; one buffer with the adapter's own volumes about 1.6."""
    n = 48 * 48
    logits_bytes = SD15_LAYER["heads"] * n * 2 * n * 4
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = json.loads(proc.stdout.strip().splitlines()[-1])
    assert peak <= 2 * logits_bytes, f"peak {peak / 2**20:.0f} MiB for {logits_bytes / 2**20:.0f} MiB of logits"


def _read(mode, adapter=None, strength=1.0, recorder=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).to(dtype)
    hidden = torch.randn(3, 64, 16, generator=g).to(dtype)
    bank = torch.randn(2, 64, 16, generator=g).to(dtype)
    labels = torch.randint(0, 3, (3, 16, 16), generator=g)
    read = ExemplarRead(
        {LAYER: bank}, AttentionSettings(mode, appearance_strength=strength), adapter=adapter, recorder=recorder,
        exemplar_labels=torch.randint(0, 3, (2, 16, 16), generator=g), exemplar_index=torch.tensor([0, 1, 1]),
        exemplar_keep=torch.tensor([True, False, True]),
    )
    ctx = ExemplarContext(mode="read", latent_size=(8, 8), read=read, target_labels=labels)
    return ExemplarAttnProcessor(LAYER)(attn, hidden, exemplar_ctx=ctx)


def _adapter(dtype=torch.float32):
    torch.manual_seed(1)
    adapter = AMAdapter(heads=2, max_resolution=4).to(dtype)
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(std=0.1)
    return adapter


class _OutOfPlaceRefiner:
    """A LogitRefiner that always returns a new tensor: the in-place path must copy it into its buffer."""

    def refine(self, group, logits, cost, size, *, max_resolution=None, inplace=False):
        return logits + (0.5 * cost[:, None].float() - 0.1 * logits.detach())


@pytest.mark.parametrize("case", ["adapter", "adapter_strength", "out_of_place_refiner", "hard_mask_recorded"])
def test_in_place_inference_equals_the_autograd_path(case):
    adapter, mode, strength, maps = None, "adapter", 1.0, []
    if case.startswith("adapter"):
        adapter = _adapter()
        strength = 2.0 if case == "adapter_strength" else 1.0
    elif case == "out_of_place_refiner":
        adapter = _OutOfPlaceRefiner()
    else:
        mode = "hard_mask"

    def recorder(name, probs, size, ctx):
        maps.append(probs.clone())

    with torch.enable_grad():
        reference = _read(mode, adapter, strength, recorder)
    with torch.no_grad():
        out = _read(mode, adapter, strength, recorder)
    torch.testing.assert_close(out, reference.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps[1], maps[0].detach(), rtol=1e-5, atol=1e-7)


def test_in_place_inference_equals_the_autograd_path_in_bfloat16():
    adapter = _adapter(torch.bfloat16)
    with torch.enable_grad():
        reference = _read("adapter", adapter, dtype=torch.bfloat16)
    with torch.no_grad():
        out = _read("adapter", adapter, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference.detach().float(), rtol=0, atol=0)


# --- batch sizes that fit ------------------------------------------------------------------------


def _sd15(dtype):
    from types import SimpleNamespace

    from diffusers import AutoencoderKL, UNet2DConditionModel

    from amlight.backbone.sd15_standin import SD15_UNET_CONFIG, SD15_VAE_CONFIG

    with torch.device("meta"):  # shapes only
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG).to(dtype)
        vae = AutoencoderKL(**SD15_VAE_CONFIG).to(dtype)
        adapter = AMAdapter(heads=8).to(dtype)
    weights = sum(p.numel() * p.element_size() for m in (unet, vae) for p in m.parameters())
    return SimpleNamespace(unet=unet), vae, adapter, weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_auto_batch_size_fits_sd15_at_512_px_on_a_24_gib_gpu(dtype):
    from amlight.pipeline.memory import GiB, batch_size_for, self_attention_shapes, target_memory

    model, vae, adapter, weights = _sd15(dtype)
    shapes = self_attention_shapes(model.unet, (64, 64))
    assert len(shapes) == 16 and max(shapes) == (4096, 8, 320) and min(shapes) == (64, 8, 1280)
    per_target = target_memory(model, vae, (64, 64), 20, explicit=True, adapter=adapter)
    item = 4 if dtype == torch.float32 else 2
    assert per_target.attention >= 8 * 4096 * 8192 * item  # at least the largest layer's logits buffer
    free = 24 * GiB - weights - 1 * GiB  # the text encoder, CUDA context
    batch = batch_size_for(free, per_target, cap=16)
    assert 1 <= batch < 16 and batch * per_target.total <= free
    # evaluate's former fixed default of 16 did not fit
    assert 16 * per_target.total > free


def test_auto_batch_size_divides_the_free_memory_and_is_the_cap_on_a_cpu(stage1_ckpt, monkeypatch):
    import amlight.pipeline.memory as memory
    from amlight.pipeline.synthesis import AMPipeline

    pipe = AMPipeline.from_checkpoints(stage1_ckpt)
    assert pipe.auto_batch_size((16, 16), 20, ["augmented"], cap=8) == (8, None)
    per_target = memory.target_memory(pipe.model, pipe.backbone.vae, (16, 16), 20, explicit=False)
    monkeypatch.setattr(memory, "free_device_memory", lambda device: int(3.5 * per_target.total / (1 - memory.MARGIN)))
    batch, note = pipe.auto_batch_size((16, 16), 20, ["augmented"], cap=8)
    assert batch == 3 and "batch size 3 (auto, at most 8)" in note and "per target" in note


def test_generate_and_evaluate_default_to_auto_batch_sizes():
    from amlight.cli.commands.evaluate import build_parser as evaluate_parser
    from amlight.cli.commands.generate import build_parser as generate_parser

    assert generate_parser().parse_args(["--stage1", "s", "--out", "o"]).batch_size == "auto"
    assert evaluate_parser().parse_args(["--stage1", "s"]).batch_size == "auto"
    assert evaluate_parser().parse_args(["--stage1", "s", "--batch-size", "3"]).batch_size == 3
