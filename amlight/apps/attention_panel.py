"""The one rendering of an attention panel: used by the notebook, the Gradio app and the TensorBoard
AttentionMaps callback, so that a panel reads the same wherever it is seen.

A panel has one row per query (a point, or a layer for one point) and the columns
``target + point | [exemplar] | one heat map per mode | <class> in exemplar``, each with a header, a
title line saying which layer (and its token grid) and which timestep it shows, and row labels.
:func:`panel` is the generic picture (PIL, no matplotlib); :func:`attention_panel` fixes the columns.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from amlight.apps.attention_probe import short_layer_name
from amlight.utils.visualize import column_grid, to_uint8


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def panel(columns: Sequence[torch.Tensor], headers: Sequence[str] | None = None,
          row_labels: Sequence[str] | None = None, upscale: int = 4, title: str | None = None) -> Image.Image:
    """A PIL image: one column per uint8 (N, 3, H, W) tensor (N rows), nearest-upscaled, with a header
    over each column, a label left of each row and a title line. Jupyter displays it inline."""
    if headers is not None and len(headers) != len(columns):
        raise ValueError(f"{len(headers)} headers for {len(columns)} columns")
    pad = 2
    grid = column_grid(list(columns), pad=pad, upscale=upscale)
    h, w = columns[0].shape[-2:]
    font = _font(12)
    line = 16
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    # Headers wider than their column (tiny 16 px maps at upscale 1) get more room: widen the canvas
    # rather than let the words overlap.
    col_w = w * upscale
    if headers:
        widest = max(int(probe.textlength(str(t), font=font)) for t in headers) + 6
        if widest > col_w + pad * upscale:
            extra = widest - col_w
            wide = [_pad_columns(c, extra // upscale + 1) for c in columns]
            return panel(wide, headers, row_labels, upscale, title)
    top = line * ((1 if headers else 0) + (1 if title else 0)) + (4 if headers or title else 0)
    left = 0
    if row_labels:
        left = 8 + max(int(probe.textlength(str(t), font=font)) for t in row_labels)
    body = Image.fromarray(grid.permute(1, 2, 0).numpy())
    width = max(left + body.width, (int(probe.textlength(title, font=font)) + 8) if title else 0)
    canvas = Image.new("RGB", (width, top + body.height), "white")
    canvas.paste(body, (left, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    if headers:
        y = top - line - 2
        for c, text in enumerate(headers):
            x0 = left + (pad + c * (w + pad)) * upscale
            draw.text((x0 + col_w / 2, y), str(text), fill="black", font=font, anchor="ma")
    if row_labels:
        for r, text in enumerate(row_labels):
            y0 = top + (pad + r * (h + pad)) * upscale
            draw.text((4, y0 + h * upscale / 2), str(text), fill="black", font=font, anchor="lm")
    return canvas


def _pad_columns(column: torch.Tensor, extra: int) -> torch.Tensor:
    """A column (N, 3, H, W) padded with white on both sides to W + ``extra`` pixels."""
    left = extra // 2
    return torch.nn.functional.pad(column, (left, extra - left), value=255)


def layer_caption(layer: str, size: tuple[int, int]) -> str:
    """'up_blocks.1.attentions.2.transformer_blocks.0.attn1', (8, 8) -> 'up1_a2 8x8'."""
    return f"{tag_layer_name(layer)} {size[0]}x{size[1]}"


def tag_layer_name(layer: str) -> str:
    """short_layer_name without the transformer-block suffix '_t0' (it read as a timestep in tags);
    a block index other than 0 stays, as '_blk1'."""
    short = short_layer_name(layer)
    return re.sub(r"_t(\d+)$", lambda m: "" if m.group(1) == "0" else f"_blk{m.group(1)}", short)


def panel_tag(layer: str, size: tuple[int, int], timestep: int, sample: int | None = None) -> str:
    """The TensorBoard tag of a panel: ``attention/<layer>_<h>x<w>_t<timestep>[/sample<i>]``."""
    tag = f"attention/{tag_layer_name(layer)}_{size[0]}x{size[1]}_t{int(timestep)}"
    return tag if sample is None else f"{tag}/sample{sample}"


def attention_panel(target: torch.Tensor, heat: Mapping[str, torch.Tensor], same_class: torch.Tensor, *,
                    exemplar: torch.Tensor | None = None, class_header: str = "same class in exemplar",
                    row_labels: Sequence[str] | None = None, title: str | None = None,
                    upscale: int = 4) -> Image.Image:
    """The attention panel. All images uint8 (N, 3, H, W), one row per query:
    ``target``: the target labels with the query point marked; ``heat``: per mode, the point's attention
    over the exemplar (heatmap_overlay); ``same_class``: the exemplar positions of the point's class;
    ``exemplar`` (optional): the exemplar image itself."""
    columns = [target] + ([exemplar] if exemplar is not None else []) + list(heat.values()) + [same_class]
    headers = ["target + point"] + (["exemplar"] if exemplar is not None else []) + list(heat) + [class_header]
    return panel(columns, headers, row_labels=row_labels, upscale=upscale, title=title)


def panel_title(layer: str | None, size: tuple[int, int] | None, timestep: int, what: str = "") -> str:
    """'up1_a2 8x8 tokens, t=500' (plus ``what`` in front): the layer, its token grid and the timestep."""
    parts = [what] if what else []
    if layer is not None and size is not None:
        parts.append(f"layer {layer_caption(layer, size)} tokens")
    parts.append(f"t={int(timestep)}")
    return ", ".join(parts)


def to_chw(image: Image.Image) -> torch.Tensor:
    """A PIL panel as uint8 (3, H, W), the layout TensorBoard's add_image wants."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).contiguous()


__all__ = ["attention_panel", "layer_caption", "panel", "panel_tag", "panel_title", "tag_layer_name", "to_chw",
           "to_uint8"]
