"""NaN / inf in inference: a one-line error naming the step and the layer, never a black image.

Each step's output is checked once (one device sync per step, none per layer). Only when a check
fails is the step run again with a finiteness check on every submodule, to name the first module
whose inputs were finite and whose output was not.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn


class NonFiniteOutputError(RuntimeError):
    """A step of sampling, inversion or decoding produced NaN or inf."""


def check_finite(output: torch.Tensor, step: str, module: nn.Module, rerun: Callable[[], Any]) -> None:
    """Raise :class:`NonFiniteOutputError` naming ``step`` and the layer of ``module`` that made
    ``output`` non-finite (found by calling ``rerun()``, which repeats the step)."""
    if bool(torch.isfinite(output).all()):
        return
    layer = first_nonfinite_layer(module, rerun)
    where = f"first in layer {layer}" if layer else "in no one layer (its inputs were non-finite already)"
    hint = " (float16 overflows easily: try --dtype bf16 or fp32)" if _dtype(module) == torch.float16 else ""
    raise NonFiniteOutputError(f"{step} produced NaN or inf values, {where}{hint}")


def first_nonfinite_layer(module: nn.Module, run: Callable[[], Any]) -> str | None:
    """Name (in ``module``) of the first submodule to turn finite inputs into a non-finite output
    while ``run()`` executes; None if there is none."""
    found: list[str] = []

    def hook(name):
        def check(mod, args, kwargs, output):
            if not found and not _finite(output) and _finite((args, kwargs)):
                found.append(name)
        return check

    handles = [m.register_forward_hook(hook(name or type(module).__name__), with_kwargs=True)
               for name, m in module.named_modules()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def _finite(value) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, (tuple, list)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    sample = getattr(value, "sample", None)  # diffusers' output dataclasses
    return _finite(sample) if isinstance(sample, torch.Tensor) else True


def _dtype(module: nn.Module) -> torch.dtype | None:
    param = next(module.parameters(), None)
    return None if param is None else param.dtype
