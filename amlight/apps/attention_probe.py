"""Look at where the generation branch's attention goes in the exemplar, and measure it.

The question the AM-Adapter answers (docs/method.md#part-5-the-am-adapter) is whether a target region reads the exemplar
regions of its own class. :func:`probe_attention` runs one generation step with a recorder on the
self-attention layers and keeps the exemplar part of their attention; :class:`ProbeResult` turns that
into numbers (same-class mass, exemplar share) and :func:`heatmap_overlay` into pictures.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from amlight.modules.attention_modes import BANK_MODES, BLOCK_GROUPS, AttentionSettings, check_groups, group_of
from amlight.modules.exemplar_context import ExemplarRead

try:
    from scipy.ndimage import distance_transform_edt as _edt
except ImportError:  # scipy is a dependency of scikit-image, but the probe must not need it
    _edt = None

# A probe looks at exemplar attention: only the modes that read the exemplar have any.
PROBE_MODES = BANK_MODES


# --------------------------------------------------------------------------- query points
def _distance_inside(mask: torch.Tensor) -> torch.Tensor:
    """Distance of each pixel of ``mask`` (H, W) bool to the nearest pixel outside it, float (H, W).

    The image border counts as outside: a point chosen "deep inside" must be visible with context
    around it, not stuck to the frame.
    """
    padded = F.pad(mask.float(), (1, 1, 1, 1))
    if _edt is not None:
        dist = torch.from_numpy(_edt(padded.numpy())).float()
    else:
        # Chessboard distance by repeated 3x3 erosion (min-pool): a pixel's distance is the number of
        # erosions it survives. Coarser than Euclidean but has the same maxima on convex regions.
        dist = torch.zeros_like(padded)
        current = padded[None, None]
        while bool(current.any()):
            dist += current[0, 0]
            current = -F.max_pool2d(-current, kernel_size=3, stride=1, padding=1)
    return dist[1:-1, 1:-1]


def choose_query_points(
    target_labels: torch.Tensor | np.ndarray, ignore_index: int = 255, max_points: int = 8
) -> list[tuple[int, int, int]]:
    """One (row, col, class) per class present, classes in increasing order, at most ``max_points``.

    Each point is the pixel of its class farthest from the class boundary. Among equally far pixels
    (the ridge of an elongated region, the 2x2 centre of an even-sized one) it takes the one nearest
    the ridge's centroid, so the choice is deterministic and central rather than first-in-scan-order.
    """
    labels = torch.as_tensor(target_labels).detach().cpu()
    if labels.ndim != 2:
        raise ValueError(f"target_labels must be (H, W), got shape {tuple(labels.shape)}")
    points: list[tuple[int, int, int]] = []
    for cls in torch.unique(labels).tolist():
        if cls == ignore_index:
            continue
        if len(points) >= max_points:
            break
        dist = _distance_inside(labels == cls)
        ridge = torch.nonzero(dist >= dist.max() - 1e-6).float()
        centre = ridge.mean(0)
        r, c = ridge[torch.argmin(((ridge - centre) ** 2).sum(1))].long().tolist()
        points.append((r, c, int(cls)))
    return points


def point_to_token(point: tuple[int, int], image_size: tuple[int, int], size: tuple[int, int]) -> int:
    """Row-major token index at a layer of ``size`` of the image pixel ``point``."""
    (H, W), (h, w) = image_size, size
    return (int(point[0]) * h // H) * w + int(point[1]) * w // W


# --------------------------------------------------------------------------- probing
@dataclass
class ProbeResult:
    """The exemplar part of the attention of some self-attention layers, for one batch and one mode.

    Per layer name: ``probs`` (B, N, N) float, head-averaged softmax probabilities of the exemplar
    columns of [self ; exemplar] attention (rows target positions, columns exemplar positions, row-major
    at ``size``); ``cost`` (B, N, N) bool, the categorical cost; ``size`` (h, w).
    """

    probs: dict[str, torch.Tensor] = field(default_factory=dict)
    cost: dict[str, torch.Tensor] = field(default_factory=dict)
    size: dict[str, tuple[int, int]] = field(default_factory=dict)
    mode: str = ""
    image_size: tuple[int, int] | None = None

    @property
    def layers(self) -> list[str]:
        return list(self.probs)

    def _layers(self, layer: str | None) -> list[str]:
        if layer is None:
            if not self.probs:
                raise ValueError("no layer was recorded (do the probed layers read the exemplar bank?)")
            return self.layers
        if layer not in self.probs:
            raise KeyError(f"layer {layer!r} was not recorded; recorded: {self.layers}")
        return [layer]

    def _same_class_layer(self, layer: str) -> torch.Tensor:
        probs, cost = self.probs[layer].float(), self.cost[layer].bool()
        total = probs.sum(-1)
        same = (probs * cost).sum(-1)
        # Normalising over exemplar columns only: hard_mask and adapter change how much mass goes to
        # the exemplar at all, and that must not leak into "how well is it aimed".
        valid = cost.any(-1) & (total > 0)
        share = torch.where(valid, same / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))
        count = valid.sum(-1)
        return torch.where(count > 0, share.sum(-1) / count.clamp_min(1), torch.full_like(share[:, 0], float("nan")))

    def same_class_mass_per_sample(self, layer: str | None = None) -> torch.Tensor:
        """(B,): per sample, the mean over target positions whose class is in the exemplar of the share
        of their exemplar attention that lands on same-class exemplar positions; averaged over layers
        when ``layer`` is None. NaN for a sample with no such position."""
        return _nanmean(torch.stack([self._same_class_layer(name) for name in self._layers(layer)]), 0)

    def same_class_mass(self, layer: str | None = None) -> float:
        """:meth:`same_class_mass_per_sample` averaged over samples (each sample weighs the same)."""
        per_layer = [_nanmean(self._same_class_layer(name), 0) for name in self._layers(layer)]
        return float(_nanmean(torch.stack(per_layer), 0))

    def exemplar_share_per_sample(self, layer: str | None = None) -> torch.Tensor:
        """(B,): share of the whole attention (self + exemplar) spent on the exemplar, averaged over
        target positions (and layers when ``layer`` is None). Near 0: the UNet ignores the bank."""
        return torch.stack([self.probs[name].float().sum(-1).mean(-1) for name in self._layers(layer)]).mean(0)

    def exemplar_share(self, layer: str | None = None) -> float:
        return float(self.exemplar_share_per_sample(layer).mean())

    def _row(self, layer: str, sample: int, point: tuple[int, int]) -> int:
        if self.image_size is None:
            raise ValueError("image_size is unknown: cannot map an image point to a token")
        return point_to_token(point, self.image_size, self.size[layer])

    def attention_map(self, layer: str, sample: int, point: tuple[int, int]) -> torch.Tensor:
        """(h, w): where the target pixel ``point`` attends in the exemplar, normalised over the exemplar."""
        row = self.probs[layer][sample, self._row(layer, sample, point)].float()
        return (row / row.sum().clamp_min(torch.finfo(row.dtype).tiny)).view(self.size[layer])

    def cost_map(self, layer: str, sample: int, point: tuple[int, int]) -> torch.Tensor:
        """(h, w) bool: the exemplar positions of the class of the target pixel ``point``."""
        return self.cost[layer][sample, self._row(layer, sample, point)].view(self.size[layer])


def _nanmean(x: torch.Tensor, dim: int) -> torch.Tensor:
    valid = ~torch.isnan(x)
    total = torch.where(valid, x, torch.zeros_like(x)).sum(dim)
    count = valid.sum(dim)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


@contextlib.contextmanager
def eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Eval mode inside, and afterwards every submodule's own train/eval flag back as it was (a blanket
    ``.train()`` would wake up parts that a stage keeps frozen in eval mode)."""
    flags = {m: m.training for module in modules if module is not None for m in module.modules()}
    try:
        for module in modules:
            if module is not None:
                module.eval()
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


