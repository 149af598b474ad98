"""nn.Modules and the attention machinery: structure guidance, exemplar attention, categorical cost.

The names below load on first use (PEP 562, as ``amlight`` itself does): the command-line parsers
import :mod:`amlight.modules.attention_modes` (the one list of modes) and ``--help`` must not load
torch (tests/cli/test_startup.py).
"""
from __future__ import annotations

import importlib
import sys
import types

# name -> the submodule that defines it
_EXPORTS = {
    "AMAdapter": "adapter",
    "ATTENTION_MODES": "attention_modes",
    "BLOCK_GROUPS": "attention_modes",
    "ExemplarContext": "exemplar_context",
    "ExemplarUNet": "exemplar_unet",
    "StructureGuidance": "structure_guidance",
    "categorical_cost": "categorical_cost",
    "resize_labels": "label_resize",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """``categorical_cost`` names both a submodule and its function, and importing the submodule sets
    the package attribute to the module, which would hide ``__getattr__``: a property keeps it the
    function, as the eager ``from ... import`` of this package did."""

    @property
    def categorical_cost(self):
        from amlight.modules.categorical_cost import categorical_cost

        return categorical_cost

    @categorical_cost.setter
    def categorical_cost(self, value) -> None:
        pass  # the import system recording the submodule: sys.modules keeps it


sys.modules[__name__].__class__ = _Package
