"""Loading the pretrained networks that the paper's metrics need, from folders the user names.

Nothing here downloads: a path must be a local folder written by ``save_pretrained`` (config.json
plus weights), and anything else is a :class:`MetricWeightsError` that names the path and says
what was expected. Preprocessing (size, mean, std, resampling) follows the
``preprocessor_config.json`` saved next to the model when there is one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from amlight.metrics.images import check_images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)



class MetricWeightsError(ValueError):
    """The weights a metric needs are missing or are not what it expects.

    ``path``: the path given (None when none was); ``problem``: what is wrong; ``expected``: what the
    metric wants there.
    """

    def __init__(self, path: str | Path | None, problem: str, expected: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.expected = expected
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}. Expected {expected}")


class MissingDependencyError(ImportError):
    """An optional package a metric needs is not installed; the message says what to install."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def read_model_config(path: str | Path | None, what: str, expected: str) -> tuple[Path, dict]:
    """(folder, parsed config.json) of a ``save_pretrained`` folder, or :class:`MetricWeightsError`."""
    if path is None or str(path) == "":
        raise MetricWeightsError(None, f"no weights path given for {what}", expected)
    folder = Path(path).expanduser()
    if not folder.exists():
        raise MetricWeightsError(folder, f"does not exist (needed for {what}); weights are never downloaded", expected)
    if not folder.is_dir():
        raise MetricWeightsError(folder, f"is a file, not a model folder (needed for {what})", expected)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise MetricWeightsError(folder, f"has no config.json, so it is not a model saved with save_pretrained "
                                         f"(needed for {what})", expected)
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MetricWeightsError(config_file, f"cannot be read as JSON ({exc})", expected) from exc
    if not isinstance(config, dict):
        raise MetricWeightsError(config_file, "is not a JSON object", expected)
    return folder, config


def load_model(load: Callable[..., object], folder: Path, what: str, expected: str, **kwargs) -> torch.nn.Module:
    """``load(folder, local_files_only=True, output_loading_info=True, **kwargs)`` in eval mode, with
    any loading failure, and any weight the checkpoint lacks, turned into :class:`MetricWeightsError`.

    A missing weight would silently stay randomly initialised and make the metric meaningless.
    """
    try:
        model, info = load(str(folder), local_files_only=True, output_loading_info=True, **kwargs)
    except Exception as exc:  # transformers, safetensors and torch each fail in their own way on a bad folder
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise MetricWeightsError(folder, f"could not be loaded as {what} ({type(exc).__name__}: {first_line})",
                                 expected) from exc
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k) for k in (info.get("mismatched_keys") or ()))
    if missing or mismatched:
        listed = ", ".join((missing + mismatched)[:5])
        more = len(missing) + len(mismatched) - 5
        raise MetricWeightsError(
            folder,
            f"the checkpoint lacks or mis-sizes {len(missing) + len(mismatched)} weight(s) of {what} "
            f"({listed}{f', ... {more} more' if more > 0 else ''}); they would be random",
            expected,
        )
    model.eval()
    model.requires_grad_(False)
    return model


def model_type(config: dict) -> str:
    return str(config.get("model_type", ""))


@dataclass(frozen=True)
class Preprocess:
    """How images go into a network: ``size`` (H, W) or None (keep), ``crop`` (resize the short side to
    ``size``'s and centre-crop, instead of resizing to ``size``), normalisation and resampling."""

    size: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop: bool = False
    mode: str = "bilinear"

    def __call__(self, images: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
        """Float (N, 3, H, W) in [-1, 1] to the network's normalised float32 input."""
        images = check_images(images)
        x = ((images.to(device=device, dtype=torch.float32).clamp(-1, 1) + 1) / 2)
        if self.size is not None:
            x = _resize(x, self.size, self.crop, self.mode)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def _resize(x: torch.Tensor, size: tuple[int, int], crop: bool, mode: str) -> torch.Tensor:
    height, width = x.shape[-2:]
    if crop:
        scale = max(size[0] / height, size[1] / width)
        inner = (max(size[0], round(height * scale)), max(size[1], round(width * scale)))
        if inner != (height, width):
            x = F.interpolate(x, size=inner, mode=mode, align_corners=False, antialias=True)
        top, left = (inner[0] - size[0]) // 2, (inner[1] - size[1]) // 2
        x = x[..., top:top + size[0], left:left + size[1]]
    elif (height, width) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode=mode, align_corners=False, antialias=True)
    return x.clamp(0, 1) if mode == "bicubic" else x


# PIL resampling codes image processors store
_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def read_preprocess(
    folder: Path,
    default_size: int | Sequence[int] | None,
    default_mean: Sequence[float] = IMAGENET_MEAN,
    default_std: Sequence[float] = IMAGENET_STD,
    crop: bool | None = None,
) -> Preprocess:
    """Preprocessing from ``folder``'s preprocessor_config.json when present, else the defaults.

    The size is the processor's crop size when it centre-crops, else its resize size (height/width,
    or a square of shortest_edge), else ``default_size`` (usually the model config's image_size).
    ``crop``: True to resize the short side and centre-crop (CLIP's way), False to resize the whole
    image to the size (keeps every region of the layout), None to do what the processor says.
    """
    settings = _read_processor_json(folder)
    mean = tuple(float(v) for v in settings.get("image_mean", default_mean))
    std = tuple(float(v) for v in settings.get("image_std", default_std))
    size = _as_hw(default_size)
    processor_crops = bool(settings.get("do_center_crop", False))
    if settings:
        if processor_crops and settings.get("crop_size") is not None:
            size = _as_hw(settings["crop_size"]) or size
        elif settings.get("do_resize", True) and settings.get("size") is not None:
            size = _as_hw(settings["size"]) or size
        elif settings.get("do_resize") is False:
            size = None
    mode = _RESAMPLE.get(settings.get("resample"), "bilinear")
    if len(mean) != 3 or len(std) != 3:
        raise MetricWeightsError(folder / "preprocessor_config.json", "image_mean/image_std must have 3 values",
                                 "an RGB image processor")
    return Preprocess(size, mean, std, processor_crops if crop is None else crop, mode)


def _read_processor_json(folder: Path) -> dict:
    for name in ("preprocessor_config.json", "processor_config.json"):
        file = folder / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MetricWeightsError(file, f"cannot be read as JSON ({exc})", "an image processor config") from exc
        if isinstance(data, dict) and isinstance(data.get("image_processor"), dict):
            data = data["image_processor"]
        if isinstance(data, dict):
            return data
    return {}


def _as_hw(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
        return None
    values = list(size)
    if len(values) == 2:
        return int(values[0]), int(values[1])
    return None
