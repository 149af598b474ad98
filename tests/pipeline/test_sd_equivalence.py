"""amlight against diffusers' own StableDiffusionPipeline (issue 19 item 5).

With structure guidance switched off (scale 0) and no exemplar (``structure_only``), an AMPipeline on
an SD-shaped model (UNet2DConditionModel + AutoencoderKL + CLIP text encoder, tiny random weights)
is plain text-to-image diffusion: from the same initial latents, prompt, steps and guidance it must
give StableDiffusionPipeline's latents. This pins the sampling loop, the batched classifier-free
guidance, the prompt encoding and the attention processors to the reference implementation.
"""
import pytest
import torch

from amlight.modules.structure_guidance import StructureGuidance
from amlight.pipeline.label_space import PipelineLabelSpace
from amlight.pipeline.synthesis import AMPipeline

PROMPT = "a red car"
STEPS = 4


def _parts(root):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer", model_max_length=77)
    return dict(
        unet=UNet2DConditionModel.from_pretrained(root / "unet"),  # one per pipeline: amlight sets its processors
        vae=AutoencoderKL.from_pretrained(root / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder"),
        tokenizer=tokenizer,
        # SD 1.5's own settings (StableDiffusionPipeline would rewrite an older config to these).
        scheduler=DDIMScheduler.from_pretrained(root / "scheduler", steps_offset=1, clip_sample=False),
    )


@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])
def test_structure_only_without_guidance_is_stable_diffusion(tiny_sd15_dir, guidance_scale):
    from diffusers import StableDiffusionPipeline

    parts = _parts(tiny_sd15_dir)
    unet = parts["unet"]
    off = StructureGuidance(3, unet.config.block_out_channels[0], downsample=2, channels=8, scale=0.0)
    space = PipelineLabelSpace(["road", "car", "sky"], [[1, 1, 1], [2, 2, 2], [3, 3, 3]], prompt=PROMPT)
    amlight = AMPipeline(unet, off, parts["scheduler"], label_space=space, vae=parts["vae"],
                         text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"])
    amlight.set_progress_bar_config(disable=True)
    assert amlight.resolution == (16, 16)

    sd_parts = _parts(tiny_sd15_dir)
    reference = StableDiffusionPipeline(**sd_parts, safety_checker=None, feature_extractor=None,
                                        requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)

    labels = torch.randint(0, 3, (2, 16, 16), generator=torch.Generator().manual_seed(0))
    seeds = [11, 12]
    ours = amlight.draw(labels, None, attention="structure_only", guidance_scale=guidance_scale, seed=seeds,
                        steps=STEPS, output_latents=True)
    # amlight draws each target's noise from Generator().manual_seed(seed): hand diffusers the same.
    latents = torch.cat([torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(s)) for s in seeds])
    theirs = reference(PROMPT, height=16, width=16, num_inference_steps=STEPS, guidance_scale=guidance_scale,
                       num_images_per_prompt=2, latents=latents, output_type="latent").images
    assert torch.equal(ours, theirs)

    # Decoded the same way, too (ours in [0, 1] through the diffusers-style call's "pt" output).
    images = amlight(labels, num_inference_steps=STEPS, guidance_scale=guidance_scale, mode="structure_only",
                     generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt").images
    decoded = reference(PROMPT, height=16, width=16, num_inference_steps=STEPS, guidance_scale=guidance_scale,
                        num_images_per_prompt=2, latents=latents, output_type="pt").images
    torch.testing.assert_close(images, decoded, atol=1e-6, rtol=0)
