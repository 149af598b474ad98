"""The diffusers-style call (issue 19 item 2): PIL images, arrays, tensors or files in, ``.images`` out.

It reads label maps with the pipeline's label space (index or palette-colour images; unknown colours
are errors), resizes inputs of another size as ``generate`` does (with a warning), and draws what the
low-level ``build_banks`` + ``draw`` draw, byte for byte.
"""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from amlight.data.io import DataFileError
from amlight.pipeline.call_inputs import InputResizedWarning
from amlight.pipeline.label_space import PipelineLabelSpace
from amlight.pipeline.synthesis import AMPipeline, AMPipelineOutput
from amlight.utils.visualize import to_uint8

STEPS = 2
CLASSES = 5
COLORS = [[200, 0, 0], [0, 200, 0], [0, 0, 200], [200, 200, 0], [0, 200, 200]]


@pytest.fixture(scope="module")
def pipe(stage1_ckpt):
    space = PipelineLabelSpace([f"c{i}" for i in range(CLASSES)], COLORS, name="toy")
    pipe = AMPipeline.from_checkpoints(stage1_ckpt, label_space=space)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, CLASSES, (2, 16, 16), generator=g)
    exemplar = torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8).numpy()
    return targets, exemplar, targets[1].flip(0)


def _colour(labels: torch.Tensor) -> Image.Image:
    return Image.fromarray(np.asarray(COLORS, dtype=np.uint8)[labels.numpy()])


def _low_level(pipe, targets, exemplar_uint8, exemplar_labels, mode="augmented", seed=0):
    image = torch.from_numpy(exemplar_uint8).permute(2, 0, 1).float().div(127.5).sub(1)[None]
    banks = pipe.build_banks(image, exemplar_labels[None], STEPS, seed=seed)
    return pipe.draw(targets, banks, attention=mode, guidance_scale=3.0, seed=seed)


def test_pil_in_and_out_draws_what_the_low_level_api_draws(pipe, inputs, tmp_path):
    targets, exemplar, exemplar_labels = inputs
    expected = to_uint8(_low_level(pipe, targets, exemplar, exemplar_labels)).permute(0, 2, 3, 1).numpy()
    # Colour label maps (the label space's palette), a PIL exemplar: PIL images out.
    out = pipe([_colour(t) for t in targets], Image.fromarray(exemplar), _colour(exemplar_labels),
               num_inference_steps=STEPS, mode="augmented")
    assert isinstance(out, AMPipelineOutput) and len(out.images) == 2
    assert all(isinstance(im, Image.Image) and im.size == (16, 16) for im in out.images)
    assert [np.asarray(im).tobytes() for im in out.images] == [e.tobytes() for e in expected]
    # The same as files, as index images and as integer arrays: the same bytes.
    paths = []
    for i, t in enumerate(targets):
        paths.append(tmp_path / f"t{i}.png")
        Image.fromarray(t.numpy().astype(np.uint8), mode="L").save(paths[-1])
    Image.fromarray(exemplar).save(tmp_path / "ex.png")
    _colour(exemplar_labels).save(tmp_path / "ex_labels.png")
    from_files = pipe([str(p) for p in paths], tmp_path / "ex.png", tmp_path / "ex_labels.png",
                      num_inference_steps=STEPS, mode="augmented", output_type="np").images
    assert np.array_equal(np.round(from_files * 255).astype(np.uint8), expected)
    kw = dict(num_inference_steps=STEPS, mode="structure_only", output_type="np")  # the targets alone
    assert np.array_equal(pipe(targets.numpy(), **kw).images, pipe([str(p) for p in paths], **kw).images)


def test_output_types_agree(pipe, inputs):
    targets, _, _ = inputs
    kw = dict(num_inference_steps=STEPS, mode="structure_only")
    pt = pipe(targets, **kw, output_type="pt").images
    np_images = pipe(targets, **kw, output_type="np").images
    latents = pipe(targets, **kw, output_type="latent").images
    (pil,) = pipe(targets[:1], **kw, return_dict=False)
    assert pt.shape == (2, 3, 16, 16) and pt.dtype == torch.float32 and 0 <= pt.min() and pt.max() <= 1
    assert np_images.shape == (2, 16, 16, 3) and np.array_equal(np_images, pt.permute(0, 2, 3, 1).numpy())
    # Pixel space (tiny preset): the latents are the images in [-1, 1], before clamping.
    assert torch.equal(((latents.clamp(-1, 1) + 1) / 2), pt)
    assert np.asarray(pil[0]).tobytes() == to_uint8(pt[:1] * 2 - 1).permute(0, 2, 3, 1).numpy()[0].tobytes()
    with pytest.raises(ValueError, match="output_type"):
        pipe(targets, **kw, output_type="jpeg")


