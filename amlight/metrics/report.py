"""Per-image scores to a summary (mean, 95% CI, n) and a plain-text table; JSON-safe numbers."""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from amlight.metrics.stats import mean_ci95

# name -> (label in tables, True if higher is better)
METRIC_INFO: dict[str, tuple[str, bool]] = {
    "psnr": ("PSNR (dB)", True),
    "ssim": ("SSIM", True),
    "delta_e": ("ΔE per class", False),
    "label_miou": ("label recovery mIoU", True),
    "self_sim": ("Self-sim", False),
    "clip": ("I_CLIP", True),
    "seg_miou": ("segmenter mIoU", True),
    "fid": ("FID", False),
}


def summarize(values) -> dict:
    """{"mean", "ci95" (half width), "n" (non-NaN values)} of per-image values (see :func:`mean_ci95`)."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    mean, half = mean_ci95(array)
    return {"mean": json_number(mean), "ci95": json_number(half), "n": int(np.sum(~np.isnan(array)))}


def json_number(value):
    """A float for JSON: NaN becomes None (null), +-inf the strings "inf" / "-inf" (JSON has neither)."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def format_table(summary: Mapping[str, Mapping]) -> str:
    """Rows of metric, mean, ±95% CI, n; ``summary`` maps a metric name to :func:`summarize`'s dict."""
    rows = [("metric", "mean", "±95% CI", "n")]
    for name, entry in summary.items():
        label, higher = METRIC_INFO.get(name, (name, True))
        rows.append((f"{label} {'↑' if higher else '↓'}", _fmt(entry.get("mean")), _fmt(entry.get("ci95")),
                     str(entry.get("n", ""))))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join([row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
