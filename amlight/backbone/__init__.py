"""The frozen-backbone registry: presets ("tiny", "sd15"), loading, freezing, sharing."""
from __future__ import annotations

import importlib

# Lazy (PEP 562): `amlight.backbone.sd15_standin` (and the commands built on it) check folders
# without paying for torch + diffusers; the names below load their module on first use.
_EXPORTS = {
    "Backbone": "amlight.backbone.backbone",
    "freeze": "amlight.backbone.backbone",
    "BackboneError": "amlight.backbone.presets",
    "backbone_from_spec": "amlight.backbone.registry",
    "clear_cache": "amlight.backbone.registry",
    "get_backbone": "amlight.backbone.registry",
}

__all__ = ["Backbone", "BackboneError", "backbone_from_spec", "clear_cache", "freeze", "get_backbone"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'amlight.backbone' has no attribute {name!r}")
