import pytest
import torch

from amlight.backbone import BackboneError, get_backbone
from amlight.backbone.registry import backbone_from_spec


def test_tiny_preset_is_shared_and_seeded():
    a = get_backbone("tiny", seed=3)
    assert get_backbone("tiny", seed=3) is a  # one backbone per process and settings
    u1, u2 = a.new_unet(), a.new_unet()
    assert all(torch.equal(p, q) for p, q in zip(u1.parameters(), u2.parameters()))
    other = get_backbone("tiny", seed=4).new_unet()
    assert not all(torch.equal(p, q) for p, q in zip(u1.parameters(), other.parameters()))
    assert a.latent_downsample == 1 and a.latent_channels == 3 and a.vae is None


def test_tiny_pixel_space_codec_is_identity():
    bb = get_backbone("tiny")
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.equal(bb.decode(bb.encode(x)), x)


def test_unknown_preset_and_option_are_clear_errors():
    with pytest.raises(BackboneError, match="unknown backbone preset 'sd21'.*known presets: sd15, tiny"):
        get_backbone("sd21")
    with pytest.raises(BackboneError, match="unknown tiny backbone option"):
        get_backbone("tiny", options={"channels": 3})


def test_missing_sd15_path_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="does not exist"):
        get_backbone("sd15", path=str(tmp_path / "nowhere"))
    (tmp_path / "partial" / "unet").mkdir(parents=True)
    with pytest.raises(BackboneError, match=r"lacks the subfolder\(s\) \['vae', 'text_encoder', 'tokenizer', 'scheduler'\]"):
        get_backbone("sd15", path=str(tmp_path / "partial"))
    with pytest.raises(BackboneError, match="needs a path"):
        get_backbone("sd15")


def test_sd15_loads_from_a_saved_pretrained_folder(tiny_sd15_dir):
    bb = get_backbone("sd15", path=str(tiny_sd15_dir), prompt="a street")
    assert bb.prompt_embeds.shape == (1, 77, 32)
    assert not torch.equal(bb.prompt_embeds, bb.negative_prompt_embeds)  # the prompt was really encoded
    assert bb.latent_downsample == 2 and bb.latent_channels == 4
    assert not any(p.requires_grad for p in bb.vae.parameters())
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    latents = bb.encode(images)
    assert latents.shape == (1, 4, 8, 8)
    assert bb.decode(latents).shape == images.shape
    assert bb.new_unet().config.in_channels == 4
    assert backbone_from_spec(bb.spec) is bb
