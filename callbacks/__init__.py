"""Lightning callbacks (installed as amlight.callbacks)."""
from amlight.callbacks.attention_maps import AttentionMaps
from amlight.callbacks.progress_log import ProgressLog
from amlight.callbacks.sample_grid import SampleGrid

__all__ = ["AttentionMaps", "ProgressLog", "SampleGrid"]
