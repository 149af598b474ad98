"""The inference core: one DDIM sampling loop, DDIM inversion, exemplar banks built once per exemplar,
and AMPipeline (batched-CFG synthesis). The applications around it live in amlight.apps."""
from amlight.pipeline.sampling import ddim_sample
from amlight.pipeline.exemplar_banks import ExemplarBanks, build_exemplar_banks
from amlight.pipeline.finite import NonFiniteOutputError
from amlight.pipeline.inversion import ddim_invert
from amlight.pipeline.synthesis import AMPipeline

__all__ = ["AMPipeline", "ExemplarBanks", "NonFiniteOutputError", "build_exemplar_banks", "ddim_invert", "ddim_sample"]