def test_generator_seed_is_the_draw_seed(pipe, inputs):
    targets, exemplar, exemplar_labels = inputs
    expected = _low_level(pipe, targets, exemplar, exemplar_labels, seed=7)
    out = pipe(list(targets), exemplar, exemplar_labels, num_inference_steps=STEPS, mode="augmented",
               generator=torch.Generator().manual_seed(7), output_type="pt").images
    assert torch.equal(out, (expected.clamp(-1, 1) + 1) / 2)
    # A target's image does not depend on its batch (up to float rounding of other batch shapes, as
    # tests/pipeline/test_pipeline_options.py checks for draw).
    alone = pipe(targets[1], exemplar, exemplar_labels, num_inference_steps=STEPS, mode="augmented",
                 generator=torch.Generator().manual_seed(7), output_type="pt").images
    torch.testing.assert_close(alone[0], out[1], atol=1e-5, rtol=1e-4)


def test_inputs_of_another_size_are_resized_with_a_warning(pipe, inputs):
    from amlight.apps.inputs import resize_image, resize_labels_nearest

    targets, exemplar, exemplar_labels = inputs
    big_targets = targets.repeat_interleave(2, -1).repeat_interleave(2, -2)  # 32x32, exactly 2x
    big_exemplar = np.asarray(Image.fromarray(exemplar).resize((32, 32), Image.BICUBIC))
    with pytest.warns(InputResizedWarning, match="32x32.*16x16"):
        out = pipe(list(big_targets), big_exemplar, exemplar_labels, num_inference_steps=STEPS, mode="augmented",
                   output_type="pt").images
    assert out.shape == (2, 3, 16, 16)
    image = resize_image(big_exemplar, (16, 16))[None]
    labels = torch.stack([resize_labels_nearest(t, (16, 16)) for t in big_targets])
    assert torch.equal(labels, targets)
    banks = pipe.build_banks(image, exemplar_labels[None], STEPS)
    assert torch.equal(out, (pipe.draw(labels, banks, attention="augmented").clamp(-1, 1) + 1) / 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputResizedWarning)  # at the model's size: no warning
        pipe(targets, num_inference_steps=1, mode="structure_only", output_type="pt")


def test_bad_inputs_are_clear_errors(pipe, inputs, tmp_path):
    targets, exemplar, exemplar_labels = inputs
    off_palette = np.asarray(_colour(targets[0])).copy()
    off_palette[0, 0] = (1, 2, 3)
    with pytest.raises(DataFileError, match=r"not in the palette"):
        pipe(Image.fromarray(off_palette), num_inference_steps=1, mode="structure_only")
    with pytest.raises(ValueError, match="outside the 5 classes"):
        pipe(targets + 10, num_inference_steps=1, mode="structure_only")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pipe(targets, torch.rand(3, 16, 16) * 2 - 1, exemplar_labels, num_inference_steps=1, mode="augmented")
    with pytest.raises(ValueError, match="exemplar images and their label maps"):
        pipe(targets, exemplar, None, num_inference_steps=1, mode="augmented")
    with pytest.raises(ValueError, match="needs an adapter"):  # the default mode, and this pipeline has none
        pipe(targets, exemplar, exemplar_labels, num_inference_steps=1)


def test_callback_on_step_end_sees_and_replaces_the_latents(pipe, inputs):
    targets, _, _ = inputs
    seen = []

    def callback(p, step, timestep, kwargs):
        assert p is pipe and kwargs["latents"].shape == (2, 3, 16, 16)
        seen.append((step, int(timestep)))
        if step == STEPS - 1:
            return {"latents": torch.zeros_like(kwargs["latents"])}
        return {}

    out = pipe(targets, num_inference_steps=STEPS, mode="structure_only", output_type="pt",
               callback_on_step_end=callback).images
    assert [s for s, _ in seen] == list(range(STEPS))
    from amlight.pipeline.schedulers import fresh_scheduler

    assert [t for _, t in seen] == fresh_scheduler(pipe.scheduler, STEPS).timesteps.tolist()
    assert torch.equal(out, torch.full_like(out, 0.5))  # zero latents decode to mid grey in pixel space


def test_the_python_call_draws_the_bytes_generate_writes(stage1_ckpt, tmp_path):
    """Files in, the folder's label space decoding them: what ``generate`` writes for the same pair."""
    from amlight.cli.commands.generate import main
    from helpers.folder_datasets import COLORS as DATA_COLORS, NAMES, make_dataset

    val = make_dataset(tmp_path / "data", n=2) / "val"  # 32x32 colour-label files: resized to 16x16
    out = tmp_path / "out"
    assert main(["--stage1", str(stage1_ckpt), "--data", str(tmp_path / "data"), "--out", str(out), "--steps", "2",
                 "--mode", "augmented", "--threads", "1", "--quiet", "--exemplar", str(val / "images/s0.png"),
                 "--exemplar-labels", str(val / "labels/s0.png"), "--target-labels", str(val / "labels/s1.png")]) == 0
    pipe = AMPipeline.from_checkpoints(stage1_ckpt, label_space=PipelineLabelSpace(NAMES, DATA_COLORS))
    pipe.set_progress_bar_config(disable=True)
    with pytest.warns(InputResizedWarning):
        (image,) = pipe(val / "labels/s1.png", val / "images/s0.png", val / "labels/s0.png", num_inference_steps=2,
                        mode="augmented", generator=torch.Generator().manual_seed(0)).images
    assert np.asarray(image).tobytes() == np.asarray(Image.open(out / "s0__s1__augmented.png").convert("RGB")).tobytes()
