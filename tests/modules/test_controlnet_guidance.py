"""ControlNet structure guidance (issue 20, item 1): rendering, residuals, the folder round trip, the four
attention modes, and stage 1 (GenerationStage(guidance="controlnet")) on the tiny backbone."""
import json

import pytest
import torch

from amlight.modules.adapter import AMAdapter
from amlight.modules.controlnet_guidance import ControlNetGuidance, controlnet_from_unet
from amlight.modules.exemplar_context import ExemplarRead
from amlight.modules.exemplar_unet import ExemplarUNet, build_exemplar_unet
from amlight.stages import GenerationStage

from helpers.tiny_models import TINY_OPTIONS, make_batch

COLORS = [[10, 20, 30], [200, 0, 0], [0, 200, 0], [0, 0, 200], [255, 255, 255]]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randomize(module, seed=0, std=0.1):
    """ControlNet zero convolutions start at zero (no effect at all): give every weight a value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


@pytest.fixture
def model(tiny_backbone):
    torch.manual_seed(0)
    m = build_exemplar_unet(tiny_backbone, 5, guidance="controlnet", class_colors=COLORS).eval()
    _randomize(m.guidance)
    return m


def _plain(config):
    """A config as JSON has it (tuples are lists there), without diffusers' private keys."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))


def _inputs(size=16, seed=0):
    b = make_batch(size=size, seed=seed)
    return b, torch.tensor([300, 700])


def test_render_draws_each_class_in_its_colour_and_everything_else_black(model):
    labels = torch.tensor([[[0, 1, 2], [3, 4, 255], [5, -1, 7]]])
    image = model.guidance.render(labels)
    assert image.shape == (1, 3, 3, 3) and image.dtype == torch.float32
    for (y, x), cls in zip([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)], range(5)):
        assert torch.allclose(image[0, :, y, x] * 255, torch.tensor(COLORS[cls], dtype=torch.float32))
    for y, x in [(1, 2), (2, 0), (2, 1), (2, 2)]:  # ignore, out of range (above and below)
        assert torch.equal(image[0, :, y, x], torch.zeros(3))
    assert image.min() >= 0 and image.max() <= 1


def test_signal_shapes_match_the_unets_down_blocks(model, tiny_backbone):
    b, t = _inputs()
    prompt = tiny_backbone.prompt_batch(2)
    signal = model.guidance.signal(b["image"], t, b["labels"], prompt)
    assert signal.conv_in is None
    # The UNet's own skip connections: what it would add the residuals to.
    unet = model.unet
    skips = []
    h = unet.conv_in(b["image"])
    skips.append(h.shape)
    temb = unet.time_embedding(unet.time_proj(t))
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(h, temb, encoder_hidden_states=prompt)
        else:
            h, res = block(h, temb)
        skips += [r.shape for r in res]
    assert [r.shape for r in signal.down_residuals] == skips
    assert signal.mid_residual.shape == h.shape


def test_a_label_map_at_the_wrong_size_is_a_one_line_error(model, tiny_backbone):
    b, t = _inputs()
    with pytest.raises(ValueError) as info:
        model.guidance.signal(b["image"], t, b["labels"][:, :8, :8], tiny_backbone.prompt_batch(2))
    message = str(info.value)
    assert "label map (8, 8) does not match the latents (16, 16)" in message and "\n" not in message


@pytest.mark.parametrize("low_cpu_mem_usage", [True, False])
def test_save_and_load_round_trip_is_exact(model, tmp_path, low_cpu_mem_usage):
    guidance = model.guidance
    guidance.save_pretrained(tmp_path / "g")
    loaded = ControlNetGuidance.from_pretrained(tmp_path / "g", low_cpu_mem_usage=low_cpu_mem_usage)
    assert _plain(loaded.config) == _plain(guidance.config)
    assert loaded.config.class_colors == COLORS and loaded.num_classes == 5
    ours, theirs = guidance.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    b, t = _inputs()
    prompt = torch.randn(2, 4, 32)
    with torch.no_grad():
        a = guidance.signal(b["image"], t, b["labels"], prompt)
        c = loaded.eval().signal(b["image"], t, b["labels"], prompt)
    assert all(torch.equal(x, y) for x, y in zip(a.down_residuals, c.down_residuals))
    assert torch.equal(a.mid_residual, c.mid_residual)


def test_conditioning_scale_zero_is_the_unet_without_residuals(model, tiny_backbone):
    b, t = _inputs()
    prompt = tiny_backbone.prompt_batch(2)
    zero = ExemplarUNet(model.unet, ControlNetGuidance.around(model.guidance.controlnet, 5, COLORS,
                                                              conditioning_scale=0.0)).eval()
    with torch.no_grad():
        plain = model.unet(b["image"], t, encoder_hidden_states=prompt).sample
        guided = model(b["image"], t, b["labels"], prompt)
        scaled_out = zero(b["image"], t, b["labels"], prompt)
    assert torch.allclose(scaled_out, plain, atol=1e-6)
    assert (guided - plain).abs().max() > 1e-3  # the (randomized) ControlNet does act at scale 1


