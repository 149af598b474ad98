"""What ``notebooks/quickstart.ipynb`` does, kept here so the notebook stays a few short cells.

- :func:`quickstart_checkpoints`: the ``make demo`` checkpoints, or tiny untrained stand-ins written
  to a temporary folder when they are missing (a clean clone, CI), so the notebook always runs;
- :func:`ensure_data` / :func:`load_val_pairs`: the synthetic validation pairs as one batch;
- :func:`compare_modes`, :func:`attention_figure`, :func:`edit_box_on_class`: the notebook's steps;
- :func:`panel`: PIL images with column headers (no matplotlib needed), which Jupyter displays inline.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from amlight.checkpoints.adapter_files import export_adapter
from amlight.data.datasets.synthetic import synthetic_pairs_file
from amlight.data.pairing import PairDataset, read_pairs_file
from amlight.data.registry import DatasetMetadata, build_dataset
from amlight.data.synthetic import SYNTHETIC_METADATA, ensure_synthetic_dataset, read_manifest
from amlight.modules.attention_modes import ATTENTION_MODES, AttentionSettings
from amlight.stages import AdapterStage, GenerationStage
from amlight.apps.attention_probe import (
    PROBE_MODES,
    choose_query_points,
    default_probe_layers,
    draw_marker,
    heatmap_overlay,
    probe_attention,
    short_layer_name,
)
from amlight.apps.attention_panel import attention_panel, layer_caption, panel, panel_title
from amlight.utils.visualize import colorize, to_uint8

QUICKSTART_STAGE1 = "runs/quickstart/stage1/checkpoints/last.ckpt"
QUICKSTART_STAGE2 = "runs/quickstart/stage2/checkpoints/last.ckpt"
DEFAULT_DATA_ROOT = "data/synthetic"
# configs/quickstart/stage2.yaml's adapter, so a stand-in has the trained one's shape.
QUICKSTART_ADAPTER = {"adapter_channels": 8, "adapter_layers": 3, "max_resolution": 8}
BATCH_KEYS = ("image", "labels", "exemplar_image", "exemplar_labels")


# --------------------------------------------------------------------------- where things are
def find_repo_root(start: str | Path | None = None) -> Path:
    """The repository root (the folder with ``configs/quickstart``) at or above ``start`` (default: the
    working directory), so the notebook finds ``runs/`` and ``data/`` whether Jupyter was started in
    the repository or in ``notebooks/``. Falls back to ``start`` itself."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "configs" / "quickstart").is_dir() and (folder / "amlight").is_dir():
            return folder
    return start


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's "GPU available: ..." banner while a stand-in checkpoint is written."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _save_through_lightning(module, path: Path) -> Path:
    import lightning as L

    with _quiet_lightning():
        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, max_steps=0, accelerator="cpu", devices=1)
        trainer.strategy.connect(module)
        trainer.save_checkpoint(path)
    return path


