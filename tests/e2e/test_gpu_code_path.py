"""The GPU's code path, rehearsed on the CPU: SD 1.5's architecture at 64 px under ``bf16-mixed``, with
the 4D conv's CPU fast path switched off (``AMLIGHT_CONV4D_FAST=0``), since CUDA never takes it.

One stage-2 training step with a validation grid (Lightning, the shipped stage-2 settings), then one
image through ``AMPipeline.from_checkpoints(dtype=bfloat16)``, the ``generate --dtype bf16`` path. Every
output must be finite.

Size: SD 1.5's block layout (3 cross-attention down blocks and a plain one, mirrored up, 2 layers per
block, mid block: 16 self-attention layers), its 8 heads per attention layer, 768-wide cross-attention
over a 77-token CLIP-L-wide prompt, and its 4-level VAE (64 px -> 8x8 latents), with the channel
widths cut (UNet 64-128-256-256 instead of 320-640-1280-1280: 37.5 M weights instead of 860 M; VAE
32-64-64-64; one text layer). Measured on the 2-core machine: 26 s and 1.5 GB peak resident when idle
(100 s under a load of 6). Full width (AMLIGHT_GPU_PATH_FULL_WIDTH=1) passes too, but took 4 min 5 s
and 8.2 GB resident under load: the UNet calls are cheap at 8x8 latents (0.6 s at batch 2), writing,
loading and checkpointing 4.3 GB of random weights is not.
"""
import math
import os

import pytest
import torch
from torch.utils.data import DataLoader

from amlight.backbone.sd15_standin import SD15_TEXT_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG
from amlight.modules.conv4d_cpu import ENV_SWITCH

pytestmark = pytest.mark.slow

FULL_WIDTH = os.environ.get("AMLIGHT_GPU_PATH_FULL_WIDTH", "") == "1"
SD15_ARCHITECTURE_NARROW = {
    "unet": {**SD15_UNET_CONFIG, "block_out_channels": [64, 128, 256, 256], "sample_size": 8},
    "vae": {**SD15_VAE_CONFIG, "block_out_channels": [32, 64, 64, 64], "sample_size": 64},
    "text_encoder": {**SD15_TEXT_CONFIG, "vocab_size": 600, "intermediate_size": 768, "num_hidden_layers": 1},
}
SIZE, CLASSES = 64, 19
# The shipped stage-2 batch. It needs conv4d.py's fp32 detour for the CPU's bf16 conv3d (see the fit
# below); AMLIGHT_GPU_PATH_TRAIN_BATCH overrides it.
TRAIN_BATCH = int(os.environ.get("AMLIGHT_GPU_PATH_TRAIN_BATCH", "2"))
# configs/sd15/cityscapes/stage2.yaml's adapter and settings, with the pooling threshold scaled with
# the image: at 512 px the 64x64 layers pool in 4D to 32x32; here the 8x8 layers pool to 4x4.
ADAPTER = dict(adapter_channels=16, adapter_layers=3, max_resolution=4, checkpoint_attention=True)