@torch.no_grad()
def probe_attention(
    model,
    backbone,
    batch: dict,
    mode: AttentionSettings | str,
    adapter=None,
    timestep: int = 500,
    layers: Iterable[str] | None = None,
    seed: int = 0,
    groups: Iterable[str] = BLOCK_GROUPS,
) -> ProbeResult:
    """One generation-branch call at ``timestep`` with the exemplar's bank, recording attention.

    model: an ExemplarUNet; backbone: its Backbone; batch: image, labels, exemplar_image, exemplar_labels.
    Target and exemplar latents are noised with fixed noise from ``seed``, so repeated probes of the same
    batch differ only through the model. ``layers`` None records every self-attention layer that reads
    the bank (those of ``groups``); on large backbones name a few: each costs (B, N, N) floats on the CPU.
    ``mode``: settings, or a mode name read in ``groups``.
    """
    settings = AttentionSettings.of(mode, groups)
    mode = settings.mode
    if not settings.reads_exemplar:
        raise ValueError(f"probe mode must read the exemplar: one of {', '.join(PROBE_MODES)}, got {mode!r}")
    if settings.uses_adapter and adapter is None:
        raise ValueError("probe mode 'adapter' needs an adapter")
    wanted = None
    if layers is not None:
        wanted = set(layers)
        unknown = wanted - set(model.self_attention_layers)
        if unknown:
            raise ValueError(f"unknown self-attention layer(s) {sorted(unknown)}; known: {model.self_attention_layers}")

    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    image = batch["image"].to(device, dtype)
    exemplar_image = batch["exemplar_image"].to(device, dtype)
    labels = batch["labels"].to(device)
    exemplar_labels = batch["exemplar_labels"].to(device)
    n = image.shape[0]

    result = ProbeResult(mode=mode, image_size=tuple(labels.shape[-2:]))

    def recorder(layer: str, probs_cross: torch.Tensor, size, ctx) -> None:
        if wanted is not None and layer not in wanted:
            return
        result.probs[layer] = probs_cross.float().mean(1).cpu()
        result.cost[layer] = ctx.cost(size).cpu()
        result.size[layer] = tuple(size)

    generator = torch.Generator().manual_seed(seed)
    with eval_mode(model, adapter):
        latents = backbone.encode(image, generator=generator)
        exemplar_latents = backbone.encode(exemplar_image, generator=generator)
        noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
        exemplar_noise = torch.randn(exemplar_latents.shape, generator=generator).to(device, latents.dtype)
        scheduler = backbone.train_scheduler()
        t = torch.full((n,), int(timestep), device=device, dtype=torch.long)
        noisy = scheduler.add_noise(latents, noise, t)
        exemplar_noisy = scheduler.add_noise(exemplar_latents, exemplar_noise, t)
        prompt = backbone.prompt_batch(n).to(device, dtype)
        bank = model.write_bank(exemplar_noisy, t, exemplar_labels, prompt)
        model(noisy, t, labels, prompt, ExemplarRead(
            bank, settings, exemplar_labels=exemplar_labels, adapter=adapter if settings.uses_adapter else None,
            recorder=recorder,
        ))
    return result


