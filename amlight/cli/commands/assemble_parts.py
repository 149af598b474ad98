"""A pipeline folder from public parts: an SD 1.5 base, a segmentation ControlNet and a dataset's classes.

``assemble_pipeline(base, controlnet, data, out)`` writes what ``export`` writes for a trained model,
with no training at all: the base's UNet, VAE, text encoder and tokenizer, its noise schedule as the
DDIM sampler (as the ``sd15`` backbone preset makes it), the ControlNet as the ``structure_guidance``
component (``ControlNetGuidance``: the label map drawn in the ControlNet's colours, from
``amlight.data.controlnet_colors``), the dataset's label space and the encoded prompt. The folder
draws at once in ``structure_only`` (the ControlNet baseline), ``augmented`` and ``hard_mask``, and
stage 2 trains an adapter on it (``stage1_checkpoint: DIR``).

Everything that can be checked from the config files is checked before any weights load
(:func:`check_controlnet_fits`): a mismatch is a one-line :class:`AssembleError` naming both files.
"""
from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path
from typing import Any, Callable, Mapping

DEFAULT_PROMPT = "a photo of a driving scene"  # configs/sd15/cityscapes/stage1.yaml's prompt
DTYPES = ("float32", "float16", "bfloat16")
# The ControlNet's residuals are added to the UNet's skip connections one for one: these keys decide
# how many there are and their shapes, so they must agree with the base UNet's.
MATCHING_KEYS = ("in_channels", "block_out_channels", "down_block_types", "layers_per_block", "cross_attention_dim")
CONTROLNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                      "diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json")


class AssembleError(ValueError):
    """Parts that cannot make a pipeline folder; the message is one line naming the file."""


def check_controlnet_fits(controlnet_config: dict[str, Any], unet_config: dict[str, Any], controlnet_source: str,
                          unet_source: str, vae_config: dict[str, Any] | None = None,
                          vae_source: str | None = None) -> None:
    """Raise :class:`AssembleError` when the ControlNet cannot guide the base UNet (or read label maps
    at the VAE's image size); ``*_source`` are the config files, named in the message."""
    channels = int(controlnet_config.get("conditioning_channels", 3))
    if channels != 3:
        raise AssembleError(f"{controlnet_source}: the ControlNet reads {channels}-channel images; a segmentation "
                            "ControlNet reads 3-channel colour maps (conditioning_channels 3)")
    for key in MATCHING_KEYS:
        a, b = controlnet_config.get(key), unet_config.get(key)
        if _norm(a) != _norm(b):
            raise AssembleError(f"{controlnet_source}: {key} {_norm(a)} does not match the base UNet's {_norm(b)} "
                                f"({unet_source}): the ControlNet was made for another base model")
    if vae_config is not None:
        # The conditioning image is at the image size: its embedding must shrink it as the VAE does.
        cond = 2 ** (len(controlnet_config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)) - 1)
        latent = 2 ** (len(vae_config.get("block_out_channels") or (64,)) - 1)
        if cond != latent:
            raise AssembleError(f"{controlnet_source}: conditioning_embedding_out_channels shrink the conditioning "
                                f"image {cond}x, but the base's VAE ({vae_source}) makes latents {latent}x smaller")


