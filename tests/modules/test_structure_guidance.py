import pytest
import torch

from amlight.modules.structure_guidance import StructureGuidance, cross_normalize, one_hot_labels


def test_one_hot_gives_ignore_and_out_of_range_no_class():
    labels = torch.tensor([[[0, 2], [255, 7]]])
    oh = one_hot_labels(labels, num_classes=3)
    assert oh.shape == (1, 3, 2, 2)
    assert oh[0, :, 0, 0].tolist() == [1, 0, 0] and oh[0, :, 0, 1].tolist() == [0, 0, 1]
    assert oh[0, :, 1, 0].sum() == 0 and oh[0, :, 1, 1].sum() == 0


def test_output_matches_the_latent_grid_for_a_vae_backbone():
    g = StructureGuidance(num_classes=19, out_channels=320, downsample=8, channels=16)
    out = g(torch.randint(0, 19, (2, 64, 64)), torch.tensor([10, 900]))
    assert out.shape == (2, 320, 8, 8)
    with pytest.raises(ValueError, match="power of 2"):
        StructureGuidance(num_classes=3, out_channels=8, downsample=6)


def test_cross_normalize_takes_the_features_statistics_per_sample():
    control = torch.randn(2, 4, 8, 8) * 10 + 3
    features = torch.randn(2, 4, 8, 8)
    features[1] = features[1] * 0.1 - 2
    out = cross_normalize(control, features)
    for i in range(2):
        assert torch.allclose(out[i].mean(), features[i].mean(), atol=1e-4)
        assert torch.allclose(out[i].std(), features[i].std(), rtol=1e-3)


def test_the_label_map_changes_the_unet_output(tiny_model, tiny_backbone):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=g)
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    other = labels.clone()
    other[:, :, 8:] = 3
    t = torch.tensor([500, 500])
    with torch.no_grad():
        a = tiny_model(x, t, labels, tiny_backbone.prompt_batch(2))
        b = tiny_model(x, t, other, tiny_backbone.prompt_batch(2))
    assert (a - b).abs().mean() > 1e-3  # guidance reaches the UNet through the conv_in hook
