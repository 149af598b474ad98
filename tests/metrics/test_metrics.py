"""amlight.metrics: known answers for the ground-truth metrics, tiny random networks for the paper's
metrics (saved with save_pretrained and loaded by path, as real weights are), and the CLI end to end."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from amlight.metrics import (
    ClipImageSimilarity,
    FIDMetric,
    MetricWeightsError,
    MissingDependencyError,
    SegmentationMIoU,
    SelfSimilarityDistance,
    class_color_error,
    fid_score,
    ground_truth_scores,
    images_from_uint8,
    images_to_uint8,
    intersection_and_union,
    label_recovery_miou,
    mean_ci95,
    miou,
    psnr,
    ssim,
)
from amlight.metrics.color import linear_to_srgb

# CIE Lab (D65) of sRGB pure red, from the sRGB/Lab definitions (e.g. Lindbloom's calculator).
RED_LAB = (53.2408, 80.0925, 67.2032)
RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
GREY = (128, 128, 128)


def _layout(n=2, h=24, w=24):
    """Three classes: 0 left half, 1 top right, 2 bottom right; a 3x3 ignore patch in the top-left corner."""
    labels = np.zeros((n, h, w), np.int64)
    labels[:, : h // 2, w // 2:] = 1
    labels[:, h // 2:, w // 2:] = 2
    labels[:, :3, :3] = 255
    return labels


def _paint(labels, colors):
    """uint8 (N, H, W, 3) with each class's region in its colour (ignore pixels black), as [-1, 1] tensors."""
    img = np.zeros((*labels.shape, 3), np.uint8)
    for cls, color in colors.items():
        img[labels == cls] = color
    return images_from_uint8(img)


# --- ground truth -----------------------------------------------------------------------------


def test_image_converters_round_trip():
    img = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    tensor = images_from_uint8(img)
    assert tensor.shape == (2, 3, 5, 7) and tensor.min() >= -1 and tensor.max() <= 1
    assert np.array_equal(images_to_uint8(tensor), img)
    assert images_from_uint8(img[0]).shape == (1, 3, 5, 7)
    with pytest.raises(TypeError, match="images_from_uint8"):
        psnr(img, img)


def test_psnr_of_a_known_mse_per_image():
    torch.manual_seed(0)
    target = torch.rand(2, 3, 16, 16) - 0.5
    # offsets in [-1, 1] units; halved in [0, 1]: MSE 0.01 -> 20 dB, 0.0001 -> 40 dB
    pred = target + torch.tensor([0.2, 0.02]).view(2, 1, 1, 1)
    np.testing.assert_allclose(psnr(pred, target), [20.0, 40.0], atol=1e-4)
    assert np.isinf(psnr(target, target)).all()


def test_ssim_is_one_for_identical_images_and_lower_otherwise():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    np.testing.assert_allclose(ssim(x, x), 1.0, atol=1e-12)
    noisy = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    assert (ssim(noisy, x) < 0.95).all()
    with pytest.raises(ValueError, match="11x11"):
        ssim(x[..., :8, :8], x[..., :8, :8])
    with pytest.raises(ValueError, match="shape"):
        ssim(x, x[:1])


def test_delta_e_of_pure_red_against_black_matches_hand_lab_values():
    labels = _layout()
    target = _paint(labels, {0: RED, 1: GREEN, 2: BLUE})
    pred = _paint(labels, {0: (0, 0, 0), 1: GREEN, 2: BLUE})
    result = class_color_error(pred, target, labels, num_classes=4, formula="de76")
    de76 = math.sqrt(sum(v * v for v in RED_LAB))  # black is L=a=b=0
    np.testing.assert_allclose(result.per_class[:, 0], de76, rtol=1e-4)
    np.testing.assert_allclose(result.per_class[:, 1:3], 0.0, atol=1e-9)
    assert np.isnan(result.per_class[:, 3]).all()  # class 3 is absent
    np.testing.assert_allclose(result.per_image, de76 / 3, rtol=1e-4)  # unweighted over the 3 classes present

    from skimage.color import deltaE_ciede2000

    ciede = class_color_error(pred, target, labels, num_classes=4)  # default formula
    np.testing.assert_allclose(ciede.per_class[:, 0], deltaE_ciede2000(np.array(RED_LAB), np.zeros(3)), rtol=1e-4)


