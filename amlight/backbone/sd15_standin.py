"""A stand-in for Stable Diffusion 1.5: its exact architecture with random weights, written to disk.

``write_sd15_standin(DIR)`` lays out the folder a downloaded ``stable-diffusion-v1-5`` has
(``unet/ vae/ text_encoder/ tokenizer/ scheduler/ model_index.json``, safetensors weights), so that
the ``sd15`` preset loads it through exactly the user's path (``backbone_path: DIR``). Nothing is
downloaded: the configs below are SD 1.5's, the tokenizer's vocabulary is generated here.

Sources of the configs (values, not code): the ``config.json`` / ``scheduler_config.json`` files of
the ``stable-diffusion-v1-5/stable-diffusion-v1-5`` hub repository (unet, vae, text_encoder =
openai/clip-vit-large-patch14's text tower, scheduler), and diffusers' UNet2DConditionModel /
AutoencoderKL defaults, which equal SD 1.5's where a key below is left out. The UNet has 859.5 M
parameters, the VAE 83.7 M, the text encoder 123.1 M.

The weights are random, so images look like noise; shapes, dtypes, memory and time are SD 1.5's.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

# Bump when the folder's content changes; a folder with another version is rewritten.
STANDIN_VERSION = 1
MARKER = "amlight_standin.json"

SD15_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2, act_fn="silu",
    norm_num_groups=32, block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    scaling_factor=0.18215,
)
# CLIP ViT-L/14's text tower as SD 1.5 ships it (bos/eos/pad ids 0/2/1 as in that config: with
# eos_token_id 2 transformers pools at the highest token id, which is <|endoftext|> in CLIP's vocab).
SD15_TEXT_CONFIG: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    attention_dropout=0.0, initializer_range=0.02, initializer_factor=1.0, bos_token_id=0, eos_token_id=2,
    pad_token_id=1,
)
# SD 1.5 ships a PNDM scheduler config; the preset reads it as DDPM (training) and DDIM (sampling).
# It lists clip_sample: false although PNDM has no such option; DDPM and DDIM read it.
SD15_SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    trained_betas=None, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False,
)
MODEL_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],
    "safety_checker": [None, None],
    "requires_safety_checker": False,
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
# Files each part must have for the folder to count as complete.
REQUIRED_FILES = (
    "model_index.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "tokenizer/vocab.json", "tokenizer/merges.txt",
    "scheduler/scheduler_config.json",
)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# The segmentation ControlNet for SD 1.5 (lllyasviel/control_v11p_sd15_seg): the UNet's encoder config
# (these keys, copied from the UNet's) plus a conditioning embedding that reads a 3-channel colour map at
# the image size and shrinks it 8x, as the VAE does. Written to DIR/controlnet/ with --controlnet.
CONTROLNET_DIR = "controlnet"
CONTROLNET_UNET_KEYS = ("in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "block_out_channels",
                        "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn",
                        "norm_num_groups", "norm_eps", "cross_attention_dim", "attention_head_dim")
CONTROLNET_EMBEDDING = [16, 32, 96, 256]
CONTROLNET_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


class StandinError(ValueError):
    pass


SD15_CONFIGS: dict[str, dict[str, Any]] = {"unet": SD15_UNET_CONFIG, "vae": SD15_VAE_CONFIG,
                                            "text_encoder": SD15_TEXT_CONFIG}


def _spec(seed: int, configs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"version": STANDIN_VERSION, "seed": seed, **(configs or SD15_CONFIGS), "scheduler": SD15_SCHEDULER_CONFIG}


def is_complete(folder: str | Path, seed: int = 0, configs: dict[str, dict[str, Any]] | None = None) -> bool:
    """True when ``folder`` holds a stand-in written by this version with this seed, every file present."""
    folder = Path(folder)
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("spec") != json.loads(json.dumps(_spec(seed, configs))):
        return False
    return all((folder / f).is_file() and (folder / f).stat().st_size > 0 for f in REQUIRED_FILES)


def controlnet_config(configs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The stand-in ControlNet's config for the stand-in's UNet and VAE (SD 1.5's by default): one
    stride-2 step of the conditioning embedding per VAE downsampling, so it reads image-size maps."""
    cfg = configs or SD15_CONFIGS
    levels = len(cfg["vae"].get("block_out_channels", [64]))
    embedding = CONTROLNET_EMBEDDING[:levels] if levels <= len(CONTROLNET_EMBEDDING) else [16] * levels
    return {**{k: cfg["unet"][k] for k in CONTROLNET_UNET_KEYS if k in cfg["unet"]},
            "conditioning_channels": 3, "conditioning_embedding_out_channels": embedding}


