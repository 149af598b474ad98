import pytest
import torch

from amlight.stages import GenerationStage
from amlight.checkpoints.files import CheckpointError, read_checkpoint

from helpers.tiny_models import make_batch

TINY = {"sample_size": 16, "block_out_channels": [16, 32], "attention_heads": 2}


def _stage(**kw):
    return GenerationStage(num_classes=5, backbone_options=TINY, guidance_channels=16, **kw)


def test_training_reduces_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    stage = _stage(exemplar_dropout=0.0)
    batch = make_batch()
    opt = torch.optim.AdamW([p for p in stage.parameters() if p.requires_grad], lr=2e-3)
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731 - same noise and t every step
    first = stage.denoising_loss(batch, generator=gen()).item()
    for _ in range(30):
        loss = stage.denoising_loss(batch, generator=gen())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert stage.denoising_loss(batch, generator=gen()).item() < 0.7 * first


@pytest.mark.parametrize("trainable, unet_trains", [("guidance", False), ("attention", True), ("all", True)])
def test_trainable_parts(trainable, unet_trains):
    stage = _stage(trainable=trainable)
    before = {n: p.detach().clone() for n, p in stage.model.unet.named_parameters()}
    loss = stage.denoising_loss(make_batch())
    loss.backward()
    assert all(p.grad is not None for p in stage.model.guidance.parameters())
    unet_grads = {n for n, p in stage.model.unet.named_parameters() if p.grad is not None}
    assert bool(unet_grads) == unet_trains
    if trainable == "attention":
        assert all("attentions." in n for n in unet_grads)
    assert all(torch.equal(before[n], p) for n, p in stage.model.unet.named_parameters())  # no step yet


def test_appearance_branch_gets_no_gradient_unless_asked():
    # With appearance_grad False the bank is a constant: the loss must not depend on it through autograd.
    stage = _stage(exemplar_dropout=0.0)
    batch = make_batch()
    batch["exemplar_image"].requires_grad_(True)
    stage.denoising_loss(batch).backward()
    assert batch["exemplar_image"].grad is None
    stage = _stage(exemplar_dropout=0.0, appearance_grad=True)
    batch = make_batch()
    batch["exemplar_image"].requires_grad_(True)
    stage.denoising_loss(batch).backward()
    assert batch["exemplar_image"].grad is not None and batch["exemplar_image"].grad.abs().sum() > 0


def test_generate_is_seeded_and_uses_the_exemplar():
    stage = _stage().eval()
    batch = make_batch()
    a = stage.generate(batch, steps=3, seed=1)
    b = stage.generate(batch, steps=3, seed=1)
    c = stage.generate(batch, steps=3, seed=2)
    d = stage.generate(batch, steps=3, seed=1, attention="structure_only")
    assert a.shape == (2, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)


def test_stage1_rejects_the_adapter_mode():
    with pytest.raises(ValueError, match="stage 1 trains without the adapter"):
        _stage(attention="adapter")


def test_sd15_stage1_checkpoint_holds_no_frozen_weights(tiny_sd15_dir, tmp_path):
    import lightning as L

    stage = GenerationStage(num_classes=5, backbone="sd15", backbone_path=str(tiny_sd15_dir), guidance_channels=16)
    batch = make_batch(size=16)
    loss = stage.denoising_loss(batch)  # the VAE path works end to end
    assert torch.isfinite(loss)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(stage)
    path = tmp_path / "s1.ckpt"
    trainer.save_checkpoint(path)
    ckpt = read_checkpoint(path, expect_stage="generation")
    keys = list(ckpt["state_dict"])
    assert any(k.startswith("model.unet.") for k in keys) and any(k.startswith("model.guidance.") for k in keys)
    assert not any("vae" in k or "text_encoder" in k or "encoder.layers" in k for k in keys)
    assert ckpt["amlight"]["backbone"]["preset"] == "sd15"


def test_reading_a_bad_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.ckpt is truncated or not a PyTorch checkpoint \(16 bytes of text"):
        read_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="not an amlight checkpoint"):
        read_checkpoint(tmp_path / "plain.ckpt")


def test_a_checkpoint_of_the_other_stage_is_named_as_such(tmp_path):
    torch.save({"amlight": {"format_version": 1, "stage": "adapter"}, "state_dict": {}}, tmp_path / "s2.ckpt")
    with pytest.raises(CheckpointError, match=r"s2.ckpt is a stage-2 \(adapter\) checkpoint, but a stage-1 "
                                              r"\(generation\) checkpoint is needed here"):
        read_checkpoint(tmp_path / "s2.ckpt", expect_stage="generation")