# --------------------------------------------------------------------------- layer choice
def _indices(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))


def default_probe_layers(layer_names: Iterable[str], groups: Iterable[str] = BLOCK_GROUPS) -> list[str]:
    """The highest-resolution down layer, the first mid layer and the highest-resolution up layer.

    In a diffusers UNet resolution falls with the down-block index and rises with the up-block index,
    so this needs names only, no forward pass.
    """
    groups = check_groups(groups)
    by_group: dict[str, list[str]] = {g: [] for g in BLOCK_GROUPS}
    for name in layer_names:
        by_group[group_of(name)].append(name)
    chosen = []
    for group, pick in (("down", min), ("mid", min), ("up", max)):
        if group in groups and by_group[group]:
            chosen.append(pick(by_group[group], key=_indices))
    return chosen


def short_layer_name(name: str) -> str:
    """'down_blocks.1.attentions.0.transformer_blocks.0.attn1' -> 'down1_a0_t0' (for tags and files)."""
    s = name.removesuffix(".attn1")
    for long, short in (("down_blocks.", "down"), ("up_blocks.", "up"), ("mid_block.", "mid_"),
                        (".attentions.", "_a"), ("attentions.", "a"), (".transformer_blocks.", "_t")):
        s = s.replace(long, short)
    return re.sub(r"[^A-Za-z0-9_]+", "_", s)


# --------------------------------------------------------------------------- pictures
_VIRIDIS_ANCHORS = torch.tensor(
    [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
     [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37]],
    dtype=torch.float32,
) / 255.0


def _colormap_lut(size: int = 256) -> torch.Tensor:
    """(size, 3) in [0, 1]: a viridis-like ramp (dark blue to yellow), monotonic in lightness so the
    heat reads correctly in greyscale too."""
    x = torch.linspace(0, 1, size) * (len(_VIRIDIS_ANCHORS) - 1)
    lo = x.floor().long().clamp(max=len(_VIRIDIS_ANCHORS) - 2)
    frac = (x - lo)[:, None]
    return _VIRIDIS_ANCHORS[lo] * (1 - frac) + _VIRIDIS_ANCHORS[lo + 1] * frac


_LUT = _colormap_lut()


def draw_marker(image: torch.Tensor, point: tuple[int, int], radius: int | None = None) -> torch.Tensor:
    """A white cross with a black outline at ``point`` (row, col) on a uint8 (3, H, W) image (a copy)."""
    out = image.clone()
    H, W = out.shape[-2:]
    r0, c0 = int(point[0]), int(point[1])
    radius = radius if radius is not None else max(1, min(H, W) // 16)

    def cross(width: int, value: int) -> None:
        for d in range(-radius - width, radius + width + 1):
            for e in range(-width, width + 1):
                for r, c in ((r0 + d, c0 + e), (r0 + e, c0 + d)):
                    if 0 <= r < H and 0 <= c < W:
                        out[:, r, c] = value

    cross(1, 0)  # the outline keeps the marker visible on light and dark labels alike
    cross(0, 255)
    return out


def heatmap_overlay(
    image: torch.Tensor, weights: torch.Tensor, point: tuple[int, int] | None = None, alpha: float = 0.75
) -> torch.Tensor:
    """uint8 (3, H, W): ``weights`` (h, w), min-max normalised, in colour over a greyed ``image`` (3, H, W)
    in [-1, 1]. Nearest upsampling keeps the token grid visible: it is what attention sees.
    Hot positions cover the image, cold ones let it show through."""
    image = image.detach().float().cpu()
    H, W = image.shape[-2:]
    w = weights.detach().float().cpu()
    lo, hi = w.min(), w.max()
    w = (w - lo) / (hi - lo) if hi > lo else torch.zeros_like(w)
    w = F.interpolate(w[None, None], size=(H, W), mode="nearest")[0, 0]
    grey = ((image.clamp(-1, 1) + 1) / 2).mean(0, keepdim=True).expand(3, H, W)
    colour = _LUT[(w * (len(_LUT) - 1)).round().long()].permute(2, 0, 1)
    a = alpha * (0.3 + 0.7 * w)[None]
    out = ((1 - a) * grey * 0.8 + a * colour).clamp(0, 1)
    out = (out * 255).round().to(torch.uint8)
    return draw_marker(out, point) if point is not None else out
