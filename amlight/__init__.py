"""amlight: exemplar-based semantic image synthesis with the Appearance Matching Adapter."""

from amlight.modules.categorical_cost import categorical_cost

__version__ = "0.1.0"

__all__ = ["categorical_cost"]
