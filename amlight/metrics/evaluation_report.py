"""Writing what ``python -m amlight evaluate`` found: results.json, results.md, grid.png, sweeps.{json,md}.

Tables are Markdown, one row per mode (sweeps: per setting and mode; a mode with a ``label`` in the
record, the paper's baseline names for a ControlNet model, reads "ControlNet + AM-Adapter (`adapter`)"), one column per metric with an
arrow saying which direction is better, cells ``mean ± ci95`` (95% t-interval over pairs), the best
mean of each column in bold.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from amlight.utils.atomic_write import atomic_write
from amlight.metrics.report import METRIC_INFO
from amlight.utils.visualize import column_grid, save_png

SWEEPS_JSON, SWEEPS_MD = "sweeps.json", "sweeps.md"
# Digits per metric: enough to see differences between modes, not more.
_DIGITS = {"psnr": 2, "ssim": 3, "delta_e": 2, "label_miou": 3, "self_sim": 4, "clip": 3, "fid": 2, "seg_miou": 3}


def write_json(path: str | Path, data: dict) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, allow_nan=False) + "\n",
                                                               encoding="utf-8"))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def metric_header(name: str, direction: str | None = None) -> str:
    label, higher = METRIC_INFO.get(name, (name, True))
    if direction is not None:
        higher = direction == "higher"
    return f"{label} {'↑' if higher else '↓'}"


def format_cell(summary: Mapping | None, name: str) -> str:
    if not summary or summary.get("mean") is None:
        return "-"
    digits = _DIGITS.get(name, 3)
    mean = summary["mean"]
    if isinstance(mean, str):  # "inf"
        return mean
    text = f"{mean:.{digits}f}"
    half = summary.get("ci95")
    if isinstance(half, (int, float)) and math.isfinite(half):
        text += f" ± {half:.{digits}f}"
    return text


def _best(rows: Sequence[tuple[Sequence[str], Mapping]], name: str, direction: str):
    means = [r[1].get(name, {}).get("mean") for r in rows]
    finite = [m for m in means if isinstance(m, (int, float)) and math.isfinite(m)]
    if len(finite) < 2:
        return None
    return max(finite) if direction == "higher" else min(finite)


def markdown_table(rows: Sequence[tuple[Sequence[str], Mapping]], metrics: Sequence[str],
                   first_columns: Sequence[str] = ("mode",)) -> str:
    """``rows``: (leading cells, {metric: summary}); a Markdown table with the best mean per metric in bold."""
    directions = {}
    for name in metrics:
        for _, summaries in rows:
            if name in summaries and summaries[name].get("direction"):
                directions[name] = summaries[name]["direction"]
                break
        else:
            directions[name] = "higher" if METRIC_INFO.get(name, (name, True))[1] else "lower"
    header = [*first_columns, *(metric_header(m, directions[m]) for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(first_columns) + ["---:"] * len(metrics)) + "|"]
    best = {m: _best(rows, m, directions[m]) for m in metrics}
    for lead, summaries in rows:
        cells = []
        for m in metrics:
            cell = format_cell(summaries.get(m), m)
            if best[m] is not None and summaries.get(m, {}).get("mean") == best[m]:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append("| " + " | ".join([*lead, *cells]) + " |")
    return "\n".join(lines)


def metrics_of(record: Mapping) -> list[str]:
    names: list[str] = []
    for entry in record["modes"].values():
        for name in entry["metrics"]:
            if name not in names:
                names.append(name)
    return names


def row_name(mode: str, entry: Mapping) -> str:
    """A table's name for ``mode``: its label and the mode key when the record has one, else the key."""
    label = entry.get("label")
    return f"{label} (`{mode}`)" if label else f"`{mode}`"


def mode_rows(record: Mapping, lead: Sequence[str] = ()) -> list[tuple[list[str], dict]]:
    return [([*lead, row_name(mode, entry)], entry["metrics"]) for mode, entry in record["modes"].items()]


def settings_line(record: Mapping, skip: str | None = None) -> str:
    """One line of the settings; ``skip``: a swept parameter to leave out."""
    s = record["settings"]
    seeds = ", ".join(str(x) for x in s["seeds"])
    parts = {"pairs": f"{record['n_pairs']} pairs × {len(s['seeds'])} seed(s) ({seeds})",
             "steps": f"{s['steps']} steps", "guidance_scale": f"guidance {s['guidance_scale']:g}",
             "strength": f"strength {s['strength']:g}", "blocks": f"blocks {'+'.join(s['blocks'])}"}
    if s.get("max_resolution") is not None:
        parts["max_resolution"] = f"adapter max_resolution {s['max_resolution']}"
    if s.get("controlnet_scale") is not None:
        parts["controlnet_scale"] = f"ControlNet scale {s['controlnet_scale']:g}"
    parts["size"] = f"{s['resolution'][0]}x{s['resolution'][1]} px, {s['dtype']}"
    return ", ".join(text for name, text in parts.items() if name != skip)


