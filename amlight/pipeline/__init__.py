"""Inference: DDIM inversion, exemplar banks built once per exemplar, batched-CFG synthesis, probes."""
from amlight.ddim_sampler import ddim_sample
from amlight.pipeline.exemplar_cache import ExemplarBanks, build_exemplar_banks
from amlight.pipeline.inversion import ddim_invert
from amlight.pipeline.synthesis import AMPipeline

__all__ = ["AMPipeline", "ExemplarBanks", "build_exemplar_banks", "ddim_invert", "ddim_sample"]
