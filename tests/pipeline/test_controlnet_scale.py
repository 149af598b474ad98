"""``controlnet_conditioning_scale`` at call time (issue 20): a ControlNet pipeline draws at the scale a
call asks for, exemplar inversion included; the folder's own scale is the default (same bytes when
given explicitly); banks built at one scale are refused at another; ``generate --controlnet-scale``
records it, and a model without a ControlNet refuses it."""
import json

import numpy as np
import pytest
import torch

from amlight.pipeline.synthesis import AMPipeline

from helpers.tiny_models import controlnet_pipeline, save_controlnet_folder

CLASSES = 5
STEPS = 3


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, CLASSES, (2, 16, 16), generator=g)
    exemplar = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    return exemplar, targets[1].flip(-1)[None], targets


@pytest.fixture(scope="module")
def pipe():
    return controlnet_pipeline()


def test_the_scale_changes_the_images_in_every_mode(pipe):
    exemplar, ex_labels, targets = _inputs()
    for mode in ("structure_only", "augmented"):
        default = pipe.generate(exemplar, ex_labels, targets, steps=STEPS, attention=mode)
        weak = pipe.generate(exemplar, ex_labels, targets, steps=STEPS, attention=mode,
                             controlnet_conditioning_scale=0.25)
        assert (default - weak).abs().max() > 1e-3, mode


def test_the_inversion_and_banks_follow_the_scale(pipe):
    exemplar, ex_labels, _ = _inputs()
    default = pipe.build_banks(exemplar, ex_labels, STEPS)
    weak = pipe.build_banks(exemplar, ex_labels, STEPS, controlnet_conditioning_scale=0.25)
    assert default.controlnet_scale == pipe.structure_guidance.config.conditioning_scale == 1.0
    assert weak.controlnet_scale == 0.25
    layer = next(iter(default.banks[0]))
    assert not torch.allclose(default.banks[0][layer], weak.banks[0][layer])


def test_the_folders_scale_given_explicitly_draws_the_same_bytes_and_nothing_leaks(tmp_path):
    folder = save_controlnet_folder(tmp_path / "cn")
    loaded = AMPipeline.from_pretrained(folder)
    assert loaded.is_controlnet
    configured = loaded.structure_guidance.config.conditioning_scale
    exemplar, ex_labels, targets = _inputs()
    exemplar01 = (exemplar + 1) / 2  # the diffusers-style call reads images in [0, 1]

    def call(**kw):
        images = loaded(list(targets), exemplar01, ex_labels[0], num_inference_steps=2, mode="augmented", **kw).images
        return np.stack([np.asarray(im) for im in images])

    default = call()
    assert np.array_equal(default, call(controlnet_conditioning_scale=configured))
    other = call(controlnet_conditioning_scale=0.25)
    assert not np.array_equal(default, other)
    # A call at another scale sets nothing that outlives it: the next default call is the same bytes.
    assert np.array_equal(default, call())
    assert loaded.structure_guidance.conditioning_scale == configured


def test_banks_built_at_another_scale_are_refused(pipe):
    exemplar, ex_labels, targets = _inputs()
    banks = pipe.build_banks(exemplar, ex_labels, STEPS, controlnet_conditioning_scale=0.5)
    with pytest.raises(ValueError, match=r"built with controlnet_conditioning_scale=0.5 but this draw uses 1") as e:
        pipe.draw(targets, banks, attention="augmented")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="0.5 but this draw uses 2"):
        pipe.draw(targets, banks, attention="augmented", controlnet_conditioning_scale=2.0)
    images = pipe.draw(targets, banks, attention="augmented", controlnet_conditioning_scale=0.5)
    assert torch.isfinite(images).all()


def test_a_scale_on_a_pipeline_without_controlnet_is_refused(tiny_model, tiny_backbone):
    plain = AMPipeline.from_model(tiny_model, tiny_backbone)
    assert not plain.is_controlnet
    exemplar, ex_labels, targets = _inputs()
    with pytest.raises(ValueError, match="StructureGuidance .*not a ControlNet"):
        plain(list(targets), (exemplar + 1) / 2, ex_labels[0], num_inference_steps=STEPS, mode="augmented",
              controlnet_conditioning_scale=0.5)
    with pytest.raises(ValueError, match="not a ControlNet"):
        plain.build_banks(exemplar, ex_labels, STEPS, controlnet_conditioning_scale=0.5)
    banks = plain.build_banks(exemplar, ex_labels, STEPS)
    assert banks.controlnet_scale is None
    plain.draw(targets[:1], banks, attention="augmented")  # no scale anywhere: unchanged behaviour


def test_a_non_finite_scale_is_refused(pipe):
    exemplar, ex_labels, targets = _inputs()
    with pytest.raises(ValueError, match="finite"):
        pipe.draw(targets, None, attention="structure_only", steps=STEPS, controlnet_conditioning_scale=float("nan"))


# --- the generate command -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    from helpers.folder_datasets import NAMES, make_dataset

    root = tmp_path_factory.mktemp("cn_generate")
    data = make_dataset(root / "data", n=2)
    folder = save_controlnet_folder(root / "folder", names=NAMES)
    return {"root": root, "data": data, "folder": folder}


def _generate(setup, out, *extra):
    from amlight.cli.commands.generate import main

    val = setup["data"] / "val"
    return main(["--pipeline", str(setup["folder"]), "--exemplar", str(val / "images" / "s0.png"),
                 "--exemplar-labels", str(val / "labels" / "s0.png"), "--target-labels", str(val / "labels" / "s1.png"),
                 "--mode", "augmented", "--steps", "2", "--quiet", "--out", str(out), *extra])


def _outputs(out):
    from PIL import Image

    summary = json.loads((out / "summary.json").read_text())
    return summary, [np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))]


def test_generate_records_the_controlnet_scale_and_draws_with_it(cli_setup):
    root = cli_setup["root"]
    assert _generate(cli_setup, root / "default") == 0
    assert _generate(cli_setup, root / "same", "--controlnet-scale", "1") == 0
    assert _generate(cli_setup, root / "weak", "--controlnet-scale", "0.25") == 0
    default, images = _outputs(root / "default")
    same, same_images = _outputs(root / "same")
    weak, weak_images = _outputs(root / "weak")
    assert default["settings"]["controlnet_scale"] == 1.0  # the folder's own, recorded
    assert same["settings"]["controlnet_scale"] == 1.0
    assert weak["settings"]["controlnet_scale"] == 0.25
    assert images and all(np.array_equal(a, b) for a, b in zip(images, same_images))
    assert any(not np.array_equal(a, b) for a, b in zip(images, weak_images))


def test_generate_refuses_the_scale_on_a_model_without_controlnet(cli_setup, stage1_ckpt, capsys):
    from amlight.cli.commands.generate import main

    val = cli_setup["data"] / "val"
    out = cli_setup["root"] / "refused"
    code = main(["--stage1", str(stage1_ckpt), "--data", str(cli_setup["data"]), "--exemplar",
                 str(val / "images" / "s0.png"), "--exemplar-labels", str(val / "labels" / "s0.png"),
                 "--target-labels", str(val / "labels" / "s1.png"), "--mode", "augmented", "--quiet",
                 "--controlnet-scale", "0.5", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "--controlnet-scale" in err[0] and str(stage1_ckpt) in err[0]
    assert "no ControlNet" in err[0]
    assert not out.exists()
