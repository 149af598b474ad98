import warnings

import pytest
import torch

from amlight.checkpoints.stage1 import load_stage1
from amlight.modules.exemplar_context import ExemplarRead
from amlight.stages import AdapterStage
from amlight.checkpoints.adapter_files import export_adapter, load_adapter
from amlight.checkpoints.files import CheckpointError, read_checkpoint

from helpers.tiny_models import make_batch, TINY_OPTIONS, save_stage1_checkpoint


def _perturb(adapter):
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def test_adapter_at_init_equals_augmented_attention(stage1_ckpt):
    stage = AdapterStage(str(stage1_ckpt))
    model, bb, adapter = stage.probe_parts()
    b = make_batch()
    t = torch.tensor([300, 700])
    prompt = bb.prompt_batch(2)
    with torch.no_grad():
        bank = model.write_bank(b["exemplar_image"], t, b["exemplar_labels"], prompt)
        kw = dict(bank=bank, exemplar_labels=b["exemplar_labels"])
        augmented = model(b["image"], t, b["labels"], prompt, ExemplarRead(settings="augmented", **kw))
        adapted = model(b["image"], t, b["labels"], prompt, ExemplarRead(settings="adapter", adapter=adapter, **kw))
        _perturb(adapter)
        trained = model(b["image"], t, b["labels"], prompt, ExemplarRead(settings="adapter", adapter=adapter, **kw))
    assert (adapted - augmented).abs().max() < 1e-5
    assert (trained - augmented).abs().max() > 1e-4  # the adapter is really in the loop


def test_only_the_adapter_trains_and_frozen_parts_stay_bit_identical(stage1_ckpt):
    stage = AdapterStage(str(stage1_ckpt), lr=1e-2)
    frozen = {n: p.detach().clone() for n, p in stage.stage1.model.named_parameters()}
    adapter_before = {n: p.detach().clone() for n, p in stage.adapter.named_parameters()}
    assert [n for n, _ in stage.named_parameters()] == [f"adapter.{n}" for n in adapter_before]
    opt = stage.configure_optimizers()["optimizer"]
    for step in range(3):
        loss = stage.denoising_loss(make_batch(seed=step))
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in stage.stage1.model.parameters())
        opt.step()
    assert all(torch.equal(frozen[n], p) for n, p in stage.stage1.model.named_parameters())
    assert any(not torch.equal(adapter_before[n], p) for n, p in stage.adapter.named_parameters())


def _save(stage, path):
    import lightning as L

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(stage)
    trainer.save_checkpoint(path)
    return path


def test_stage2_checkpoint_is_the_adapter_alone_and_exports(stage1_ckpt, tmp_path):
    stage = AdapterStage(str(stage1_ckpt))
    _perturb(stage.adapter)
    ckpt_path = _save(stage, tmp_path / "stage2.ckpt")
    ckpt = read_checkpoint(ckpt_path, expect_stage="adapter")
    assert all(k.startswith("adapter.") for k in ckpt["state_dict"])
    assert ckpt["amlight"]["stage1"]["sha256"] == stage.stage1.sha256
    assert ckpt_path.stat().st_size < 512 * 1024  # kilobytes, not the UNet
    out = export_adapter(ckpt_path, tmp_path / "adapter.safetensors")
    loaded = load_adapter(out, load_stage1(stage1_ckpt))
    for (n, p), (m, q) in zip(stage.adapter.state_dict().items(), loaded.state_dict().items()):
        assert n == m and torch.equal(p, q)


def test_adapter_on_another_stage1_warns_and_on_another_architecture_fails(stage1_ckpt, tmp_path):
    stage = AdapterStage(str(stage1_ckpt))
    adapter_file = export_adapter(_save(stage, tmp_path / "s2.ckpt"), tmp_path / "a.safetensors")
    other = load_stage1(save_stage1_checkpoint(tmp_path / "other.ckpt", seed=1))
    with pytest.warns(UserWarning, match="trained on the stage-1 checkpoint"):
        load_adapter(adapter_file, other)
    four_heads = load_stage1(save_stage1_checkpoint(
        tmp_path / "wide.ckpt", backbone_options={**TINY_OPTIONS, "attention_heads": 4}))
    with pytest.raises(CheckpointError, match="built for 2 attention heads.*has 4"):
        load_adapter(adapter_file, four_heads)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_adapter(adapter_file, load_stage1(stage1_ckpt))  # its own stage 1: no warning


def test_label_space_must_match_stage1(stage1_ckpt):
    with pytest.raises(ValueError, match="num_classes=19 but stage 1 .* trained with 5"):
        AdapterStage(str(stage1_ckpt), num_classes=19)


def test_missing_stage1_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        AdapterStage(str(tmp_path / "nope.ckpt"))


def test_checkpointed_adapter_attention_keeps_no_full_logits_and_same_gradients(stage1_ckpt):
    # Training with the adapter must not keep every layer's (B, heads, N, 2N) probabilities for backward.
    b = make_batch()
    load_stage1(stage1_ckpt)  # loaded (and cached) before seeding: loading draws random numbers

    def run(checkpoint_attention):
        torch.manual_seed(0)  # same adapter weights in both runs
        stage = AdapterStage(str(stage1_ckpt), checkpoint_attention=checkpoint_attention)
        _perturb(stage.adapter)
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = stage.denoising_loss(b, generator=torch.Generator().manual_seed(3))
        loss.backward()
        grads = [p.grad.clone() for p in stage.adapter.parameters()]
        return sizes, grads, len(stage.stage1.model.self_attention_layers)

    plain_sizes, plain_grads, layers = run(False)
    ckpt_sizes, ckpt_grads, _ = run(True)
    full_probs = 2 * 2 * 64 * 128  # batch 2, 2 heads, the 8x8 layers: N = 64 target x 2N keys
    assert plain_sizes.count(full_probs) >= layers  # one per adapter layer without checkpointing...
    assert ckpt_sizes.count(full_probs) == 0  # ...none kept with it
    for a, c in zip(plain_grads, ckpt_grads):
        assert torch.allclose(a, c, atol=1e-6)
