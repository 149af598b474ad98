"""Inference: sampling (and, later, inversion, exemplar banks, retrieval, applications)."""
from amlight.pipeline.ddim_sampler import ddim_sample

__all__ = ["ddim_sample"]
