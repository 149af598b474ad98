"""The two training stages, as LightningModules."""
from amlight.stages.generation import GenerationStage

__all__ = ["GenerationStage"]
