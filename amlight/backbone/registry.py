"""One backbone, loaded once: presets by name, cached per process."""
from __future__ import annotations

import json
from typing import Any, Callable

from amlight.backbone.backbone import Backbone
from amlight.backbone.presets import BackboneError, backbone_from_pipeline_folder, build_sd15, build_tiny

PRESETS: dict[str, Callable[..., Backbone]] = {
    "tiny": lambda path=None, prompt="", seed=0, options=None: build_tiny(seed=seed, options=options),
    "sd15": lambda path=None, prompt="", seed=0, options=None: build_sd15(path, prompt=prompt, **(options or {})),
}


def _pipeline_folder_backbone(path: str | None) -> Backbone:
    """The backbone saved in an exported pipeline folder (spec ``{"preset": "pipeline", "path": FOLDER}``,
    what a model loaded from a folder records); not a preset to train on, so not in PRESETS."""
    if not path:
        raise BackboneError("the pipeline backbone needs a path: the exported pipeline folder")
    key = json.dumps(["pipeline", str(path)])
    if key not in _CACHE:
        _CACHE[key] = backbone_from_pipeline_folder(path)
    return _CACHE[key]

_CACHE: dict[str, Backbone] = {}


def get_backbone(
    preset: str = "tiny",
    path: str | None = None,
    prompt: str = "",
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> Backbone:
    """The shared frozen backbone for these settings; built on first request, then reused."""
    if preset not in PRESETS:
        raise BackboneError(f"unknown backbone preset {preset!r}; known presets: {', '.join(sorted(PRESETS))}")
    key = json.dumps([preset, path, prompt, seed, options or {}], sort_keys=True, default=str)
    if key not in _CACHE:
        _CACHE[key] = PRESETS[preset](path=path, prompt=prompt, seed=seed, options=options)
    return _CACHE[key]


def backbone_from_spec(spec: dict[str, Any]) -> Backbone:
    """Rebuild the backbone a checkpoint was trained with (its ``spec``)."""
    spec = dict(spec)
    if spec.get("preset") == "pipeline":
        return _pipeline_folder_backbone(spec.get("path"))
    return get_backbone(
        spec.pop("preset"),
        path=spec.pop("path", None),
        prompt=spec.pop("prompt", ""),
        seed=spec.pop("seed", 0),
        options=spec.pop("options", None),
    )


def clear_cache() -> None:
    _CACHE.clear()