def per_class_table(record: Mapping) -> str | None:
    """Mode x class table of ΔE (mean over pairs whose target has the class), or None without ΔE."""
    modes = [m for m, e in record["modes"].items() if e.get("delta_e_per_class")]
    if not modes:
        return None
    classes: list[str] = []
    for m in modes:
        classes += [c for c in record["modes"][m]["delta_e_per_class"] if c not in classes]
    lines = ["| mode | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for m in modes:
        table = record["modes"][m]["delta_e_per_class"]
        cells = []
        for c in classes:
            mean = table.get(c, {}).get("mean")
            cells.append("-" if mean is None else f"{mean:.2f}")
        lines.append(f"| {row_name(m, record['modes'][m])} | " + " | ".join(cells) + " |")
    counts = {c: max(record["modes"][m]["delta_e_per_class"].get(c, {}).get("n", 0) for m in modes) for c in classes}
    lines.append("")
    lines.append("images per class: " + ", ".join(f"{c} {counts[c]}" for c in classes))
    return "\n".join(lines)


def results_markdown(record: Mapping) -> str:
    """results.md: the mode x metric table, the command and the settings, ΔE per class."""
    name = record.get("name") or "evaluation"
    lines = [f"# amlight evaluate: {name}", "", markdown_table(mode_rows(record), metrics_of(record)), ""]
    lines.append(f"`{record['command']}`")
    lines.append("")
    lines.append(f"{settings_line(record)}; mean ± 95% CI over pairs (t-interval); best mean per column in bold. "
                 f"Data: {record['data']['pairs_file']}.")
    if any(e["metrics"].get("fid") for e in record["modes"].values()):
        lines.append("FID: one value over all generated images against the pairs' ground truths (no interval).")
    per_class = per_class_table(record)
    if per_class:
        lines += ["", "## ΔE per class (CIEDE2000 of class mean colours vs ground truth, lower is better)", "",
                  per_class]
    return "\n".join(lines) + "\n"


# --- grid ----------------------------------------------------------------------------------------


def _title_strip(titles: Sequence[str], cell: int, pad: int, height: int = 16) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    width = pad + len(titles) * (cell + pad)
    strip = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    for k, title in enumerate(titles):
        text = title
        while text and draw.textlength(text, font=font) > cell:
            text = text[:-1]
        x = pad + k * (cell + pad) + (cell - draw.textlength(text, font=font)) / 2
        draw.text((x, 2), text, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def grid_image(columns: Sequence[torch.Tensor], titles: Sequence[str], min_cell: int = 96, pad: int = 2) -> np.ndarray:
    """Columns of uint8 (R, 3, h, w) images -> (H, W, 3) uint8 with a title row; cells upscaled
    (nearest, an integer factor) to at least ``min_cell`` pixels."""
    h, w = columns[0].shape[-2:]
    factor = max(1, math.ceil(min_cell / max(1, min(h, w))))
    scaled = [c.repeat_interleave(factor, -2).repeat_interleave(factor, -1) for c in columns]
    grid = column_grid(scaled, pad=pad).permute(1, 2, 0).numpy()
    strip = _title_strip(titles, w * factor, pad)
    return np.concatenate([strip, grid], axis=0)


def write_grid(path: str | Path, columns: Sequence[torch.Tensor], titles: Sequence[str], min_cell: int = 96) -> Path:
    return save_png(grid_image(columns, titles, min_cell), path)


# --- sweeps --------------------------------------------------------------------------------------


def read_sweeps(out: str | Path) -> dict:
    path = Path(out) / SWEEPS_JSON
    if not path.is_file():
        return {"sweeps": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"sweeps": {}}
    if not isinstance(data, dict) or not isinstance(data.get("sweeps"), dict):
        return {"sweeps": {}}
    return data


def add_sweep_row(out: str | Path, param: str, row: dict) -> tuple[Path, Path]:
    """Put ``row`` (with "setting", e.g. "guidance_scale=5") in the sweep's table, replacing a row of
    the same setting in place (a re-run replaces, never duplicates); rewrite sweeps.json and sweeps.md."""
    data = read_sweeps(out)
    rows = data["sweeps"].setdefault(param, [])
    for k, old in enumerate(rows):
        if old.get("setting") == row["setting"]:
            rows[k] = row
            break
    else:
        rows.append(row)
    json_path = write_json(Path(out) / SWEEPS_JSON, data)
    md_path = write_text(Path(out) / SWEEPS_MD, sweeps_markdown(data))
    return json_path, md_path


def sweep_table(rows: Sequence[Mapping]) -> str:
    metrics: list[str] = []
    table_rows = []
    for row in rows:
        for mode, entry in row["modes"].items():
            metrics += [m for m in entry["metrics"] if m not in metrics]
            table_rows.append(([f"`{row['setting']}`", row_name(mode, entry)], entry["metrics"]))
    return markdown_table(table_rows, metrics, first_columns=("setting", "mode"))


def sweeps_markdown(data: Mapping) -> str:
    lines = ["# amlight evaluate: sweeps", "",
             "One table per swept parameter; each setting is a full evaluation (mean ± 95% CI over pairs, "
             "best mean per column in bold across all rows of the table)."]
    for param, rows in data["sweeps"].items():
        if not rows:
            continue
        lines += ["", f"## {param}", "", sweep_table(rows), ""]
        for row in rows:
            lines.append(f"- `{row['setting']}`: {settings_line(row)}; `{row['command']}`")
    return "\n".join(lines) + "\n"
