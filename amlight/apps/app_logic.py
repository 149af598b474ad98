"""The Gradio app's logic as plain functions (amlight/apps/app_ui.py only wires them to widgets).

Everything here takes and returns numpy arrays / torch tensors / PIL images, so the tests call it
directly: loading a model (a pipeline folder, or stage-1 checkpoint + adapter), reading uploads with a
one-line :class:`AppInputError` for a bad file, showing label maps in the dataset's colours with a
legend, brush painting, picking the connected region at a click, one-to-one links, generation with
exemplar banks cached while the exemplar and the sampling settings stay the same, and the attention of
a clicked target pixel over the exemplar, per mode and per layer group.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

from amlight.apps.applications import link_regions
from amlight.apps.attention_panel import attention_panel, layer_caption, panel_title
from amlight.apps.attention_probe import PROBE_MODES, default_probe_layers, draw_marker, heatmap_overlay, probe_attention
from amlight.apps.inputs import LabelSpace, resize_image
from amlight.modules.attention_modes import AttentionSettings, group_of
from amlight.pipeline.schedulers import SCHEDULERS, scheduler_by_name
from amlight.utils.visualize import colorize, to_uint8

QUICKSTART_PIPELINE = "runs/quickstart/pipeline"
QUICKSTART_STAGE1 = "runs/quickstart/stage1/checkpoints/last.ckpt"
QUICKSTART_STAGE2 = "runs/quickstart/stage2/checkpoints/last.ckpt"


class AppInputError(ValueError):
    """Something the user gave the app that it cannot use: shown in the app as one line."""


# --------------------------------------------------------------------------- model
def load_model(pipeline: str | Path | None = None, stage1: str | Path | None = None,
               adapter: str | Path | None = None, data: str | None = None):
    """``(pipe, label_space)``: a pipeline folder (``AMPipeline.from_pretrained``) or a stage-1
    checkpoint with an optional adapter (``AMPipeline.from_checkpoints``). The label space is the
    folder's own, else ``data`` (a dataset name or folder), else the one of the stage-1 run."""
    from amlight.apps.inputs import label_space_from_run
    from amlight.checkpoints.pipeline_folder import is_pipeline_folder
    from amlight.pipeline.synthesis import AMPipeline

    if pipeline is not None:
        if not is_pipeline_folder(pipeline):
            raise AppInputError(f"{pipeline}: not a pipeline folder (no model_index.json); make one with "
                                "`amlight export`, or pass --stage1 CKPT --adapter FILE")
        pipe = AMPipeline.from_pretrained(pipeline)
        if data is not None:
            space = LabelSpace.resolve(data)
        elif getattr(pipe, "label_space", None) is not None:
            space = LabelSpace.from_pipeline(pipe.label_space, origin=str(pipeline))
        else:
            raise AppInputError(f"{pipeline}: the folder has no label_space; pass --data NAME_OR_DIR")
        return pipe, space
    if stage1 is None:
        raise AppInputError("no model: pass --pipeline DIR, or --stage1 CKPT [--adapter FILE] (or run `make demo`)")
    for path in (stage1, adapter):
        if path is not None and not Path(path).is_file():
            raise AppInputError(f"{path}: no such file")
    pipe = AMPipeline.from_checkpoints(stage1, adapter)
    space = LabelSpace.resolve(data) if data is not None else label_space_from_run(stage1)
    return pipe, space


def default_model_paths(root: str | Path = ".") -> dict:
    """The quickstart model when ``make demo`` has made it: {'pipeline': DIR} or {'stage1', 'adapter'}; else {}."""
    root = Path(root)
    if (root / QUICKSTART_PIPELINE / "model_index.json").is_file():
        return {"pipeline": root / QUICKSTART_PIPELINE}
    if (root / QUICKSTART_STAGE1).is_file() and (root / QUICKSTART_STAGE2).is_file():
        return {"stage1": root / QUICKSTART_STAGE1, "adapter": root / QUICKSTART_STAGE2}
    return {}


# --------------------------------------------------------------------------- uploads
def _name(path) -> str:
    return Path(str(path)).name


