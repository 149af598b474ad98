"""Lightning callbacks (installed as amlight.callbacks)."""
from amlight.callbacks.sample_grid import SampleGrid

__all__ = ["SampleGrid"]
