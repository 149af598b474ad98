"""The two training stages, as LightningModules."""
from amlight.stages.adapter import AdapterStage
from amlight.stages.generation import GenerationStage

__all__ = ["AdapterStage", "GenerationStage"]
