"""amlight: exemplar-based semantic image synthesis with the Appearance Matching Adapter."""

__version__ = "0.1.0"
