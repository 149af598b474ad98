"""How the generation branch uses the exemplar (METHOD.md, "Ablation modes")."""
from __future__ import annotations

from typing import Literal, get_args

AttentionMode = Literal["structure_only", "augmented", "hard_mask", "adapter"]
ATTENTION_MODES: tuple[str, ...] = get_args(AttentionMode)

BlockGroup = Literal["down", "mid", "up"]
BLOCK_GROUPS: tuple[str, ...] = get_args(BlockGroup)


def check_mode(mode: str) -> str:
    if mode not in ATTENTION_MODES:
        raise ValueError(f"unknown attention mode {mode!r}; choose one of {', '.join(ATTENTION_MODES)}")
    return mode


def check_groups(groups) -> frozenset[str]:
    groups = frozenset(groups)
    unknown = groups - set(BLOCK_GROUPS)
    if unknown:
        raise ValueError(f"unknown block group(s) {sorted(unknown)}; choose from {', '.join(BLOCK_GROUPS)}")
    return groups


def group_of(layer_name: str) -> str:
    """'down_blocks.1.attentions.0...' -> 'down'; 'mid_block...' -> 'mid'; 'up_blocks...' -> 'up'."""
    head = layer_name.split(".", 1)[0]
    if head.startswith("down"):
        return "down"
    if head.startswith("mid"):
        return "mid"
    if head.startswith("up"):
        return "up"
    raise ValueError(f"cannot tell the block group of attention layer {layer_name!r}")