def _norm(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def read_config(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise AssembleError(f"{file}: cannot be read as JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise AssembleError(f"{file}: is not a JSON object")
    return data


def _controlnet_source(controlnet: str) -> tuple[str, bool, dict[str, Any], str]:
    """(where to load from, local?, its config, the config's name for messages)."""
    from amlight.backbone.presets import HUB_ID

    folder = Path(controlnet).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise AssembleError(f"--controlnet {folder} is a file: give the ControlNet's folder (config.json and "
                                "diffusion_pytorch_model.safetensors)")
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise AssembleError(f"{config_file} does not exist: --controlnet must be a diffusers ControlNetModel folder")
        config = read_config(config_file)
        if config.get("_class_name") not in (None, "ControlNetModel"):
            raise AssembleError(f"{config_file}: is a {config['_class_name']}, not a ControlNetModel")
        if not any((folder / name).is_file() for name in CONTROLNET_WEIGHTS):
            raise AssembleError(f"{folder}: has config.json but no weights ({CONTROLNET_WEIGHTS[0]})")
        return str(folder), True, config, str(config_file)
    if HUB_ID.match(controlnet) and not controlnet.startswith((".", "/", "~")):
        from diffusers import ControlNetModel

        config = dict(ControlNetModel.load_config(controlnet))  # a hub id the user named: downloads
        return controlnet, False, config, f"{controlnet}/config.json"
    raise AssembleError(f"--controlnet {controlnet} does not exist: give a local ControlNet folder or a hub id "
                        "such as lllyasviel/control_v11p_sd15_seg (downloads)")


def _base_configs(where: str, local: bool) -> tuple[dict, str, dict, str]:
    if local:
        unet_file, vae_file = Path(where) / "unet" / "config.json", Path(where) / "vae" / "config.json"
        for file in (unet_file, vae_file):
            if not file.is_file():
                raise AssembleError(f"{file} does not exist: --base must be a Stable Diffusion 1.5 folder")
        return read_config(unet_file), str(unet_file), read_config(vae_file), str(vae_file)
    from diffusers import AutoencoderKL, UNet2DConditionModel

    return (dict(UNet2DConditionModel.load_config(where, subfolder="unet")), f"{where}/unet/config.json",
            dict(AutoencoderKL.load_config(where, subfolder="vae")), f"{where}/vae/config.json")


def dataset_colors(data: str):
    """(LabelSpace, class colours [[r, g, b]] for the ControlNet) of a registered dataset or a folder
    with classes.yaml (whose own ``controlnet_colors:`` wins)."""
    import yaml

    from amlight.apps.inputs import LabelSpace
    from amlight.data.controlnet_colors import controlnet_color_map
    from amlight.data.datasets.folder import CLASSES_FILE
    from amlight.data.registry import registered_datasets

    space = LabelSpace.resolve(data)
    if space.id_map is not None and not isinstance(space.id_map, (Mapping, list, tuple)):
        # A map chosen by file name (Cityscapes' labelIds vs labelTrainIds) cannot live in a folder's
        # config: the folder reads class-index (train-id) or palette-colour label files, as it does when
        # the dataset's files are not here at all.
        space = dataclasses.replace(space, id_map=None)
    if data not in registered_datasets() and Path(data).is_dir():
        source = Path(data) / CLASSES_FILE
        mapping = yaml.safe_load(source.read_text(encoding="utf-8"))  # resolve() has validated it
        table = controlnet_color_map(space.metadata, mapping if isinstance(mapping, dict) else None, source)
    else:
        table = controlnet_color_map(space.metadata)
    return space, [[int(v) for v in table[i]] for i in range(space.num_classes)]


def assemble_pipeline(base: str, controlnet: str, data: str, out: str | Path, conditioning_scale: float = 1.0,
                      prompt: str = DEFAULT_PROMPT, dtype: str = "float32", overwrite: bool = False,
                      progress: Callable[[str], None] | None = None) -> Path:
    """Write the pipeline folder ``out`` from public parts; returns its path. See the module docstring."""
    say = progress or (lambda message: None)
    if dtype not in DTYPES:
        raise AssembleError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if not conditioning_scale >= 0:
        raise AssembleError(f"--conditioning-scale {conditioning_scale}: must be >= 0")
    from amlight.cli.commands.export import check_out_folder

    out = Path(out)
    check_out_folder(out, overwrite, AssembleError)

    # Every check that needs no weights first: a mistake costs seconds, not a multi-GiB load.
    from amlight.backbone.presets import resolve_pretrained

    where, local = resolve_pretrained(base)
    unet_config, unet_file, vae_config, vae_file = _base_configs(where, local)
    cn_where, cn_local, cn_config, cn_file = _controlnet_source(controlnet)
    check_controlnet_fits(cn_config, unet_config, cn_file, unet_file, vae_config, vae_file)
    space, colors = dataset_colors(data)

    import torch
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from amlight.cli.commands.export import pipeline_label_space, write_pipeline_folder
    from amlight.modules.controlnet_guidance import ControlNetGuidance
    from amlight.pipeline.synthesis import AMPipeline

    kw = {"local_files_only": local}
    say(f"loading the base from {where}")
    # fp32 in memory (the prompt is encoded and the folder written in it); --dtype casts the files.
    unet = UNet2DConditionModel.from_pretrained(where, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(where, subfolder="vae", **kw)
    text_encoder = CLIPTextModel.from_pretrained(where, subfolder="text_encoder", **kw)
    tokenizer = CLIPTokenizer.from_pretrained(where, subfolder="tokenizer", **kw)
    # As the sd15 preset: SD's scheduler file read as DDPM (the noise schedule), DDIM to sample.
    scheduler = DDIMScheduler.from_config(DDPMScheduler.from_pretrained(where, subfolder="scheduler", **kw).config)
    say(f"loading the ControlNet from {cn_where}")
    net = ControlNetModel.from_pretrained(cn_where, local_files_only=cn_local)
    guidance = ControlNetGuidance.around(net, space.num_classes, colors, conditioning_scale, space.ignore_index)
    # pipeline_label_space reads only the prompt from a stage-1 model's hparams.
    labels = pipeline_label_space(space, types.SimpleNamespace(hparams={"backbone": {"prompt": prompt}}))
    with torch.no_grad():  # prompt_embeddings=None: the pipeline encodes the label space's prompt
        pipe = AMPipeline(unet, guidance, scheduler, label_space=labels, vae=vae, text_encoder=text_encoder,
                          tokenizer=tokenizer)

    say(f"writing {out}")
    write_pipeline_folder(pipe, out, lambda: model_card(base, controlnet, data, space, colors, conditioning_scale,
                                                        prompt, dtype),
                          None if dtype == "float32" else dtype, "assemble")
    return out


def model_card(base: str, controlnet: str, data: str, space, colors, scale: float, prompt: str, dtype: str) -> str:
    """README.md: what the folder is made of and that each part keeps its own licence."""
    meta = space.metadata
    lines = ["---", "library_name: diffusers", "pipeline_tag: image-to-image",
             "tags: [amlight, controlnet, semantic-image-synthesis, exemplar-based]", "---", "",
             f"# amlight pipeline from public parts: {meta.name}", "",
             "Assembled with `python -m amlight assemble`: no amlight training. Modes `structure_only` (the "
             "ControlNet alone), `augmented` and `hard_mask` (exemplar attention, tuning-free); train an AM-Adapter "
             "on it with `stage1_checkpoint: THIS_FOLDER` (configs/sd15/<dataset>/stage2_controlnet.yaml).", "",
             "```", "python -m amlight generate --pipeline THIS_FOLDER --exemplar ex.png --exemplar-labels "
             "ex_labels.png --target-labels target.png --mode augmented --out OUT", "```", "",
             "## Parts", "",
             f"- base model (UNet, VAE, text encoder, tokenizer, noise schedule): `{base}`",
             f"- structure guidance: the ControlNet `{controlnet}`, conditioning scale {scale}, reading the label "
             "map drawn in the colours below",
             f"- prompt: {prompt!r}", f"- weights: {dtype}", "",
             "## Licence", "",
             "These weights are the base model's and the ControlNet's, unchanged: each keeps its own licence "
             "(Stable Diffusion 1.5 and lllyasviel's SD 1.5 ControlNets: CreativeML OpenRAIL-M, with its use "
             "restrictions). amlight adds no weights of its own here.", "",
             "## Label space", "",
             f"Dataset `{meta.name}`" + (f" ({space.origin})" if space.origin and space.origin != meta.name else "")
             + f", {meta.num_classes} classes, ignore index {meta.ignore_index} (drawn black for the ControlNet):", "",
             "| index | class | colour in label files | colour for the ControlNet |", "|---:|---|---|---|"]
    hexa = lambda c: "#" + "".join(f"{int(v):02x}" for v in c)  # noqa: E731
    lines += [f"| {i} | {name} | {hexa(color)} | {hexa(cn)} |"
              for i, (name, color, cn) in enumerate(zip(meta.class_names, meta.colors, colors))]
    return "\n".join(lines) + "\n"
