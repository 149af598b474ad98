"""What structure guidance gives the UNet for one call: one interface for both kinds of guidance."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class GuidanceSignal:
    """``conv_in``: features added right after the UNet's ``conv_in`` (ControlNeXt-style guidance, through
    its ``inject``); ``down_residuals`` / ``mid_residual``: added to the skip connections and the mid
    block (a ControlNet), passed as the UNet's own ``*_additional_residual(s)`` arguments."""

    conv_in: torch.Tensor | None = None
    down_residuals: tuple[torch.Tensor, ...] | None = None
    mid_residual: torch.Tensor | None = None

    def unet_kwargs(self) -> dict[str, Any]:
        if self.down_residuals is None:
            return {}
        return {"down_block_additional_residuals": self.down_residuals,
                "mid_block_additional_residual": self.mid_residual}
