"""The inference core: one DDIM sampling loop, DDIM inversion, exemplar banks built once per exemplar,
AMPipeline (batched-CFG synthesis), and lists of pairs drawn in batches (amlight.pipeline.pair_batches,
the loop of generate, predict and evaluate). The applications around it live in amlight.apps.

The names below load on first use (PEP 562): the commands' argument checks import
:mod:`amlight.pipeline.model_options`, and ``--help`` must not load torch (tests/cli/test_startup.py).
"""
from __future__ import annotations

import importlib

# name -> the submodule that defines it
_EXPORTS = {
    "AMPipeline": "synthesis",
    "ExemplarBanks": "exemplar_banks",
    "NonFiniteOutputError": "finite",
    "build_exemplar_banks": "exemplar_banks",
    "ddim_invert": "inversion",
    "ddim_sample": "sampling",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
