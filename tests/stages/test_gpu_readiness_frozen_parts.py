"""Issue 17, items 1 and 2: the frozen parts (shared, not submodules) on the GPU's code path, on the CPU.

On the CPU, ``.to("cpu")`` copies nothing, so a device move is made real here with the ``meta`` device
(parameters really move, and autograd checks inference tensors there as on CUDA), and the
``cuda`` / ``cuda:0`` mismatch with its CPU twin ``cpu:0`` / ``cpu``. Tests that move or spoil the
shared frozen parts build their own stage-1 checkpoint on a backbone of its own (another prompt length:
the backbone cache is keyed by its options), so that the backbone other tests share stays as it was.
"""
import torch

from amlight.checkpoints.stage1 import load_stage1
from amlight.stages import AdapterStage, GenerationStage
from amlight.stages.frozen_parts import normalise_device, same_device

from helpers.tiny_models import TINY_OPTIONS, make_batch, save_stage1_checkpoint


def _own_stage1(path, prompt_tokens: int):
    return save_stage1_checkpoint(path, backbone_options={**TINY_OPTIONS, "prompt_tokens": prompt_tokens})


def _frozen_tensors(s1):
    return [*s1.model.parameters(), *s1.model.buffers(), s1.backbone.prompt_embeds, s1.backbone.negative_prompt_embeds]


def test_frozen_parts_moved_before_an_inference_mode_first_use_stay_trainable(tmp_path):
    stage = AdapterStage(str(_own_stage1(tmp_path / "s1.ckpt", 5)))
    stage.to("meta")  # what Lightning's strategy does before the sanity check (a real move, as to CUDA)
    with torch.inference_mode():  # the sanity check / trainer.validate(): first use of the frozen parts
        s1 = stage.frozen()
    assert all(t.device.type == "meta" and not t.is_inference() for t in _frozen_tensors(s1))
    x = torch.randn(1, 3, 16, 16, device="meta", requires_grad=True)
    # Before the fix the parts were moved here, under inference mode: "Inference tensors cannot be saved
    # for backward".
    s1.model.unet.conv_in(x).sum().backward()


def test_a_shared_stage1_holding_inference_tensors_is_repaired_before_training(tmp_path):
    path = _own_stage1(tmp_path / "s1.ckpt", 6)
    shared = load_stage1(path)
    with torch.inference_mode():
        # Someone earlier in the process (a pipeline, predict) moved the shared model under inference
        # mode; a dtype round trip copies every weight here as a move to the GPU would.
        shared.model.double().float()
        shared.backbone.to("cpu", torch.float64).to("cpu", torch.float32)
    assert shared.model.unet.conv_in.weight.is_inference() and shared.backbone.prompt_embeds.is_inference()
    stage = AdapterStage(str(path))
    assert stage.stage1 is shared
    loss = stage.denoising_loss(make_batch(), generator=torch.Generator().manual_seed(0))
    loss.backward()  # raised "Inference tensors cannot be saved for backward" before the fix
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.adapter.parameters())
    assert not any(t.is_inference() for t in _frozen_tensors(shared))


def test_stage1_loaded_under_inference_mode_is_made_of_normal_tensors(tmp_path):
    path = _own_stage1(tmp_path / "s1.ckpt", 7)
    with torch.inference_mode():  # e.g. AMPipeline.from_checkpoints inside an inference_mode block
        s1 = load_stage1(path)
    assert not any(t.is_inference() for t in _frozen_tensors(s1))


def test_generation_stage_trains_after_its_backbone_became_inference_tensors():
    stage = GenerationStage(num_classes=5, backbone_options={**TINY_OPTIONS, "prompt_tokens": 11},
                            guidance_channels=16, exemplar_dropout=0.0)
    with torch.inference_mode():
        stage.backbone.to("cpu", torch.float64).to("cpu", torch.float32)
    assert stage.backbone.prompt_embeds.is_inference()
    # The prompt reaches the trainable cross-attention: an inference prompt broke this backward.
    stage.denoising_loss(make_batch(), generator=torch.Generator().manual_seed(0)).backward()
    assert not stage.backbone.prompt_embeds.is_inference()


def test_frozen_unet_moves_even_when_the_shared_backbone_already_did(tmp_path):
    stage = AdapterStage(str(_own_stage1(tmp_path / "s1.ckpt", 8)))
    stage.stage1.backbone.to("meta")  # moved by someone else who shares the backbone, not this UNet
    stage.to("meta")
    s1 = stage.frozen()
    # Before the fix the backbone's device stood for the UNet's: it stayed on the CPU.
    assert {p.device.type for p in s1.model.parameters()} == {"meta"}


def test_frozen_parts_are_not_moved_again_every_step(stage1_ckpt, monkeypatch):
    stage = AdapterStage(str(stage1_ckpt))
    # The module's device spelled with an index while its tensors report none: on a GPU, --device cuda
    # against tensors on cuda:0. Before the fix every frozen() call moved the whole stage-1 model again.
    stage.to(torch.device("cpu", 0))
    moves = []
    original = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moves.append(type(self).__name__) or original(self, *a, **k))
    for _ in range(3):
        stage.frozen()
    assert moves == []


def test_device_comparison_spells_out_the_index():
    assert same_device("cpu", torch.device("cpu", 0))
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    assert same_device("cuda", f"cuda:{current}")
    assert not same_device("cuda", f"cuda:{current + 1}")
    assert not same_device("cuda:0", "cpu")
    assert normalise_device("meta") == torch.device("meta", 0)


def test_a_pipeline_cast_under_inference_mode_leaves_the_shared_stage1_trainable(tmp_path):
    """AMPipeline.from_checkpoints casts the process-wide stage-1 model; done under inference mode (a
    predict before a fit), that cast must not turn the shared weights into inference tensors."""
    from helpers.tiny_models import save_stage1_checkpoint

    from amlight.checkpoints.stage1 import load_stage1
    from amlight.pipeline import AMPipeline

    path = save_stage1_checkpoint(tmp_path / "own_stage1.ckpt", num_classes=5)
    with torch.inference_mode():
        AMPipeline.from_checkpoints(path, dtype=torch.float64)
    stage1 = load_stage1(path)
    assert not any(p.is_inference() for p in stage1.model.parameters())
