"""The frozen-backbone registry: presets ("tiny", "sd15"), loading, freezing, sharing."""
from amlight.backbone.backbone import Backbone, freeze
from amlight.backbone.presets import BackboneError
from amlight.backbone.registry import backbone_from_spec, clear_cache, get_backbone

__all__ = ["Backbone", "BackboneError", "backbone_from_spec", "clear_cache", "freeze", "get_backbone"]