def read_image(path: str | Path, size: tuple[int, int], what: str = "image") -> torch.Tensor:
    """An uploaded image file as float (3, H, W) in [-1, 1] at the model's ``size``."""
    try:
        with Image.open(path) as im:
            rgb = np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise AppInputError(f"{what} {_name(path)}: not a readable image ({type(e).__name__})") from None
    return resize_image(rgb, size)


def read_labels(path: str | Path, space: LabelSpace, size: tuple[int, int], what: str = "label map",
                image_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """An uploaded label file (index or palette-colour PNG) as int64 (H, W) at ``size``.

    Colours outside the dataset's palette, a corrupt file, or a size that differs from its image
    (``image_shape``, the uploaded image's (H, W)) raise :class:`AppInputError` naming the file."""
    from amlight.apps.inputs import resize_labels_nearest

    try:
        labels = space.load_labels(path)
    except (UnidentifiedImageError, SyntaxError) as e:
        raise AppInputError(f"{what} {_name(path)}: not a readable image ({type(e).__name__})") from None
    except (ValueError, OSError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        # Uploads live under a temporary folder the user never saw: name the file only.
        text = text.replace(str(path), _name(path)).removeprefix(f"{_name(path)}: ")
        raise AppInputError(f"{what} {_name(path)}: {text}") from None
    if image_shape is not None and tuple(labels.shape[:2]) != tuple(image_shape):
        raise AppInputError(f"{what} {_name(path)} is {labels.shape[1]}x{labels.shape[0]} but its image is "
                            f"{image_shape[1]}x{image_shape[0]}: they must have the same size")
    return resize_labels_nearest(labels, size)


def image_shape(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file without decoding its pixels."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (UnidentifiedImageError, OSError) as e:
        raise AppInputError(f"image {_name(path)}: not a readable image ({type(e).__name__})") from None


# --------------------------------------------------------------------------- showing label maps
def show_labels(labels: torch.Tensor, space: LabelSpace) -> np.ndarray:
    """uint8 (H, W, 3): ``labels`` (H, W) in the dataset's colours."""
    return colorize(torch.as_tensor(labels)[None], space.metadata)[0].permute(1, 2, 0).numpy()


def show_image(image: torch.Tensor) -> np.ndarray:
    """uint8 (H, W, 3) of an image (3, H, W) in [-1, 1]."""
    return to_uint8(image[None])[0].permute(1, 2, 0).numpy()


def legend_html(space: LabelSpace, labels: Sequence[torch.Tensor] = ()) -> str:
    """A colour swatch and name per class (those present in ``labels`` first, the rest greyed)."""
    present = set()
    for lab in labels:
        present |= set(torch.unique(torch.as_tensor(lab)).tolist())
    items = []
    for i, (name, colour) in enumerate(zip(space.metadata.class_names, space.metadata.colors)):
        r, g, b = (int(v) for v in colour)
        style = "" if not present or i in present else "opacity:0.4;"
        items.append(f'<span style="margin-right:10px;{style}"><span style="display:inline-block;width:12px;'
                     f'height:12px;background:rgb({r},{g},{b});border:1px solid #444"></span> {i} {name}</span>')
    return '<div class="amlight-legend">' + " ".join(items) + "</div>"


# --------------------------------------------------------------------------- editing
def paint_brush(labels: torch.Tensor, cls: int, points: Sequence[tuple[int, int]], radius: int,
                num_classes: int) -> torch.Tensor:
    """A copy of ``labels`` (H, W) with a disc of ``radius`` pixels of class ``cls`` at each (row, col)."""
    if not 0 <= int(cls) < num_classes:
        raise AppInputError(f"class {cls} is outside the model's classes 0..{num_classes - 1}")
    out = torch.as_tensor(labels).clone().long()
    H, W = out.shape
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    for r, c in points:
        if not (0 <= r < H and 0 <= c < W):
            raise AppInputError(f"brush point ({r}, {c}) lies outside the {W}x{H} label map")
        out[(rows - r) ** 2 + (cols - c) ** 2 <= int(radius) ** 2] = int(cls)
    return out


def paint_layer(labels: torch.Tensor, cls: int, layer: np.ndarray, num_classes: int) -> torch.Tensor:
    """``labels`` with the pixels the brush touched in an editor layer (RGBA, any size: alpha > 0,
    resized to the label map nearest-neighbour) set to ``cls``."""
    if not 0 <= int(cls) < num_classes:
        raise AppInputError(f"class {cls} is outside the model's classes 0..{num_classes - 1}")
    layer = np.asarray(layer)
    touched = layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[-1] == 4 else np.asarray(layer).reshape(
        layer.shape[:2] + (-1,)).max(-1) > 0
    labels = torch.as_tensor(labels).clone().long()
    mask = Image.fromarray(touched.astype(np.uint8) * 255).resize(tuple(labels.shape[::-1]), Image.NEAREST)
    labels[torch.from_numpy(np.asarray(mask) > 0)] = int(cls)
    return labels


def click_to_pixel(xy: Sequence[int], shown: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(row, col) in a label map of ``size`` of a click at (x, y) on an image shown at ``shown`` (H, W)."""
    x, y = int(xy[0]), int(xy[1])
    r = min(max(y * size[0] // max(shown[0], 1), 0), size[0] - 1)
    c = min(max(x * size[1] // max(shown[1], 1), 0), size[1] - 1)
    return r, c


def connected_region(labels: torch.Tensor, point: tuple[int, int]) -> torch.Tensor:
    """bool (H, W): the 4-connected region of the class at ``point`` (row, col) that contains it."""
    from scipy.ndimage import label as components

    labels = torch.as_tensor(labels)
    r, c = int(point[0]), int(point[1])
    H, W = labels.shape
    if not (0 <= r < H and 0 <= c < W):
        raise AppInputError(f"point ({r}, {c}) lies outside the {W}x{H} label map")
    parts, _ = components((labels == labels[r, c]).numpy())
    return torch.from_numpy(parts == parts[r, c])


@dataclass
class Link:
    """One one-to-one link: an exemplar region and a target region (bool (H, W) masks)."""

    exemplar: torch.Tensor
    target: torch.Tensor


def build_links(links: Sequence[Link], target_labels: torch.Tensor, exemplar_labels: torch.Tensor,
                num_classes: int, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """(target_match_labels, exemplar_match_labels) that tie each linked pair only to each other."""
    if not links:
        raise AppInputError("no link yet: click a region of the exemplar, then one of the target")
    return link_regions(target_labels, exemplar_labels, [(k.exemplar, k.target) for k in links], num_classes,
                        ignore_index)


_LINK_COLOURS = [(255, 255, 255), (255, 0, 255), (0, 255, 255), (255, 255, 0), (255, 128, 0)]


def draw_links(picture: np.ndarray, masks: Sequence[torch.Tensor], scale: int = 8) -> np.ndarray:
    """uint8 (H*scale, W*scale, 3): ``picture`` (H, W, 3) upscaled, each mask outlined in its link's
    colour with its number, so the same link reads the same on exemplar and target."""
    H, W = picture.shape[:2]
    big = Image.fromarray(picture).resize((W * scale, H * scale), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    for i, mask in enumerate(masks):
        m = torch.as_tensor(mask).bool()
        colour = _LINK_COLOURS[i % len(_LINK_COLOURS)]
        edge = m & ~(torch.nn.functional.max_pool2d((~m).float()[None, None], 3, 1, 1)[0, 0] == 0)
        for r, c in torch.nonzero(edge).tolist():
            draw.rectangle([c * scale, r * scale, (c + 1) * scale - 1, (r + 1) * scale - 1], outline=colour, width=2)
        rows, cols = torch.nonzero(m, as_tuple=True)
        if rows.numel():
            draw.text((float(cols.float().mean()) * scale, float(rows.float().mean()) * scale), str(i + 1),
                      fill=colour, anchor="mm")
    return np.asarray(big)


# --------------------------------------------------------------------------- generation
def _digest(*tensors: torch.Tensor | None) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(b"none" if t is None else t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class BankCache:
    """Exemplar banks keyed by exemplar (image, labels, match labels) + steps, scheduler and seed: changing
    the target, mode, guidance or strength costs no new inversion. ``builds`` counts inversions."""

    def __init__(self, capacity: int = 4):
        self.capacity, self.builds = capacity, 0
        self._banks: OrderedDict[tuple, object] = OrderedDict()

    def get(self, pipe, image: torch.Tensor, labels: torch.Tensor, steps: int, scheduler: str, seed: int,
            match_labels: torch.Tensor | None = None):
        key = (id(pipe), _digest(image, labels, match_labels), int(steps), scheduler, int(seed))
        if key in self._banks:
            self._banks.move_to_end(key)
            return self._banks[key]
        banks = pipe.build_banks(image[None], labels[None], steps, seed=seed,
                                 match_labels=None if match_labels is None else match_labels[None])
        self.builds += 1
        self._banks[key] = banks
        while len(self._banks) > self.capacity:
            self._banks.popitem(last=False)
        return banks


def use_scheduler(pipe, name: str) -> None:
    """Put the named sampler (SCHEDULERS) on the pipeline, on its own noise schedule."""
    if name not in SCHEDULERS:
        raise AppInputError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    if type(pipe.scheduler) is not SCHEDULERS[name][0]:
        pipe.scheduler = scheduler_by_name(name, pipe.scheduler.config)


@dataclass
class Settings:
    mode: str = "adapter"
    steps: int = 20
    scheduler: str = "ddim"
    guidance: float = 3.0
    strength: float = 1.0
    seed: int = 0


def available_modes(pipe) -> list[str]:
    from amlight.modules.attention_modes import ATTENTION_MODES

    return [m for m in ATTENTION_MODES if pipe.adapter is not None or not AttentionSettings(m).uses_adapter]


def generate(pipe, cache: BankCache, exemplar_image: torch.Tensor, exemplar_labels: torch.Tensor,
             target_labels: torch.Tensor, settings: Settings, *, target_match: torch.Tensor | None = None,
             exemplar_match: torch.Tensor | None = None,
             on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """One image (3, H, W) in [-1, 1]: ``target_labels`` drawn in the exemplar's appearance.
    ``on_step(done, total)`` reports progress after each sampling step."""
    if settings.mode not in available_modes(pipe):
        raise AppInputError(f"mode {settings.mode!r} is not available here; choose one of: "
                            f"{', '.join(available_modes(pipe))}")
    if tuple(exemplar_labels.shape) != tuple(target_labels.shape):
        raise AppInputError(f"the exemplar labels are {tuple(exemplar_labels.shape)} and the target labels "
                            f"{tuple(target_labels.shape)}: they must have the same size")
    use_scheduler(pipe, settings.scheduler)
    attention = AttentionSettings(settings.mode, appearance_strength=float(settings.strength))
    banks = None
    if attention.reads_exemplar:
        banks = cache.get(pipe, exemplar_image, exemplar_labels, settings.steps, settings.scheduler, settings.seed,
                          exemplar_match if attention.needs_labels else None)
    steps = int(settings.steps)

    def step_end(i, t, latents):
        if on_step is not None:
            on_step(i + 1, steps)
        return None

    match = target_match[None] if target_match is not None and attention.needs_labels else None
    return pipe.draw(target_labels[None], banks, attention=attention, guidance_scale=float(settings.guidance),
                     seed=int(settings.seed), steps=steps, target_match_labels=match, on_step_end=step_end)[0]


def modes_side_by_side(pipe, cache: BankCache, exemplar_image, exemplar_labels, target_labels, settings: Settings,
                       on_step: Callable[[int, int], None] | None = None) -> list[tuple[np.ndarray, str]]:
    """[(image, mode)] for every mode the pipeline can draw, same banks and noise."""
    out = []
    for mode in available_modes(pipe):
        one = Settings(**{**settings.__dict__, "mode": mode})
        out.append((show_image(generate(pipe, cache, exemplar_image, exemplar_labels, target_labels, one,
                                        on_step=on_step)), mode))
    return out


# --------------------------------------------------------------------------- looking
def look(pipe, space: LabelSpace, exemplar_image: torch.Tensor, exemplar_labels: torch.Tensor,
         target_labels: torch.Tensor, point: tuple[int, int], modes: Sequence[str] | None = None,
         timestep: int = 500, seed: int = 0, upscale: int = 4) -> tuple[Image.Image, dict]:
    """Where the target pixel ``point`` (row, col) attends in the exemplar: the attention panel with
    one row per layer group (the highest-resolution down layer, the mid layer, the highest-resolution
    up layer) and one heat-map column per mode. Also {mode: {group: same-class share}}."""
    H, W = target_labels.shape
    r, c = int(point[0]), int(point[1])
    if not (0 <= r < H and 0 <= c < W):
        raise AppInputError(f"point ({r}, {c}) lies outside the {W}x{H} target")
    usable = [m for m in (modes or PROBE_MODES) if pipe.adapter is not None or not AttentionSettings(m).uses_adapter]
    batch = {"image": torch.zeros_like(exemplar_image)[None], "labels": target_labels[None],
             "exemplar_image": exemplar_image[None], "exemplar_labels": exemplar_labels[None]}
    layers = default_probe_layers(pipe.model.self_attention_layers)
    results = {m: probe_attention(pipe.model, pipe.backbone, batch, m, adapter=pipe.adapter, timestep=timestep,
                                  layers=layers, seed=seed) for m in usable}
    layers = [layer for layer in layers if all(layer in res.probs for res in results.values())]
    if not layers or not results:
        raise AppInputError("no probed layer reads the exemplar bank: nothing to show")
    n = len(layers)
    heat, shares = {}, {}
    for mode, res in results.items():
        maps = [res.attention_map(layer, 0, (r, c)) for layer in layers]
        heat[mode] = torch.stack([heatmap_overlay(exemplar_image, m) for m in maps])
        shares[mode] = {group_of(layer): float((m * res.cost_map(layer, 0, (r, c))).sum())
                        for layer, m in zip(layers, maps)}
    first = results[usable[0]]
    same = torch.stack([heatmap_overlay(exemplar_image, first.cost_map(layer, 0, (r, c)).float()) for layer in layers])
    what = space.class_name(int(target_labels[r, c]))
    target = draw_marker(colorize(target_labels[None], space.metadata)[0], (r, c)).expand(n, -1, -1, -1)
    figure = attention_panel(
        target, heat, same, exemplar=to_uint8(exemplar_image[None]).expand(n, -1, -1, -1),
        class_header=f"{what} in exemplar",
        row_labels=[f"{group_of(layer)}: {layer_caption(layer, first.size[layer])}" for layer in layers],
        upscale=upscale, title=panel_title(None, None, timestep, what=f"query ({r}, {c}) ({what})"),
    )
    return figure, shares


# --------------------------------------------------------------------------- datasets and retrieval
def dataset_entries(data: str, root: str | Path | None = None, split: str = "val", limit: int = 64):
    """A dataset source by name (or folder) and the names of its first ``limit`` items."""
    from amlight.data.registry import build_dataset

    try:
        source = build_dataset(data, root, split)
    except (ValueError, OSError, KeyError) as e:
        raise AppInputError(f"dataset {data!r}: {str(e).strip().splitlines()[0] if str(e).strip() else e}") from None
    return source, [f"{i}" for i in range(min(len(source), limit))]


def dataset_item(source, index: int, space: LabelSpace, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    from amlight.apps.inputs import resize_labels_nearest

    image, labels = source.load(int(index))
    return resize_image(image, size), resize_labels_nearest(labels, size)


def propose_exemplars(source, target_labels: torch.Tensor, space: LabelSpace, top_k: int = 4, index=None):
    """Indices of the ``top_k`` items of ``source`` whose layouts best fit the target (amlight retrieval),
    and the index (built once from the source's label maps; pass it back to reuse it)."""
    from amlight.apps.retrieval import LabelIndex

    if index is None:
        index = LabelIndex.from_source(source, progress=False)
    matches = index.rank(target_labels.numpy(), top_k=top_k)
    return [m.index for m in matches], index