def test_all_four_attention_modes_run_and_the_exemplar_modes_read_the_bank(model, tiny_backbone):
    b, t = _inputs()
    prompt = tiny_backbone.prompt_batch(2)
    adapter = _randomize(AMAdapter(heads=2, channels=4), seed=1, std=0.2).eval()
    with torch.no_grad():
        bank = model.write_bank(b["exemplar_image"], t, b["exemplar_labels"], prompt)
        assert bank and all(torch.isfinite(v).all() for v in bank.values())
        out = {}
        for mode in ("structure_only", "augmented", "hard_mask", "adapter"):
            read = ExemplarRead(bank, mode, exemplar_labels=b["exemplar_labels"],
                                adapter=adapter if mode == "adapter" else None)
            out[mode] = model(b["image"], t, b["labels"], prompt, read)
            assert out[mode].shape == b["image"].shape and torch.isfinite(out[mode]).all(), mode
    for mode in ("augmented", "hard_mask", "adapter"):
        assert (out[mode] - out["structure_only"]).abs().max() > 1e-4, mode
    assert (out["adapter"] - out["augmented"]).abs().max() > 1e-5


def test_the_exemplar_branch_gets_the_exemplar_labels_residuals(model, tiny_backbone):
    # The bank written with other exemplar labels differs: the appearance branch is guided by its own labels.
    b, t = _inputs()
    prompt = tiny_backbone.prompt_batch(2)
    with torch.no_grad():
        one = model.write_bank(b["exemplar_image"], t, b["exemplar_labels"], prompt)
        two = model.write_bank(b["exemplar_image"], t, b["labels"], prompt)
    assert any((one[k] - two[k]).abs().max() > 1e-5 for k in one)


def test_controlnet_from_unet_copies_the_encoder_and_rejects_odd_factors(tiny_backbone):
    unet = tiny_backbone.new_unet()
    net = controlnet_from_unet(unet, 1)
    assert torch.equal(net.conv_in.weight, unet.conv_in.weight)
    assert all(p.abs().max() == 0 for p in net.controlnet_mid_block.parameters())  # zero convolutions
    with pytest.raises(ValueError, match="power of 2, got 3"):
        controlnet_from_unet(unet, 3)


# --- stage 1 ------------------------------------------------------------------------------------


def _stage(**kw):
    torch.manual_seed(0)
    return GenerationStage(num_classes=kw.pop("num_classes", 5), backbone_options=TINY_OPTIONS,
                           guidance="controlnet", **kw)


def _grads(stage):
    stage.zero_grad()
    loss = stage.denoising_loss(make_batch(), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    guidance = [p.grad is not None and p.grad.abs().sum() > 0 for p in stage.model.guidance.parameters()]
    unet = {n for n, p in stage.model.unet.named_parameters() if p.grad is not None}
    return guidance, unet


def test_stage1_trains_the_controlnet():
    stage = _stage(exemplar_dropout=0.0)
    assert isinstance(stage.model.guidance, ControlNetGuidance)
    guidance, unet = _grads(stage)
    # Every ControlNet weight that can get a gradient does (the zero convolutions' outputs, and
    # through them the rest, after the first step; at init the zero convolutions get theirs).
    zero_convs = [p.grad for n, p in stage.model.guidance.named_parameters() if "controlnet_down_blocks" in n]
    assert all(g is not None and g.abs().sum() > 0 for g in zero_convs)
    assert unet  # trainable="all"


def test_a_frozen_controlnet_gets_no_gradient_and_attention_alone_trains():
    stage = _stage(guidance_trainable=False)
    assert not any(p.requires_grad for p in stage.model.guidance.parameters())
    guidance, unet = _grads(stage)
    assert not any(guidance) and unet
    stage = _stage(guidance_trainable=False, trainable="attention")
    guidance, unet = _grads(stage)
    assert not any(guidance) and unet and all("attentions." in n for n in unet)
    trainable = [n for n, p in stage.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("model.unet.") and "attentions." in n for n in trainable)


def test_controlnet_colors_from_a_dataset_name_a_list_or_the_default():
    from amlight.data.controlnet_colors import controlnet_color_map
    from amlight.data.datasets.ade20k import COLORS as ADE

    city = GenerationStage(num_classes=19, backbone_options=TINY_OPTIONS, guidance="controlnet",
                           controlnet_colors="cityscapes")
    table = controlnet_color_map("cityscapes")
    assert city.hparams["class_colors"] == [[int(v) for v in table[i]] for i in range(19)]
    assert city.model.guidance.config.class_colors == city.hparams["class_colors"]
    assert _stage(controlnet_colors=COLORS).model.guidance.config.class_colors == COLORS
    assert _stage().hparams["class_colors"] == [list(c) for c in ADE[:5]]
    assert "class_colors" not in GenerationStage(num_classes=5, backbone_options=TINY_OPTIONS).hparams


def test_bad_controlnet_colors_are_one_line_errors():
    for colors, expected in ((COLORS[:3], "controlnet_colors holds 3 colours for 5 classes"),
                             ("cityscapes", "cityscapes has 19 classes but num_classes is 5")):
        with pytest.raises(ValueError) as info:
            _stage(controlnet_colors=colors)
        assert expected in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unknown guidance 'lines'"):
        GenerationStage(num_classes=5, backbone_options=TINY_OPTIONS, guidance="lines")