def test_delta_e_zero_for_identical_images_and_recolouring_touches_one_class():
    labels = _layout()
    target = _paint(labels, {0: RED, 1: GREEN, 2: BLUE})
    same = class_color_error(target, target, labels, 3)
    assert np.all(same.per_class == 0) and np.all(same.per_image == 0)

    recoloured = _paint(labels, {0: RED, 1: GREY, 2: BLUE})
    result = class_color_error(recoloured, target, labels, 3)
    whole = class_color_error(_paint(np.ones_like(labels), {1: GREY}), _paint(np.ones_like(labels), {1: GREEN}),
                              np.ones_like(labels), 3)
    np.testing.assert_allclose(result.per_class[:, 1], whole.per_class[:, 1])  # exactly green vs grey's ΔE
    assert result.per_class[0, 1] > 10
    np.testing.assert_allclose(result.per_class[:, [0, 2]], 0.0, atol=1e-9)


def test_delta_e_erosion_ignores_boundary_blur_and_means_are_in_linear_rgb():
    labels = _layout(n=1)
    target = _paint(labels, {0: RED, 1: GREEN, 2: BLUE})
    blurred = target.clone()
    blurred[..., :, 11:13] = 0.0  # a grey seam along the class 0 / class 1-2 boundary
    assert class_color_error(blurred, target, labels, 3).per_image[0] == pytest.approx(0.0, abs=1e-9)
    assert class_color_error(blurred, target, labels, 3, erode=False).per_image[0] > 1.0

    # a black/white checkerboard region averages (in linear light) to the sRGB grey of linear 0.5
    flat = np.zeros((1, 12, 12), np.int64)
    checker = torch.full((1, 3, 12, 12), -1.0)
    checker[..., ::2, ::2] = 1.0
    checker[..., 1::2, 1::2] = 1.0
    grey = torch.full((1, 3, 12, 12), float(linear_to_srgb(0.5)) * 2 - 1)
    assert class_color_error(checker, grey, flat, 1).per_image[0] == pytest.approx(0.0, abs=1e-6)


def test_label_recovery_miou_is_one_for_the_reference_and_drops_when_classes_swap():
    labels = _layout()
    reference = _paint(labels, {0: RED, 1: GREEN, 2: BLUE, 255: GREY})
    np.testing.assert_allclose(label_recovery_miou(reference, labels, reference, 3), 1.0)
    swapped = _paint(labels, {0: RED, 1: BLUE, 2: GREEN})
    np.testing.assert_allclose(label_recovery_miou(swapped, labels, reference, 3), 1 / 3)  # classes 1, 2 get IoU 0


def test_miou_known_answer_with_ignore_and_out_of_range_predictions():
    labels = np.array([[[0, 0, 1, 1, 255]]])
    pred = np.array([[[0, 1, 1, 1, 0]]])
    inter, union = intersection_and_union(pred, labels, 3)
    assert inter.tolist() == [[1, 2, 0]] and union.tolist() == [[2, 3, 0]]
    np.testing.assert_allclose(miou(pred, labels, 3), (1 / 2 + 2 / 3) / 2)  # class 2 absent: not averaged
    np.testing.assert_allclose(miou(np.array([[[0, 0, 7, 1, 1]]]), labels, 3), (1 + 1 / 2) / 2)  # 7: wrong, not a class
    assert np.isnan(miou(labels * 0 + 255, labels * 0 + 255, 3)).all()


def test_mean_ci95_matches_a_hand_computed_t_interval():
    mean, half = mean_ci95([1.0, 2.0, 3.0, 4.0, float("nan")])
    # n = 4, s = sqrt(5/3), t_{0.975, 3} = 3.182446305
    assert mean == pytest.approx(2.5)
    assert half == pytest.approx(3.182446305 * math.sqrt(5 / 3) / 2, rel=1e-8)
    assert mean_ci95([7.0])[0] == 7.0 and math.isnan(mean_ci95([7.0])[1])
    assert all(math.isnan(v) for v in mean_ci95([]))