def controlnet_is_complete(folder: str | Path, seed: int = 0, configs: dict[str, dict[str, Any]] | None = None) -> bool:
    """True when ``folder/controlnet`` holds the stand-in ControlNet of this seed and configs."""
    part = Path(folder) / CONTROLNET_DIR
    try:
        marker = json.loads((part / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("spec") != json.loads(json.dumps({"seed": seed, "controlnet": controlnet_config(configs)})):
        return False
    return all((part / f).is_file() and (part / f).stat().st_size > 0 for f in CONTROLNET_FILES)


def write_controlnet_standin(out: str | Path, seed: int = 0, force: bool = False,
                             progress: Callable[[str], None] | None = None,
                             configs: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write ``out/controlnet/``: a ControlNetModel with the SD 1.5 segmentation ControlNet's architecture
    (361 M parameters at SD 1.5's size) and random weights (``fill_random_``, so its residuals are not the
    zero a fresh ``from_unet`` gives: the structure path is exercised at full cost). Atomic, like the rest."""
    import torch
    from diffusers import ControlNetModel

    say = progress or (lambda message: None)
    part = Path(out) / CONTROLNET_DIR
    if controlnet_is_complete(out, seed, configs) and not force:
        say(f"{part} already holds the stand-in ControlNet (seed {seed}): nothing to do")
        return part
    config = controlnet_config(configs)
    with torch.device("meta"):
        net = ControlNetModel(**config)
    net = net.to_empty(device="cpu")
    if any(True for _ in net.buffers()):
        raise StandinError("the ControlNet has buffers that the meta-device build leaves empty")
    count = fill_random_(net, torch.Generator().manual_seed(seed + 3))
    say(f"ControlNet ({count / 1e6:.1f} M parameters): saving (safetensors)")
    tmp = part.parent / f".{part.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        net.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / MARKER).write_text(json.dumps({"spec": {"seed": seed, "controlnet": config},
                                              "note": "random weights, not lllyasviel/control_v11p_sd15_seg's"},
                                             indent=2) + "\n")
        if part.exists():
            shutil.rmtree(part)
        tmp.rename(part)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return part


# --- the tokenizer ---------------------------------------------------------------------------------

def _bytes_to_unicode() -> list[str]:
    """CLIP's (GPT-2's) byte-level alphabet: one printable character per byte value, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tokenizer_vocab(vocab_size: int = SD15_TEXT_CONFIG["vocab_size"]) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) of a byte-level BPE laid out like CLIP's: 256 byte tokens, the same with ``</w>``
    (end of word), one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` last: exactly
    ``vocab_size`` entries, so the text encoder's embedding table is as large as SD 1.5's and the end
    token has the highest id (where CLIPTextModel pools). The merges are generated (letters and digits
    first, each pair joined inside a word and at a word's end), not CLIP's learnt ones: any text
    tokenizes, into more pieces than CLIP would make."""
    alphabet = _bytes_to_unicode()
    merges_needed = vocab_size - 2 * len(alphabet) - 2
    if merges_needed < 0:
        raise StandinError(f"vocab_size {vocab_size} is below the {2 * len(alphabet) + 2} byte and special tokens")
    common = [c for c in "etaoinshrdlcumwfgypbvkjxqz0123456789"]
    order = common + [c for c in alphabet if c not in common]
    vocab: dict[str, int] = {}
    for c in alphabet:
        vocab[c] = len(vocab)
    for c in alphabet:
        vocab[c + "</w>"] = len(vocab)
    merges: list[str] = []
    for a in order:
        for b in order:
            for left, right, token in ((a, b + "</w>", a + b + "</w>"), (a, b, a + b)):
                if len(merges) == merges_needed:
                    break
                merges.append(f"{left} {right}")
                vocab[token] = len(vocab)
    if len(merges) < merges_needed:
        raise StandinError(f"cannot generate {merges_needed} merges from a {len(alphabet)}-character alphabet")
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab, merges


def write_tokenizer(folder: Path, text_config: dict[str, Any] = SD15_TEXT_CONFIG) -> None:
    from transformers import CLIPTokenizer

    vocab, merges = tokenizer_vocab(text_config["vocab_size"])
    folder.mkdir(parents=True, exist_ok=True)
    # Written as the slow files a downloaded SD 1.5 has, then loaded and saved by transformers so the
    # folder also holds what its own loader writes (tokenizer_config.json, special tokens).
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
        model_max_length=text_config["max_position_embeddings"],
        bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS,
    )
    tokenizer.save_pretrained(str(folder))


# --- random weights, fast --------------------------------------------------------------------------

def fill_random_(module, generator) -> int:
    """Overwrite every parameter in place: weights ~ N(0, 1/fan_in) (activations keep their scale),
    normalisation weights 1, biases 0. One pass of ``normal_`` per tensor, much faster than the
    per-layer init schemes for 860 M parameters. Returns the parameter count."""
    import torch

    count = 0
    with torch.no_grad():
        for name, p in module.named_parameters():
            count += p.numel()
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                p.zero_()
            elif p.ndim == 1:  # GroupNorm / LayerNorm scale
                p.fill_(1.0)
            else:
                fan_in = max(1, p[0].numel())
                p.normal_(0.0, fan_in ** -0.5, generator=generator)
    return count


def _unet(seed: int, config: dict[str, Any]):
    import torch
    from diffusers import UNet2DConditionModel

    # Built on the meta device (no memory, no init), then given real storage and filled once.
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    unet = unet.to_empty(device="cpu")
    if any(True for _ in unet.buffers()):
        raise StandinError("the SD 1.5 UNet has buffers that the meta-device build leaves empty")
    fill_random_(unet, torch.Generator().manual_seed(seed))
    return unet


def write_sd15_standin(out: str | Path, seed: int = 0, force: bool = False,
                       progress: Callable[[str], None] | None = None,
                       configs: dict[str, dict[str, Any]] | None = None, controlnet: bool = False) -> Path:
    """Write the stand-in to ``out`` (skipped when a complete one with this seed is there, unless ``force``);
    ``controlnet``: also ``out/controlnet/`` (:func:`write_controlnet_standin`).
    The parts are written to a sibling temporary folder and moved into place at the end, so an
    interrupted run never leaves a folder that looks complete. ``configs`` ({"unet", "vae",
    "text_encoder"}) replaces SD 1.5's: only the test suite's dry runs shrink the model this way."""
    out = Path(out)
    say = progress or (lambda message: None)
    cfg = configs or SD15_CONFIGS
    if is_complete(out, seed, configs) and not force:
        say(f"{out} already holds a complete SD 1.5 stand-in (seed {seed}): nothing to do")
        if controlnet:
            write_controlnet_standin(out, seed, False, say, configs)
        return out
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file() and not force:
        raise StandinError(f"{out} exists, is not empty and is not an amlight SD 1.5 stand-in; "
                           "choose another --out or pass --force to replace it")
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        start = time.perf_counter()

        def step(message: str) -> None:
            say(f"[{time.perf_counter() - start:6.1f} s] {message}")

        step("UNet: random weights")
        unet = _unet(seed, cfg["unet"])
        step(f"UNet ({sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M parameters): saving (safetensors)")
        unet.save_pretrained(str(tmp / "unet"), safe_serialization=True)
        del unet
        step("VAE: random weights and saving")
        with torch.device("meta"):
            vae = AutoencoderKL(**cfg["vae"])
        vae = vae.to_empty(device="cpu")
        fill_random_(vae, torch.Generator().manual_seed(seed + 1))
        vae.save_pretrained(str(tmp / "vae"), safe_serialization=True)
        del vae
        step("text encoder: random weights and saving")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 2)
            text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
        text_encoder.save_pretrained(str(tmp / "text_encoder"), safe_serialization=True)
        del text_encoder
        step("tokenizer and scheduler")
        write_tokenizer(tmp / "tokenizer", cfg["text_encoder"])
        import diffusers

        # Written by hand, as SD 1.5's file is: its stray "clip_sample" key (which the DDPM and DDIM
        # schedulers read, and PNDMScheduler's constructor refuses) matters: DDPM defaults to clipping.
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(
            {"_class_name": "PNDMScheduler", "_diffusers_version": diffusers.__version__, **SD15_SCHEDULER_CONFIG},
            indent=2) + "\n")

        (tmp / "model_index.json").write_text(json.dumps(
            {**MODEL_INDEX, "_diffusers_version": diffusers.__version__}, indent=2) + "\n")
        (tmp / MARKER).write_text(json.dumps({"spec": _spec(seed, configs), "note": "random weights, not SD 1.5's"},
                                             indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        step(f"done: {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if controlnet:
        write_controlnet_standin(out, seed, force, say, configs)
    return out
