"""The state one UNet call needs about the exemplar, in one object.

The appearance branch runs the UNet with a context in ``write`` mode: every self-attention layer
stores its normalised input tokens (what attention projects to keys and values) in ``features``,
the bank. The generation branch runs with a context in ``read`` mode over that bank, built by
``ExemplarUNet.forward`` from the caller's :class:`ExemplarRead` (what to read and how).

The context reaches the attention processors through the UNet's documented ``cross_attention_kwargs``
argument, not through attributes set on the processors: it travels with the call, so gradient
checkpointing (which re-runs blocks during backward, after the call returned) sees the same state.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, runtime_checkable

import torch

from amlight.modules.attention_modes import AttentionSettings
from amlight.modules.categorical_cost import categorical_cost

CONTEXT_KWARG = "exemplar_ctx"


@runtime_checkable
class LogitRefiner(Protocol):
    """What the attention processor calls in ``adapter`` mode: :class:`~amlight.modules.adapter.AMAdapter`,
    or any object with this one method (a test's spy, an experiment).

    ``refine`` returns the refined exemplar logits (logits + refinement), (B, heads, N, N) like
    ``logits``, for the layer of block ``group`` with categorical ``cost`` (B, N, N) at ``size`` (h, w).
    ``max_resolution``: the 4D pooling size of this call (AttentionSettings.max_resolution; None: the
    refiner's own). ``inplace``: the caller allows adding into ``logits`` (no graph is recorded); the
    refiner may do so and return ``logits``, or return a new tensor.
    """

    def refine(self, group: str, logits: torch.Tensor, cost: torch.Tensor, size: tuple[int, int], *,
               max_resolution: int | None = None, inplace: bool = False) -> torch.Tensor: ...


@dataclass(frozen=True)
class RowSplit:
    """Batch rows that read the exemplar (``read``) and rows that do not (``plain``); ``order`` puts
    ``cat([out[read], out[plain]])`` back into batch order."""

    read: torch.Tensor
    plain: torch.Tensor
    order: torch.Tensor


@dataclass(frozen=True, eq=False)
class ExemplarRead:
    """What the generation branch reads and how: built by the caller, handed to ``ExemplarUNet.forward``.

    Everything here is fixed for a whole sampling run or training step except the bank, which a
    sampler swaps per step with :meth:`at`.
    """

    # layer -> (Bx, tokens, channels), from ExemplarUNet.write_bank. Empty in the template a sampler
    # fills per step.
    bank: dict[str, torch.Tensor] = field(default_factory=dict)
    # How to read it: mode, block groups, appearance strength, the adapter's pooling size. A mode name
    # means its defaults.
    settings: AttentionSettings | str = "augmented"
    exemplar_labels: torch.Tensor | None = None  # (Bx, H, W)
    # Which bank row each target row reads (one exemplar serving many targets); None: row b reads row b.
    exemplar_index: torch.Tensor | None = None
    # Rows that read the exemplar at all; False rows get plain self-attention (CFG's unconditional
    # half, exemplar dropout in training). None: every row reads.
    exemplar_keep: torch.Tensor | None = None
    # What the categorical cost compares with ``exemplar_labels`` when it differs from the structure
    # labels (a one-to-one mapping gives linked regions a label of their own); None: the structure labels.
    match_labels: torch.Tensor | None = None
    adapter: LogitRefiner | None = None  # refines the exemplar logits; adapter mode only
    recorder: Callable | None = None  # recorder(layer, probs_cross, size, ctx) for attention maps
    # Recompute the explicit (adapter) attention in backward instead of keeping each layer's
    # (B, heads, N, 2N) probabilities for it: training then holds one layer's logits at a time.
    checkpoint_attention: bool = False
    # Memory: compute the (mask-based) attention over target queries in chunks of this many tokens,
    # so a layer never holds more than chunk x 2N logits. The adapter needs whole logit volumes for
    # its 4D convolution, so adapter layers are not chunked.
    query_chunk: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "settings", AttentionSettings.of(self.settings))
        if self.adapter is not None and not isinstance(self.adapter, LogitRefiner):
            raise TypeError(f"adapter must be an AMAdapter or have its refine(group, logits, cost, size, *, "
                            f"max_resolution, inplace) method (LogitRefiner); got {type(self.adapter).__name__}")
        if self.query_chunk is not None and self.query_chunk < 1:
            raise ValueError(f"query_chunk must be a positive number of tokens, got {self.query_chunk}")

    def at(self, bank: dict[str, torch.Tensor]) -> "ExemplarRead":
        """The same read over another bank (a sampler's next step)."""
        return dataclasses.replace(self, bank=bank)

    @property
    def explicit_adapter(self) -> bool:
        """Whether the adapter refines the logits (adapter mode, with an adapter given)."""
        return self.settings.uses_adapter and self.adapter is not None


@dataclass
class ExemplarContext:
    """One UNet call's exemplar state: ``write`` fills ``features`` (the bank); ``read`` reads
    ``read.bank`` as ``read`` says, for targets ``target_labels``. Holds the per-call caches."""

    mode: Literal["write", "read"]
    latent_size: tuple[int, int]
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    read: ExemplarRead | None = None
    target_labels: torch.Tensor | None = None  # (B, H, W) at image resolution: what the cost compares
    ignore_index: int = 255
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.mode != "read":
            return
        if self.read is None:
            raise ValueError("a read context needs an ExemplarRead")
        self.features = self.read.bank
        if self.settings.needs_labels and (self.target_labels is None or self.read.exemplar_labels is None):
            raise ValueError(f"attention mode {self.settings.mode!r} needs target and exemplar label maps")

    @property
    def settings(self) -> AttentionSettings:
        return self.read.settings

    def size_of(self, num_tokens: int) -> tuple[int, int]:
        """Spatial size of a layer from its token count and the latent's aspect ratio."""
        H, W = self.latent_size
        factor = math.sqrt(H * W / num_tokens)
        h, w = round(H / factor), round(W / factor)
        if h * w != num_tokens:
            raise ValueError(f"cannot place {num_tokens} tokens on a grid of aspect {H}x{W}")
        return h, w

    def reads(self, layer: str, group: str) -> bool:
        return (self.mode == "read" and group in self.settings.groups and layer in self.features
                and self.settings.appearance_strength > 0)

    @property
    def strength_bias(self) -> float:
        """The logit bias that realises the appearance strength s: every exemplar token's unnormalised
        attention weight is multiplied by s. 1 (bias 0) is the method as trained; 0 ignores the
        exemplar (plain self-attention); above 1 copies the exemplar more eagerly at the expense of
        structure."""
        return math.log(self.settings.appearance_strength)

    def _exemplar_labels_per_target(self) -> torch.Tensor:
        labels, index = self.read.exemplar_labels, self.read.exemplar_index
        return labels if index is None else labels[index]

    def cost(self, size: tuple[int, int], rows: torch.Tensor | None = None) -> torch.Tensor:
        """Categorical cost at a layer's size, (B, h*w, h*w) bool; computed once per size and call.

        ``rows``: only those batch rows (the :meth:`row_split` reading rows), (len(rows), h*w, h*w).
        """
        key = ("cost", size, rows is not None)
        if key not in self._cache:
            target, exemplar = self.target_labels, self._exemplar_labels_per_target()
            if rows is not None:
                target, exemplar = target[rows.to(target.device)], exemplar[rows.to(exemplar.device)]
            self._cache[key] = categorical_cost(target, exemplar, size, self.ignore_index)
        return self._cache[key]

    def row_split(self, batch: int, device: torch.device) -> RowSplit | None:
        """Which rows read the exemplar and which attend plainly, when ``exemplar_keep`` mixes them.

        A row that may not read the exemplar has all its exemplar logits at -inf, which is exactly
        plain self-attention: running those rows without the exemplar (no bank projections, no
        exemplar logits, no adapter) gives the same output for a fraction of the cost. That is half
        of every classifier-free-guidance call. None when every row reads.
        """
        key = ("split", batch)
        if key not in self._cache:
            split = None
            if self.read.exemplar_keep is not None:
                keep = self.read.exemplar_keep.to(device=device, dtype=torch.bool).reshape(-1)
                if keep.numel() != batch:
                    raise ValueError(f"exemplar_keep has {keep.numel()} entries for {batch} batch rows")
                if not bool(keep.all()):
                    read, plain = keep.nonzero().squeeze(1), (~keep).nonzero().squeeze(1)
                    split = RowSplit(read, plain, torch.argsort(torch.cat([read, plain])))
            self._cache[key] = split
        return self._cache[key]

    def cross_mask(self, size: tuple[int, int], batch: int, device: torch.device) -> torch.Tensor | None:
        """Which exemplar positions each target position may attend to, (B, Nq, Nx) bool, or None for all."""
        key = ("mask", size)
        if key in self._cache:
            return self._cache[key]
        mask = None
        if self.settings.masks_other_classes:
            mask = self.cost(size)
        # Only when some row may not read: an all-True keep mask would just send every row through
        # the slower masked attention (stage 1, dropout 0.1, batch 8: 0.9^8 = 43 % of steps keep every row).
        if self.row_split(batch, device) is not None:
            keep = self.read.exemplar_keep.to(device=device, dtype=torch.bool).view(batch, 1, 1)
            n = size[0] * size[1]
            mask = keep.expand(batch, n, n) if mask is None else (mask & keep)
        self._cache[key] = mask
        return mask