class _Pairs(torch.utils.data.Dataset):
    """Random images, block label maps (so that the categorical cost has same-class pairs), the
    exemplar a flipped view of the same scene, as the pairing strategy makes them."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        image = torch.rand(3, SIZE, SIZE, generator=g) * 2 - 1
        coarse = torch.randint(0, 4, (1, 1, 4, 4), generator=g).float()
        labels = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="nearest")[0, 0].long()
        return {"image": image, "labels": labels, "exemplar_image": image.flip(-1), "exemplar_labels": labels.flip(-1)}


class _PathSpy:
    """Counts the 4D conv's calls by path; the CPU fast path must not run at all."""

    def __init__(self, monkeypatch):
        import amlight.modules.adapter as adapter_mod
        import amlight.modules.conv4d as conv4d

        self.generic, self.autocast = 0, []
        real = conv4d.center_pivot_views

        def generic(x, *args):
            self.generic += 1
            self.autocast.append(torch.is_autocast_enabled("cpu"))
            return real(x, *args)

        def fast(*args, **kwargs):
            raise AssertionError("the CPU fast path ran although AMLIGHT_CONV4D_FAST=0")

        monkeypatch.setattr(conv4d, "center_pivot_views", generic)
        monkeypatch.setattr(conv4d, "center_pivot_channels_last", fast)
        monkeypatch.setattr(adapter_mod, "phi_channels_last", fast)


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.float()).all())


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """Stage-1 checkpoint on the SD-1.5-architecture stand-in, then one stage-2 step + validation grid
    under bf16-mixed with the fast path off. Returns what the tests look at."""
    import lightning as L

    from amlight.backbone.sd15_standin import write_sd15_standin
    from amlight.callbacks import SampleGrid
    from amlight.stages import AdapterStage, GenerationStage

    root = tmp_path_factory.mktemp("gpu_code_path")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_SWITCH, "0")
        spy = _PathSpy(mp)
        standin = write_sd15_standin(root / "sd15", configs=None if FULL_WIDTH else SD15_ARCHITECTURE_NARROW)
        torch.manual_seed(0)
        stage1 = GenerationStage(num_classes=CLASSES, backbone="sd15", backbone_path=str(standin),
                                 prompt="a photo of a driving scene", guidance_channels=64, trainable="attention",
                                 attention="augmented", gradient_checkpointing=True)
        heads = {m.heads for n, m in stage1.model.unet.named_modules() if n.endswith("attn1")}
        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
        trainer.strategy.connect(stage1)
        stage1_ckpt = root / "stage1.ckpt"
        trainer.save_checkpoint(stage1_ckpt)
        del stage1, trainer

        stage = AdapterStage(str(stage1_ckpt), num_classes=CLASSES, lr=1e-2, warmup_steps=1, sample_steps=2,
                             sample_guidance_scale=3.0, **ADAPTER)
        before = {n: p.detach().clone() for n, p in stage.adapter.named_parameters()}
        grids = []
        real_generate = stage.generate

        def generate(batch, *args, **kwargs):  # what the validation grid draws
            images = real_generate(batch, *args, **kwargs)
            grids.append(images.detach().float().cpu())
            return images

        stage.generate = generate
        sample_grid = SampleGrid(num_samples=2, upscale=1)
        trainer = L.Trainer(
            accelerator="cpu", devices=1, precision="bf16-mixed", max_steps=1, limit_train_batches=1,
            limit_val_batches=1, num_sanity_val_steps=0, val_check_interval=1, logger=False,
            default_root_dir=root / "stage2", enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[sample_grid],
        )
        # Training batch 2: on the CPU, oneDNN's bf16 conv3d weight gradient is NaN for the 2x2 layers of a
        # 64 px image at batch >= 2 (a PyTorch CPU kernel bug, not CUDA's path), so conv4d.py computes the
        # CPU's bf16 4D conv in fp32 (tests/modules/test_gpu_code_path_cpu_bf16.py, tests/modules/test_conv4d_cpu_half.py).
        trainer.fit(stage, train_dataloaders=DataLoader(_Pairs(), batch_size=TRAIN_BATCH),
                    val_dataloaders=DataLoader(_Pairs(), batch_size=2))
        del stage.generate
        stage2_ckpt = root / "stage2.ckpt"
        trainer.save_checkpoint(stage2_ckpt)
        training_calls = spy.generic
        yield {"root": root, "stage": stage, "trainer": trainer, "before": before, "grids": grids,
               "sample_grid": sample_grid, "heads": heads, "spy": spy, "training_calls": training_calls,
               "stage1_ckpt": stage1_ckpt, "stage2_ckpt": stage2_ckpt}


def test_the_stand_in_has_sd15s_attention_layout(rehearsal):
    stage = rehearsal["stage"]
    unet = stage.stage1.model.unet
    assert rehearsal["heads"] == {8} and unet.config.cross_attention_dim == 768
    assert list(unet.config.down_block_types) == list(SD15_UNET_CONFIG["down_block_types"])
    assert list(unet.config.up_block_types) == list(SD15_UNET_CONFIG["up_block_types"])
    assert unet.config.layers_per_block == 2
    self_attention = [n for n, _ in unet.named_modules() if n.endswith("attn1")]
    assert len(self_attention) == 16  # SD 1.5's 6 down + 1 mid + 9 up self-attention layers


def test_stage2_step_and_validation_grid_under_bf16_mixed_take_the_generic_4d_conv(rehearsal):
    trainer, stage, spy = rehearsal["trainer"], rehearsal["stage"], rehearsal["spy"]
    assert trainer.precision == "bf16-mixed" and trainer.global_step == 1
    loss = trainer.callback_metrics["train/loss"]
    assert math.isfinite(float(loss)), loss
    assert math.isfinite(float(trainer.callback_metrics["val/loss"]))
    after = dict(stage.adapter.named_parameters())
    before = rehearsal["before"]
    assert any(not torch.equal(before[n], p.detach()) for n, p in after.items()), "the step changed nothing"
    assert all(_finite(p) for p in after.values())
    # The adapter ran, through the view-based conv only (the fast path raises), inside bf16 autocast.
    assert rehearsal["training_calls"] > 0 and any(spy.autocast)
    grids = rehearsal["grids"]
    assert len(grids) == 1 and grids[0].shape == (2, 3, 64, 64)
    assert _finite(grids[0]), "the validation grid has NaN / inf"
    assert rehearsal["sample_grid"].last_path is not None and rehearsal["sample_grid"].last_path.is_file()


def test_one_generated_image_in_bf16_is_finite(rehearsal):
    from amlight.checkpoints.adapter_files import export_adapter
    from amlight.pipeline.synthesis import AMPipeline

    spy = rehearsal["spy"]
    adapter_file = export_adapter(rehearsal["stage2_ckpt"], rehearsal["root"] / "adapter.safetensors")
    pipe = AMPipeline.from_checkpoints(rehearsal["stage1_ckpt"], adapter_file, device="cpu", dtype=torch.bfloat16)
    assert pipe.dtype == torch.bfloat16
    batch = _Pairs()[0]
    calls = spy.generic
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random labels may leave a class uncovered
        images = pipe.generate(batch["exemplar_image"][None].to(torch.bfloat16), batch["exemplar_labels"][None],
                               batch["labels"][None], steps=2, attention="adapter", guidance_scale=3.0)
    assert images.shape == (1, 3, SIZE, SIZE)
    assert _finite(images), "the generated image has NaN / inf"
    assert spy.generic > calls  # the adapter ran, on the generic path
