"""amlight: exemplar-based semantic image synthesis with the Appearance Matching Adapter."""

__version__ = "0.1.0"

__all__ = ["categorical_cost"]


def __getattr__(name: str):
    # Lazy (PEP 562): `import amlight` runs for every CLI call, even `--help`, and torch + diffusers
    # cost seconds to import; only code that uses the cost pays for them.
    if name == "categorical_cost":
        from amlight.modules.categorical_cost import categorical_cost

        return categorical_cost
    raise AttributeError(f"module 'amlight' has no attribute {name!r}")
