"""The one attention-panel rendering (amlight/apps/attention_panel.py) shared by the notebook, the app
and the TensorBoard AttentionMaps callback."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from amlight.apps import attention_panel as P


def _cols(n=2, value=100):
    return torch.full((n, 3, 16, 16), value, dtype=torch.uint8)


def test_panel_has_headers_title_and_row_labels_above_and_beside_the_grid():
    bare = P.panel([_cols(), _cols()], upscale=2)
    full = P.attention_panel(_cols(), {"augmented": _cols(), "adapter": _cols()}, _cols(), exemplar=_cols(),
                             row_labels=["road", "car"], title=P.panel_title("up_blocks.1.attentions.0.transformer_blocks.0.attn1", (8, 8), 500),
                             upscale=2)
    assert full.height > bare.height  # header and title lines
    pixels = np.asarray(full.convert("L"))
    assert (pixels[:30] < 80).any(), "no text above the grid"
    assert (pixels[40:, :20] < 80).any(), "no row labels left of the grid"
    # five columns: target, exemplar, two modes, same class
    assert full.width >= 5 * 16 * 2


def test_headers_wider_than_tiny_columns_widen_the_panel_instead_of_overlapping():
    narrow = P.panel([_cols(1)] * 3, upscale=1)
    wide = P.panel([_cols(1)] * 3, ["target + point", "augmented", "same class in exemplar"], upscale=1)
    assert wide.width > narrow.width + 60
    with pytest.raises(ValueError, match="2 headers for 3 columns"):
        P.panel([_cols(1)] * 3, ["a", "b"])


def test_tags_and_captions_say_layer_grid_and_timestep():
    name = "up_blocks.1.attentions.2.transformer_blocks.0.attn1"
    assert P.panel_tag(name, (8, 8), 500, 1) == "attention/up1_a2_8x8_t500/sample1"
    assert P.layer_caption(name, (8, 8)) == "up1_a2 8x8"
    assert P.tag_layer_name("mid_block.attentions.0.transformer_blocks.1.attn1") == "mid_a0_blk1"
    assert P.panel_title(name, (8, 8), 250) == "layer up1_a2 8x8 tokens, t=250"
    chw = P.to_chw(P.panel([_cols(1)], upscale=1))
    assert chw.dtype == torch.uint8 and chw.shape[0] == 3
