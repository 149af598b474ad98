"""How the generation branch uses the exemplar (docs/method.md#ablation-modes): the modes, the block
groups, and :class:`AttentionSettings`, the one object that carries the choice from the face (CLI,
config, Python call) down to the attention processors."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable, Literal, get_args

AttentionMode = Literal["structure_only", "augmented", "hard_mask", "adapter"]
ATTENTION_MODES: tuple[str, ...] = get_args(AttentionMode)

BlockGroup = Literal["down", "mid", "up"]
BLOCK_GROUPS: tuple[str, ...] = get_args(BlockGroup)

# Modes that read an exemplar bank, and those whose categorical cost needs both label maps.
BANK_MODES: tuple[str, ...] = tuple(m for m in ATTENTION_MODES if m != "structure_only")
LABEL_MODES: tuple[str, ...] = ("hard_mask", "adapter")


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


@dataclass(frozen=True)
class AttentionSettings:
    """How the generation branch reads the exemplar: built once where the user chose (CLI flags, a
    config, a Python call), validated there, and handed down whole.

    ``mode``: one of :data:`ATTENTION_MODES`. ``groups``: the UNet block groups whose self-attention
    reads the exemplar. ``appearance_strength``: see
    :class:`~amlight.modules.exemplar_context.ExemplarContext` (1 is the method as trained).
    ``max_resolution``: the adapter's 4D pooling size for this run, handed to every adapter call
    (``AMAdapter.refine(..., max_resolution=...)``; the adapter itself is not changed); None keeps the
    adapter's trained value. Which labels the categorical cost compares (one-to-one mapping) is per
    pair, so it travels with the pair's inputs, not here.
    """

    mode: AttentionMode = "adapter"
    groups: frozenset[str] = frozenset(BLOCK_GROUPS)
    appearance_strength: float = 1.0
    max_resolution: int | None = None

    def __post_init__(self):
        check_mode(self.mode)
        object.__setattr__(self, "groups", check_groups(self.groups))
        strength = float(self.appearance_strength)
        if not (strength >= 0 and math.isfinite(strength)):
            raise ValueError(f"appearance_strength must be a finite number >= 0, got {self.appearance_strength}")
        object.__setattr__(self, "appearance_strength", strength)
        if self.max_resolution is not None:
            if int(self.max_resolution) < 1:
                raise ValueError(f"max_resolution must be >= 1, got {self.max_resolution}")
            object.__setattr__(self, "max_resolution", int(self.max_resolution))

    @property
    def reads_exemplar(self) -> bool:
        """Whether this mode reads exemplar banks at all (every mode but ``structure_only``)."""
        return self.mode in BANK_MODES

    @property
    def uses_adapter(self) -> bool:
        return self.mode == "adapter"

    @property
    def masks_other_classes(self) -> bool:
        """Whether exemplar positions of another class are masked out of the attention (``hard_mask``)."""
        return self.mode == "hard_mask"

    @property
    def needs_labels(self) -> bool:
        """Whether the categorical cost (target and exemplar label maps) is part of this mode."""
        return self.mode in LABEL_MODES

    def replace(self, **changes) -> "AttentionSettings":
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, mode: "str | AttentionSettings", groups: Iterable[str] = BLOCK_GROUPS,
           appearance_strength: float = 1.0, max_resolution: int | None = None) -> "AttentionSettings":
        """``mode`` as given when it is settings already, else settings from the loose values."""
        if isinstance(mode, AttentionSettings):
            return mode
        return cls(mode, frozenset(groups), appearance_strength, max_resolution)