def test_ground_truth_scores_returns_per_image_arrays():
    labels = _layout()
    target = _paint(labels, {0: RED, 1: GREEN, 2: BLUE})
    scores = ground_truth_scores(target, target, labels, 3)
    assert sorted(scores) == ["delta_e", "label_miou", "psnr", "ssim"]
    assert all(v.shape == (2,) for v in scores.values())
    assert np.all(scores["delta_e"] == 0) and np.all(scores["label_miou"] == 1) and np.all(scores["ssim"] == 1)
    assert sorted(ground_truth_scores(target, target)) == ["psnr", "ssim"]
    with pytest.raises(ValueError, match="need labels"):
        ground_truth_scores(target, target, metrics=["delta_e"])


# --- networks ---------------------------------------------------------------------------------


class TinyFeatures(torch.nn.Module):
    num_features = 8

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))


def test_fid_with_a_tiny_feature_extractor():
    torch.manual_seed(0)
    extractor = TinyFeatures()
    images = torch.rand(40, 3, 16, 16) * 2 - 1
    same = fid_score(images, images.clone(), extractor, device="cpu")
    shifted = fid_score((images + 0.5).clamp(-1, 1), images, extractor, device="cpu")
    assert abs(same) < 1e-6
    assert shifted > 1e-3 and shifted > 100 * abs(same)
    undeclared = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    assert FIDMetric(undeclared, input_size=(3, 16, 16), device="cpu").metric.inception.num_features == 4
    metric = FIDMetric(extractor, device="cpu")
    metric.update(images[:1], real=True)
    metric.update(images[:5], real=False)
    with pytest.raises(ValueError, match="at least 2"):
        metric.compute()