def build_standin_checkpoints(folder: str | Path, num_classes: int, stage1: str | Path | None = None,
                              seed: int = 0) -> tuple[Path, Path]:
    """Untrained checkpoints with the quickstart's shapes: ``(stage1.ckpt, adapter.safetensors)``.

    ``stage1`` given: only the adapter is a stand-in, built on that stage-1 checkpoint. Both are
    written as training writes them (through a Lightning Trainer), the adapter then exported with
    :func:`~amlight.checkpoints.adapter_files.export_adapter`, so they load exactly like real ones.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if stage1 is None:
            stage1 = _save_through_lightning(GenerationStage(num_classes=num_classes, backbone="tiny"),
                                             folder / "stage1.ckpt")
        stage2 = AdapterStage(str(stage1), num_classes=num_classes, **QUICKSTART_ADAPTER)
        stage2_ckpt = _save_through_lightning(stage2, folder / "stage2.ckpt")
    return Path(stage1), export_adapter(stage2_ckpt, folder / "adapter.safetensors")


def quickstart_checkpoints(stage1: str | Path = QUICKSTART_STAGE1, stage2: str | Path = QUICKSTART_STAGE2,
                           num_classes: int | None = None, standin_dir: str | Path | None = None,
                           ) -> tuple[Path, Path, bool]:
    """``(stage1, adapter, is_standin)``: the given checkpoints if they exist, else untrained stand-ins.

    ``stage2`` is a stage-2 checkpoint or an exported adapter file. When the stage-1 checkpoint
    exists but the adapter does not, only the adapter is a stand-in. ``num_classes`` (needed for a
    stand-in stage 1) defaults to the synthetic dataset's. Says on stdout which it uses.
    """
    stage1, stage2 = Path(stage1), Path(stage2)
    if stage1.is_file() and stage2.is_file():
        print(f"using the trained quickstart checkpoints:\n  stage 1: {stage1}\n  stage 2: {stage2}")
        return stage1, stage2, False
    if num_classes is None:
        num_classes = SYNTHETIC_METADATA.num_classes
    missing = [str(p) for p in (stage1, stage2) if not p.is_file()]
    print("checkpoint(s) not found: " + ", ".join(missing))
    if stage1.is_file():
        print("train them with `make demo`; using an untrained stand-in adapter on the trained stage 1 so the "
              "notebook still runs (the 'adapter' results will be poor)")
    else:
        print("train them with `make demo`; using tiny untrained stand-ins so the notebook still runs "
              "(the pictures below will be noise, not scenes)")
    folder = Path(standin_dir) if standin_dir is not None else Path(tempfile.mkdtemp(prefix="amlight-notebook-"))
    start = time.perf_counter()
    s1, adapter = build_standin_checkpoints(folder, num_classes, stage1=stage1 if stage1.is_file() else None)
    print(f"stand-ins written in {time.perf_counter() - start:.1f} s:\n  stage 1: {s1}\n  adapter: {adapter}")
    return s1, adapter, True


# --------------------------------------------------------------------------- data
def ensure_data(root: str | Path = DEFAULT_DATA_ROOT) -> Path:
    """``root`` with a synthetic dataset in it: the one there, however generated, else a fresh one
    with the default parameters (what ``make demo`` trains on; about 10 s)."""
    root = Path(root)
    if read_manifest(root) is None:
        print(f"no synthetic dataset in {root}: generating it ...")
        ensure_synthetic_dataset(root, progress=False)
    return root


def load_val_pairs(root: str | Path, indices: Sequence[int], size: tuple[int, int] = (32, 32),
                   ) -> tuple[dict, DatasetMetadata]:
    """The listed validation pairs ``indices`` (rows of ``ROOT/val/pairs.json``) as one batch.

    Batch: image (the target's ground truth) and exemplar_image (N, 3, H, W) in [-1, 1], labels and
    exemplar_labels (N, H, W), name (list). Also returns the dataset's metadata (class names, colours).
    """
    source = build_dataset("synthetic", root=root, split="val")
    pairs = read_pairs_file(synthetic_pairs_file(root))
    bad = [i for i in indices if not 0 <= int(i) < len(pairs)]
    if bad or not indices:
        raise ValueError(f"pair indices {list(indices)}: {root} has validation pairs 0..{len(pairs) - 1}")
    dataset = PairDataset(source, "listed", tuple(size), augment=False, pairs=pairs)
    items = [dataset[int(i)] for i in indices]
    batch = {key: torch.stack([item[key] for item in items]) for key in BATCH_KEYS}
    batch["name"] = [item["name"] for item in items]
    return batch, source.metadata


def class_name(metadata: DatasetMetadata, cls: int) -> str:
    return metadata.class_names[cls] if 0 <= cls < metadata.num_classes else f"label {cls}"


def class_index(metadata: DatasetMetadata, name: str) -> int:
    if name not in metadata.class_names:
        raise ValueError(f"no class {name!r}; classes: {', '.join(metadata.class_names)}")
    return metadata.class_names.index(name)


# --------------------------------------------------------------------------- pictures
def triplet_panel(batch: dict, result: torch.Tensor, metadata: DatasetMetadata | None = None, upscale: int = 4,
                  result_header: str = "result", title: str | None = None) -> Image.Image:
    """exemplar | target labels | result | ground truth, one row per pair."""
    return panel(
        [to_uint8(batch["exemplar_image"]), colorize(batch["labels"], metadata), to_uint8(result),
         to_uint8(batch["image"])],
        ["exemplar", "target labels", result_header, "ground truth"], row_labels=batch.get("name"),
        upscale=upscale, title=title,
    )


# --------------------------------------------------------------------------- modes
def compare_modes(pipe, batch: dict, banks, modes: Sequence[str] = ATTENTION_MODES, seed: int = 0,
                  guidance_scale: float = 3.0, done: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``{mode: images (N, 3, H, W)}``: the same targets, banks and starting noise in every mode, so
    the pictures differ only by how the generation branch reads the exemplar. ``done``: images already
    drawn with these banks, seed and guidance (not drawn again). ``adapter`` is left out (with a note)
    when the pipeline has none."""
    images = {}
    for attention in map(AttentionSettings, modes):
        mode = attention.mode
        if done is not None and mode in done:
            images[mode] = done[mode]
            print(f"{mode:<15} (drawn above)")
            continue
        if attention.uses_adapter and pipe.adapter is None:
            print("adapter: skipped (the pipeline has no adapter)")
            continue
        start = time.perf_counter()
        images[mode] = pipe.draw(batch["labels"], banks, attention=attention, guidance_scale=guidance_scale, seed=seed)
        print(f"{mode:<15} {time.perf_counter() - start:5.1f} s")
    return images


def modes_panel(batch: dict, images: dict[str, torch.Tensor], metadata: DatasetMetadata | None = None,
                upscale: int = 4, title: str | None = None) -> Image.Image:
    """exemplar | target labels | one column per mode | ground truth."""
    columns = [to_uint8(batch["exemplar_image"]), colorize(batch["labels"], metadata)]
    columns += [to_uint8(img) for img in images.values()]
    columns.append(to_uint8(batch["image"]))
    headers = ["exemplar", "target labels", *images, "ground truth"]
    return panel(columns, headers, row_labels=batch.get("name"), upscale=upscale, title=title)


# --------------------------------------------------------------------------- attention
def suggest_points(labels: torch.Tensor, metadata: DatasetMetadata | None = None, ignore_index: int = 255) -> str:
    """One line per class present in ``labels`` (H, W): a point deep inside it, to try as the query."""
    points = choose_query_points(labels, ignore_index=ignore_index, max_points=64)
    name = (lambda c: class_name(metadata, c)) if metadata is not None else str
    return "\n".join(f"  {name(cls):<14} ({row}, {col})" for row, col, cls in points)


def _check_point(point, size: tuple[int, int]) -> tuple[int, int]:
    r, c = (int(v) for v in point)
    if not (0 <= r < size[0] and 0 <= c < size[1]):
        raise ValueError(f"point {tuple(point)} lies outside the {size[0]}x{size[1]} target (rows, cols)")
    return r, c


def attention_figure(pipe, batch: dict, sample: int, point: tuple[int, int], metadata: DatasetMetadata | None = None,
                     modes: Sequence[str] = PROBE_MODES, timestep: int = 500, layers: Sequence[str] | None = None,
                     seed: int = 0, upscale: int = 4) -> tuple[Image.Image, str]:
    """Where the target pixel ``point`` (row, col) of pair ``sample`` attends in its exemplar.

    One generation step at ``timestep`` (:func:`~amlight.apps.attention_probe.probe_attention`)
    per mode. Rows: self-attention layers (by default the highest-resolution down layer, the mid
    layer and the highest-resolution up layer). Columns: the target labels with the point marked,
    the exemplar, one heat map per mode, and the exemplar positions of the point's class (what the
    categorical cost allows). Returns the figure and a table: per mode and layer, the share of the
    point's exemplar attention that lands on its own class.
    """
    labels = batch["labels"][sample]
    point = _check_point(point, tuple(labels.shape[-2:]))
    one = {key: batch[key][sample:sample + 1] for key in BATCH_KEYS}
    layers = list(layers or default_probe_layers(pipe.model.self_attention_layers))
    attentions = [a for a in map(AttentionSettings, modes) if not a.uses_adapter or pipe.adapter is not None]
    modes = [a.mode for a in attentions]
    results = {
        a.mode: probe_attention(pipe.model, pipe.backbone, one, a, adapter=pipe.adapter, timestep=timestep,
                                layers=layers, seed=seed)
        for a in attentions
    }
    layers = [layer for layer in layers if all(layer in r.probs for r in results.values())]
    if not layers:
        raise ValueError("none of the probed layers reads the exemplar bank")
    exemplar = batch["exemplar_image"][sample]
    target = draw_marker(colorize(labels[None], metadata)[0], point)
    n = len(layers)
    heat, rows = {}, []
    for mode in modes:
        maps = [results[mode].attention_map(layer, 0, point) for layer in layers]
        heat[mode] = torch.stack([heatmap_overlay(exemplar, m) for m in maps])
        for layer, m in zip(layers, maps):
            same = float((m * results[mode].cost_map(layer, 0, point)).sum())
            rows.append((mode, layer, same))
    first = results[modes[0]]
    same_class = torch.stack([heatmap_overlay(exemplar, first.cost_map(layer, 0, point).float()) for layer in layers])
    cls = int(labels[point])
    what = class_name(metadata, cls) if metadata is not None else f"class {cls}"
    figure = attention_panel(
        target.expand(n, -1, -1, -1), heat, same_class, exemplar=to_uint8(exemplar[None]).expand(n, -1, -1, -1),
        class_header=f"{what} in exemplar", row_labels=[layer_caption(layer, first.size[layer]) for layer in layers],
        upscale=upscale, title=panel_title(None, None, timestep, what=f"query {point} ({what})"),
    )
    table = [f"share of the point's exemplar attention on {what} (row: mode, column: layer)",
             f"{'':<12}" + "".join(f"{short_layer_name(layer):>14}" for layer in layers)]
    for mode in modes:
        values = [s for m, _, s in rows if m == mode]
        table.append(f"{mode:<12}" + "".join(f"{v:>14.2f}" for v in values))
    return figure, "\n".join(table)


# --------------------------------------------------------------------------- editing
def edit_box_on_class(labels: torch.Tensor, on_class: int, box_hw: tuple[int, int] = (6, 9), margin: int = 2,
                      prefer: tuple[float, float] = (0.8, 0.5)) -> tuple[int, int, int, int]:
    """A box ``(x0, y0, x1, y1)`` of ``box_hw`` (rows, cols) pixels on ``on_class`` in ``labels`` (H, W),
    clear of other objects: among the positions where the box grown by ``margin`` pixels holds the
    largest share of that class, the one whose centre is nearest the relative position ``prefer``
    (row, col); by default low and central, i.e. on the road in front of the camera."""
    labels = torch.as_tensor(labels)
    H, W = labels.shape[-2:]
    bh, bw = min(int(box_hw[0]), H), min(int(box_hw[1]), W)
    m = max(0, min(int(margin), (H - bh) // 2, (W - bw) // 2))
    mask = (labels == on_class).float()[None, None]
    if not bool(mask.any()):
        raise ValueError(f"the label map has no pixel of class {on_class} to paint on")
    # share of the class in the grown box whose top-left corner is (y, x)
    share = F.avg_pool2d(mask, (bh + 2 * m, bw + 2 * m), stride=1)[0, 0]
    ys, xs = torch.nonzero(share >= share.max() - 1e-6, as_tuple=True)
    cy, cx = ys.float() + m + bh / 2, xs.float() + m + bw / 2
    best = torch.argmin((cy - prefer[0] * H) ** 2 + (cx - prefer[1] * W) ** 2)
    y0, x0 = int(ys[best]) + m, int(xs[best]) + m
    return x0, y0, x0 + bw, y0 + bh


def edit_panel(image: torch.Tensor, labels: torch.Tensor, edited: torch.Tensor, redrawn: torch.Tensor,
               metadata: DatasetMetadata | None = None, upscale: int = 4) -> Image.Image:
    """original | labels | edited labels | redrawn (unedited labels) | redrawn (edited labels), for one
    image (3, H, W), its labels and edited labels (H, W) and the two redrawn images (2, 3, H, W)."""
    return panel(
        [to_uint8(image[None]), colorize(labels[None], metadata), colorize(edited[None], metadata),
         to_uint8(redrawn[:1]), to_uint8(redrawn[1:2])],
        ["original", "labels", "edited labels", "redrawn", "redrawn, edited"], upscale=upscale,
    )
