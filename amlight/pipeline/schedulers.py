"""Samplers by name, and a fresh sampler state for each call.

Any diffusers scheduler with ``set_timesteps`` / ``step`` can draw; the exemplar banks are built on
the sampler's own timestep sequence (amlight.pipeline.inversion).
"""
from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

# Names accepted by ``--scheduler``: name -> (class, extra config).
SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "euler": (EulerDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
}


def scheduler_by_name(name: str, config) -> object:
    """A scheduler of kind ``name`` (see SCHEDULERS) on the noise schedule ``config``."""
    key = name.lower()
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    cls, extra = SCHEDULERS[key]
    return cls.from_config(dict(config), **extra)


def fresh_scheduler(template, steps: int, device=None):
    """A new scheduler of ``template``'s class and config with ``set_timesteps(steps)`` done: each
    call (and chunk) starts from a clean state (multistep samplers keep past outputs)."""
    scheduler = type(template).from_config(template.config)
    scheduler.set_timesteps(steps, device=device)
    return scheduler