def test_fid_standard_network_needs_a_weights_file_and_torch_fidelity(tmp_path, monkeypatch):
    with pytest.raises(MetricWeightsError, match="no Inception weights path"):
        FIDMetric()
    with pytest.raises(MetricWeightsError, match="does not exist") as info:
        FIDMetric(weights_path=tmp_path / "missing.pth")
    assert str(tmp_path / "missing.pth") in str(info.value)
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"not a state dict")
    monkeypatch.setattr("amlight.metrics.fid.torch_fidelity_available", lambda: False)
    with pytest.raises(MissingDependencyError, match="pip install torch-fidelity"):
        FIDMetric(weights_path=weights)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Tiny random-weight DINO ViT, DINOv2, CLIP (vision+projection, full, and without projection)
    and SegFormer folders, written with save_pretrained."""
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        CLIPVisionModelWithProjection,
        Dinov2Config,
        Dinov2Model,
        SegformerConfig,
        SegformerForSemanticSegmentation,
        ViTConfig,
        ViTModel,
    )

    root = tmp_path_factory.mktemp("tiny_models")
    torch.manual_seed(0)
    vit = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               image_size=32, patch_size=8)
    ViTModel(ViTConfig(**vit), add_pooling_layer=False).save_pretrained(root / "dino")
    Dinov2Model(Dinov2Config(**vit)).save_pretrained(root / "dinov2")
    CLIPVisionModelWithProjection(CLIPVisionConfig(**vit, projection_dim=16)).save_pretrained(root / "clip")
    CLIPVisionModel(CLIPVisionConfig(**vit)).save_pretrained(root / "clip_no_projection")
    CLIPModel(CLIPConfig(
        vision_config=vit, projection_dim=16,
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=1),
    )).save_pretrained(root / "clip_full")
    SegformerForSemanticSegmentation(SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=3,
    )).save_pretrained(root / "segmenter")
    return root


@pytest.mark.parametrize("model, features", [("dino", "keys"), ("dino", "tokens"), ("dinov2", "keys")])
def test_self_similarity_distance(tiny_models, model, features):
    metric = SelfSimilarityDistance(tiny_models / model, features=features, device="cpu")
    torch.manual_seed(1)
    x = torch.rand(3, 3, 40, 48) * 2 - 1  # not the model's 32x32: resized
    y = torch.rand(3, 3, 40, 48) * 2 - 1
    assert metric.self_similarity(x).shape == (3, 16, 16)  # (32 / 8)^2 patches
    np.testing.assert_allclose(metric(x, x), 0.0, atol=1e-12)
    d_xy, d_yx = metric(x, y), metric(y, x)
    assert d_xy.shape == (3,) and (d_xy > 0).all()
    np.testing.assert_allclose(d_xy, d_yx, rtol=1e-6)


def test_self_similarity_keys_come_from_the_last_layer(tiny_models):
    metric = SelfSimilarityDistance(tiny_models / "dino", device="cpu")
    assert metric._key_proj is metric.model.layers[-1].attention.k_proj


def test_clip_image_similarity(tiny_models):
    torch.manual_seed(2)
    x = torch.rand(2, 3, 40, 48) * 2 - 1
    y = torch.rand(2, 3, 24, 24) * 2 - 1  # exemplars may have another size
    for folder in ("clip", "clip_full"):
        metric = ClipImageSimilarity(tiny_models / folder, device="cpu")
        np.testing.assert_allclose(metric(x, x), 1.0, atol=1e-5)
        sim = metric(x, y)
        assert sim.shape == (2,) and np.all(sim >= -1) and np.all(sim <= 1) and np.all(sim < 1 - 1e-6)
    # a vision tower without its projection would leave the projection random: refused
    with pytest.raises(MetricWeightsError, match="visual_projection"):
        ClipImageSimilarity(tiny_models / "clip_no_projection", device="cpu")


def test_segmentation_miou_runs_and_is_a_fraction(tiny_models):
    metric = SegmentationMIoU(tiny_models / "segmenter", num_classes=3, device="cpu")
    torch.manual_seed(3)
    images = torch.rand(2, 3, 32, 40) * 2 - 1
    labels = torch.from_numpy(_layout(2, 32, 40) % 3)
    scores = metric(images, labels)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    assert 0 <= metric.dataset_miou() <= 1
    assert metric.predict(images, (16, 20)).shape == (2, 16, 20)
    with pytest.raises(MetricWeightsError, match="predicts 3 classes but the dataset has 19"):
        SegmentationMIoU(tiny_models / "segmenter", num_classes=19, device="cpu")


@pytest.mark.parametrize("cls", [SelfSimilarityDistance, ClipImageSimilarity, SegmentationMIoU])
def test_bad_weights_paths_raise_metric_weights_error(tiny_models, tmp_path, cls):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.bin").write_bytes(b"x")
    (tmp_path / "broken").mkdir()
    good = {SelfSimilarityDistance: "dino", ClipImageSimilarity: "clip", SegmentationMIoU: "segmenter"}[cls]
    # a config.json but no weights
    (tmp_path / "broken" / "config.json").write_text((tiny_models / good / "config.json").read_text())
    cases = {
        tmp_path / "missing": "does not exist",
        tmp_path / "file.bin": "not a model folder",
        tmp_path / "empty": "no config.json",
        tmp_path / "broken": "could not be loaded",
    }
    for path, problem in cases.items():
        with pytest.raises(MetricWeightsError, match=problem) as info:
            cls(path, device="cpu")
        assert info.value.path == str(path) and "save_pretrained" in str(info.value)
    if cls is not SegmentationMIoU:  # a model of the wrong kind
        other = tiny_models / ("clip" if cls is SelfSimilarityDistance else "dino")
        with pytest.raises(MetricWeightsError, match="not"):
            cls(other, device="cpu")


# --- CLI --------------------------------------------------------------------------------------


@pytest.fixture
def folders(tmp_path):
    """pred/ ref/ labels/ exemplars/ with 3 matching 24x24 scenes and a classes.yaml dataset folder."""
    rng = np.random.default_rng(0)
    dirs = {name: tmp_path / name for name in ("pred", "ref", "labels", "exemplars", "data")}
    for d in dirs.values():
        d.mkdir()
    (dirs["data"] / "classes.yaml").write_text("names: [a, b, c]\ncolors: [[255, 0, 0], [0, 255, 0], [0, 0, 255]]\n")
    labels = _layout(3)
    ref = images_to_uint8(_paint(labels, {0: RED, 1: GREEN, 2: BLUE}))
    pred = ref.copy()
    pred[1][labels[1] == 1] = GREY  # scene_1: class 1 recoloured
    pred[2] = np.clip(pred[2].astype(int) + rng.integers(-20, 21, pred[2].shape), 0, 255).astype(np.uint8)
    for i in range(3):
        Image.fromarray(pred[i]).save(dirs["pred"] / f"scene_{i}.png")
        Image.fromarray(ref[i]).save(dirs["ref"] / f"scene_{i}.png")
        Image.fromarray(labels[i].astype(np.uint8)).save(dirs["labels"] / f"scene_{i}.png")
        Image.fromarray(ref[(i + 1) % 3]).save(dirs["exemplars"] / f"scene_{i}.png")
    Image.fromarray(ref[0]).save(dirs["ref"] / "extra_real.png")  # references may outnumber outputs
    return dirs


def test_cli_scores_folders_and_writes_json(folders, tiny_models, tmp_path, capsys):
    from amlight.cli.main import main as cli_main

    out = tmp_path / "nested" / "metrics.json"
    rc = cli_main(["metrics", "--pred", str(folders["pred"]), "--ref", str(folders["ref"]),
                   "--labels", str(folders["labels"]), "--data", str(folders["data"]),
                   "--exemplars", str(folders["exemplars"]), "--dino", str(tiny_models / "dino"),
                   "--clip", str(tiny_models / "clip"), "--segmenter", str(tiny_models / "segmenter"),
                   "--device", "cpu", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    record = json.loads(out.read_text())
    summary = record["summary"]
    assert list(summary) == ["psnr", "ssim", "delta_e", "label_miou", "self_sim", "clip", "seg_miou"]
    assert summary["ssim"]["n"] == 3 and summary["delta_e"]["ci95"] is not None
    per_image = record["per_image"]
    assert per_image["scene_0"]["psnr"] == "inf" and per_image["scene_0"]["delta_e"] == 0.0
    assert per_image["scene_0"]["self_sim"] == 0.0 and per_image["scene_0"]["label_miou"] == 1.0
    assert per_image["scene_1"]["delta_e"] > 1.0  # one of three classes recoloured
    assert sorted(record["delta_e_per_class"]) == ["a", "b", "c"]  # class names from classes.yaml
    assert record["delta_e_per_class"]["b"]["mean"] > record["delta_e_per_class"]["a"]["mean"]
    assert 0 <= record["seg_miou_dataset"] <= 1
    assert not [p for p in out.parent.iterdir() if p != out]  # written atomically, no temporary file left
    table = captured.out
    assert "ΔE per class" in table and "±95% CI" in table and "I_CLIP" in table


def test_cli_defaults_to_the_metrics_the_inputs_allow(folders, capsys):
    from amlight.cli.commands.metrics import main

    assert main(["--pred", str(folders["pred"]), "--ref", str(folders["ref"])]) == 0
    table = capsys.readouterr().out
    assert "PSNR" in table and "SSIM" in table and "ΔE" not in table


def test_cli_errors_are_clear(folders, tmp_path, capsys):
    from amlight.cli.commands.metrics import main

    pred, ref = str(folders["pred"]), str(folders["ref"])
    assert main(["--pred", str(tmp_path / "nope"), "--ref", ref]) == 1
    assert "nope" in capsys.readouterr().err

    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(other / "unrelated.png")
    assert main(["--pred", pred, "--ref", str(other)]) == 1
    err = capsys.readouterr().err
    assert "no file names match" in err and "scene_0" in err and "unrelated" in err

    small = tmp_path / "small"
    small.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(small / f"scene_{i}.png")
    assert main(["--pred", pred, "--ref", str(small)]) == 1
    err = capsys.readouterr().err
    assert "size mismatch" in err and "scene_0" in err

    assert main(["--pred", pred, "--ref", ref, "--metrics", "self_sim"]) == 2
    assert "--dino" in capsys.readouterr().err
    assert main(["--pred", pred, "--ref", ref, "--labels", str(folders["labels"]), "--metrics", "delta_e"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["--pred", pred, "--ref", ref, "--metrics", "psnr,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err

    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"not a state dict")
    assert main(["--pred", pred, "--ref", ref, "--metrics", "fid", "--inception", str(weights)]) == 1
    err = capsys.readouterr().err
    assert "torch-fidelity" in err or str(weights) in err
