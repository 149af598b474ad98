"""Reading what ``generate`` draws from: exemplar images, label maps, region masks, edits, as model-ready tensors.

Every file is decoded with its dataset's palette and settings (:class:`LabelSpace`) and checked
before any model runs: a wrong file is a :class:`~amlight.data.io.DataFileError` naming it, never a
failure half-way through a run. Images are resized bilinearly (antialiased) and label maps and masks
with nearest neighbour only, to the model's size (H, W).

The unit of work is a :class:`Job`: one exemplar, one target label map, one output name, and a
``load()`` that returns the tensors (:class:`JobInputs`). Builders for the three ways of pairing::

    from amlight.pipeline import AMPipeline
    from amlight.apps.inputs import LabelSpace, InputCache, all_pairs, pairs_from_file

    pipe = AMPipeline.from_checkpoints("runs/quickstart/stage1/checkpoints/last.ckpt",
                                       "runs/quickstart/stage2/checkpoints/last.ckpt")
    space = LabelSpace.resolve("data/synthetic")            # palette + decoding of the label files
    cache = InputCache(space, pipe.resolution)
    jobs = pairs_from_file("data/synthetic/val/pairs.json", cache)     # listed pairs
    jobs = all_pairs(["ex.png"], ["ex_labels.png"], ["t1.png", "t2.png"], cache)  # every exemplar x target

and :func:`amlight.apps.outputs.generate_pairs` draws and writes them. The applications
(docs/method.md#part-9-applications) are options of the builders: ``paints=[Paint(...)]`` edits the targets
(segmentation editing: leave the targets out to edit each exemplar's own labels), ``links=[Link(...)]``
pairs an exemplar region with a target region (one-to-one mapping), ``target_images=[...]`` shows the
image a target layout came from (image-to-image translation).
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from amlight.apps.applications import box_mask, link_regions, paint_region
from amlight.data.resize import resize_image, resize_labels_nearest  # noqa: F401 (re-exported)
from amlight.data.datasets.folder import CLASSES_FILE, load_classes_yaml, read_classes_settings
from amlight.data.io import DataFileError, check_pair, load_image, load_labels
from amlight.data.pairing import read_pairs_file
from amlight.data.registry import DatasetMetadata, build_dataset, get_dataset_entry, registered_datasets
from amlight.modules.attention_modes import AttentionSettings


class InputError(ValueError):
    """A problem with what the user asked for (not with one file): bad option values, mismatched counts."""


# --- label space ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSpace:
    """How to read label files: the dataset's classes and colours plus its decoding settings."""

    metadata: DatasetMetadata
    label_format: str = "auto"
    unknown_colors: str = "error"
    id_map: Any = None
    ignore_colors: tuple = ()
    origin: str = ""  # where it came from, for messages

    @property
    def num_classes(self) -> int:
        return self.metadata.num_classes

    @property
    def ignore_index(self) -> int:
        return self.metadata.ignore_index

    def load_labels(self, path: str | Path) -> np.ndarray:
        return load_labels(path, self.metadata, self.label_format, self.unknown_colors, self.id_map,
                           ignore_colors=self.ignore_colors)

    def class_name(self, index: int) -> str:
        names = self.metadata.class_names
        return names[index] if 0 <= index < len(names) else f"#{index}"

    def class_index(self, name_or_index: str | int) -> int:
        """A class by name (case-insensitive) or index; InputError listing the classes otherwise."""
        names = self.metadata.class_names
        text = str(name_or_index).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if 0 <= index < len(names):
                return index
            raise InputError(f"class index {index} is outside 0..{len(names) - 1} of dataset {self.metadata.name!r}")
        lowered = [n.lower() for n in names]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        raise InputError(f"unknown class {text!r}; the classes of {self.metadata.name!r} are: {', '.join(names)}")

    @classmethod
    def from_source(cls, source, origin: str = "") -> "LabelSpace":
        """The decoding a dataset source uses (a :class:`~amlight.data.datasets.folder.FolderSource`)."""
        return cls(
            source.metadata,
            getattr(source, "label_format", "auto"),
            getattr(source, "unknown_colors", "error"),
            getattr(source, "id_map", None),
            tuple(getattr(source, "ignore_colors", ())),
            origin or source.metadata.name,
        )

    @classmethod
    def from_pipeline(cls, label_space, origin: str = "") -> "LabelSpace":
        """The decoding a pipeline folder carries (its ``label_space`` component, a
        :class:`~amlight.pipeline.label_space.PipelineLabelSpace`): no dataset files needed."""
        id_map = getattr(label_space, "id_map", None)
        return cls(
            label_space.metadata,
            getattr(label_space, "label_format", "auto") or "auto",
            getattr(label_space, "unknown_colors", "error") or "error",
            None if id_map is None else tuple(id_map),
            tuple(tuple(c) if isinstance(c, (list, tuple)) else c for c in (getattr(label_space, "ignore_colors", None) or ())),
            origin or label_space.metadata.name,
        )

    @classmethod
    def resolve(cls, data: str, root: str | Path | None = None, split: str | None = None,
                options: dict | None = None) -> "LabelSpace":
        """From a registered dataset name (``cityscapes``; its files are used for the decoding settings
        when present, else its built-in palette) or a folder with ``classes.yaml``."""
        if data not in registered_datasets() and Path(data).is_dir():
            metadata = load_classes_yaml(Path(data) / CLASSES_FILE)
            settings = read_classes_settings(Path(data) / CLASSES_FILE)
            return cls(metadata, settings.get("label_format", "auto"), settings.get("unknown_colors", "error"),
                       None, tuple(settings.get("ignore_colors", ())), str(data))
        entry = get_dataset_entry(data)  # UnknownDatasetError lists the registered names
        for try_split in dict.fromkeys([split or "val", "train"]):
            try:
                source = build_dataset(data, root, try_split, **(options or {}))
            except (DataFileError, ValueError, OSError):
                continue
            return cls.from_source(source, origin=f"{data}" + (f" ({root})" if root else ""))
        if entry.metadata is None:
            raise InputError(f"dataset {data!r} keeps its classes in its folder: pass the folder itself")
        return cls(entry.metadata, origin=data)


def find_run_config(stage1_checkpoint: str | Path) -> Path | None:
    """The ``config.yaml`` Lightning saved for the run that wrote a checkpoint (run/checkpoints/x.ckpt)."""
    ckpt = Path(stage1_checkpoint)
    for folder in (ckpt.parent.parent, ckpt.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def label_space_from_run(stage1_checkpoint: str | Path) -> LabelSpace:
    """The label space of the dataset a stage-1 checkpoint was trained on, from its run's config.yaml."""
    import yaml

    config_path = find_run_config(stage1_checkpoint)
    if config_path is None:
        raise InputError(
            f"cannot tell which dataset the label files belong to: no config.yaml in the run folder of "
            f"{stage1_checkpoint}; pass --data NAME_OR_DIR (a registered dataset or a folder with classes.yaml)"
        )
    try:
        config = yaml.safe_load(config_path.read_text()) or {}
        data = (config.get("data") or {}).get("init_args") or {}
    except (yaml.YAMLError, AttributeError, OSError) as e:
        raise InputError(f"cannot read the run config {config_path} ({e}); pass --data NAME_OR_DIR") from None
    dataset = data.get("dataset")
    if not dataset:
        raise InputError(f"the run config {config_path} names no dataset (data.init_args.dataset); pass --data")
    root = data.get("root")
    if root is not None and not Path(root).exists():
        root = None  # trained from another working directory: the registered palette still applies
    try:
        return LabelSpace.resolve(str(dataset), root, data.get("val_split") or "val", data.get("dataset_options"))
    except (InputError, DataFileError, KeyError) as e:
        raise InputError(f"the run config {config_path} names dataset {dataset!r}, which cannot be read here "
                         f"({e}); pass --data NAME_OR_DIR") from None


# --- resizing ---------------------------------------------------------------------------------


def resize_mask(mask: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return resize_labels_nearest(torch.as_tensor(np.asarray(mask)).to(torch.uint8), size).bool()


# --- edits and links (docs/method.md#part-9-applications) -------------------------------------------------------


@dataclass(frozen=True)
class Paint:
    """Segmentation editing: set class ``cls`` inside the box (x0, y0, x1, y1) of the target label map,
    in the label file's own pixel coordinates."""

    cls: int
    box: tuple[int, int, int, int]

    def apply(self, labels: np.ndarray) -> np.ndarray:
        mask = box_mask(tuple(labels.shape[-2:]), self.box)
        out = paint_region(torch.as_tensor(labels), self.cls, torch.as_tensor(mask))
        return np.asarray(out.cpu().numpy() if isinstance(out, torch.Tensor) else out, dtype=np.int64)

    def describe(self, space: LabelSpace) -> str:
        return f"{space.class_name(self.cls)}@{','.join(map(str, self.box))}"


def parse_paint(spec: str, space: LabelSpace) -> Paint:
    """``CLASS@x0,y0,x1,y1`` (CLASS by name or index)."""
    cls_text, at, box_text = spec.rpartition("@")
    if not at or not cls_text:
        raise InputError(f"--paint {spec!r}: expected CLASS@x0,y0,x1,y1 (e.g. car@4,10,20,24)")
    try:
        box = tuple(int(v) for v in box_text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise InputError(f"--paint {spec!r}: the box must be four integers x0,y0,x1,y1, got {box_text!r}")
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"--paint {spec!r}: the box is empty (needs x1 > x0 and y1 > y0)")
    return Paint(space.class_index(cls_text), box)  # type: ignore[arg-type]


@dataclass(frozen=True)
class MaskSpec:
    """A region: a mask PNG (non-zero pixels) or one instance of an instance PNG (``path#ID``)."""

    path: Path
    instance: int | None = None

    def __str__(self) -> str:
        return f"{self.path}" + ("" if self.instance is None else f"#{self.instance}")

    @classmethod
    def parse(cls, text: str) -> "MaskSpec":
        path, hash_, ident = text.rpartition("#")
        if hash_ and ident.strip().lstrip("-").isdigit():
            return cls(Path(path), int(ident))
        return cls(Path(text))

    def load(self) -> np.ndarray:
        """bool (H, W) at the file's own size; DataFileError when missing, unreadable or empty.

        Without an id the region is every non-zero pixel (or, in a file with transparency, every
        pixel that is not fully transparent); with ``#ID`` the pixels whose value is ID (single-channel
        and palette files: the raw value; RGB files: grey level, or 0xRRGGBB for colours)."""
        from PIL import Image

        if not self.path.is_file():
            raise DataFileError(self.path, "file does not exist" if not self.path.exists() else "is not a file",
                                "Check the path of the mask", kind="missing file")
        alpha = None
        try:
            with Image.open(self.path) as img:
                img.load()
                if img.mode in ("1", "L", "P", "F") or img.mode.startswith("I"):
                    values = np.asarray(img).astype(np.int64)
                else:
                    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
                        alpha = np.asarray(img.getchannel("A"))
                    rgb = np.asarray(img.convert("RGB")).astype(np.int64)
                    grey = bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))
                    values = rgb[..., 0] if grey else (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        except (OSError, ValueError, SyntaxError) as e:
            raise DataFileError(self.path, f"cannot be decoded as an image ({type(e).__name__}: {e})",
                                kind="unreadable file") from None
        if self.instance is None:
            mask = alpha > 0 if alpha is not None and (alpha < 255).any() else values != 0
            if not mask.any():
                raise DataFileError(self.path, "mask is empty (no non-zero pixel)",
                                    "Mark the region with non-zero pixels, or give INSTANCE_PNG#ID", kind="bad mask")
        else:
            mask = values == self.instance
            if not mask.any():
                present = np.unique(values)
                listed = ", ".join(map(str, present[:12])) + (" ..." if present.size > 12 else "")
                raise DataFileError(self.path, f"no pixel has instance id {self.instance}",
                                    f"Ids in this file: {listed}", kind="bad mask")
        return mask


@dataclass(frozen=True)
class Link:
    """One-to-one mapping: the exemplar region ``exemplar`` lends its appearance to the target region ``target``."""

    exemplar: MaskSpec
    target: MaskSpec

    def __str__(self) -> str:
        return f"{self.exemplar}:{self.target}"


def parse_link(spec: str) -> Link:
    """``EX_MASK:TGT_MASK``; each side a mask PNG or ``INSTANCE_PNG#ID``."""
    parts = spec.split(":")
    if len(parts) != 2 or not all(parts):
        raise InputError(f"--link {spec!r}: expected EXEMPLAR_MASK:TARGET_MASK (each a PNG or INSTANCE_PNG#ID)")
    return Link(MaskSpec.parse(parts[0]), MaskSpec.parse(parts[1]))


# --- loading with a cache -----------------------------------------------------------------------


class InputCache:
    """Decodes, checks and resizes input files to ``size``, remembering the last ``capacity`` results."""

    def __init__(self, space: LabelSpace, size: tuple[int, int], capacity: int = 64):
        self.space = space
        self.size = (int(size[0]), int(size[1]))
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()
        self.aspect_warnings: list[str] = []

    def _cached(self, key, make):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self._items[key] = value
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value

    def _note_aspect(self, path, shape) -> None:
        h, w = shape[:2]
        th, tw = self.size
        if abs((w / h) / (tw / th) - 1) > 0.01 and not self.aspect_warnings:
            self.aspect_warnings.append(
                f"{path} is {w}x{h} (WxH) and is resized to {tw}x{th}, which changes its aspect ratio; "
                "pass --size H W to keep it"
            )

    def raw_labels(self, path: str | Path) -> np.ndarray:
        return self._cached(("raw_labels", str(path)), lambda: self.space.load_labels(path))

    def raw_image(self, path: str | Path) -> np.ndarray:
        return self._cached(("raw_image", str(path)), lambda: load_image(path))

    def exemplar(self, image_path: str | Path, label_path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
        """(image (3, H, W) in [-1, 1], labels (H, W) int64) of an exemplar, its two files checked together."""
        def make():
            image, labels = self.raw_image(image_path), self.raw_labels(label_path)
            check_pair(image, labels, image_path, label_path)
            self._note_aspect(image_path, image.shape)
            return resize_image(image, self.size), resize_labels_nearest(labels, self.size)

        return self._cached(("exemplar", str(image_path), str(label_path)), make)

    def target(self, label_path: str | Path, paints: Sequence[Paint] = ()) -> torch.Tensor:
        """Target labels (H, W) int64, after the edits in ``paints`` (in the file's pixel coordinates)."""
        def make():
            labels = self.raw_labels(label_path)
            self._note_aspect(label_path, labels.shape)
            for paint in paints:
                try:
                    labels = paint.apply(labels)
                except ValueError as e:
                    raise InputError(f"--paint {paint.describe(self.space)} on {label_path}: {e}") from None
            return resize_labels_nearest(labels, self.size)

        return self._cached(("target", str(label_path), tuple(paints)), make)

    def target_image(self, image_path: str | Path, label_path: str | Path) -> torch.Tensor:
        def make():
            image = self.raw_image(image_path)
            check_pair(image, self.raw_labels(label_path), image_path, label_path)
            return resize_image(image, self.size)

        return self._cached(("target_image", str(image_path), str(label_path)), make)

    def mask(self, spec: MaskSpec, like: str | Path) -> torch.Tensor:
        """A region mask resized to the model size; it must have the size of the label file ``like``."""
        def make():
            mask = spec.load()
            labels = self.raw_labels(like)
            if mask.shape != labels.shape[:2]:
                raise DataFileError(spec.path, f"mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but the label map "
                                    f"{like} it marks a region of is {labels.shape[1]}x{labels.shape[0]}",
                                    "Draw the mask on the same pixel grid as that label map", kind="size mismatch")
            small = resize_mask(mask, self.size)
            if not small.any():
                raise DataFileError(spec.path, f"the region vanishes at the model's size {self.size[1]}x{self.size[0]}",
                                    "Mark a larger region", kind="bad mask")
            return small

        return self._cached(("mask", str(spec), str(like)), make)


# --- jobs -------------------------------------------------------------------------------------


@dataclass
class JobInputs:
    """The tensors of one job, at the model's size."""

    exemplar_image: torch.Tensor  # (3, H, W) in [-1, 1]
    exemplar_labels: torch.Tensor  # (H, W) int64
    target_labels: torch.Tensor  # (H, W) int64
    target_image: torch.Tensor | None = None  # (3, H, W): the image the target layout came from, if any
    exemplar_match: torch.Tensor | None = None  # one-to-one mapping: what the categorical cost compares
    target_match: torch.Tensor | None = None


@dataclass
class Job:
    """One output: the exemplar ``exemplar`` (its identity: jobs with equal ones share its banks), the
    target ``target``, the output file stem ``name``, and ``load()`` for the tensors."""

    name: str
    exemplar: str
    target: str
    load: Callable[[], JobInputs]
    info: dict = field(default_factory=dict)  # extra fields for summary.json

    def bank_key(self, inputs: JobInputs) -> tuple:
        """Jobs with equal keys can share one set of exemplar banks."""
        if inputs.exemplar_match is None:
            return (self.exemplar,)
        digest = hashlib.sha1(inputs.exemplar_match.cpu().numpy().tobytes()).hexdigest()
        return (self.exemplar, digest)


def output_stem(exemplar_stem: str, target_stem: str, attention: AttentionSettings = AttentionSettings()) -> str:
    """``<exemplar>__<target>`` plus ``__<mode>`` for the ablation modes (those without the adapter)."""
    return f"{exemplar_stem}__{target_stem}" + ("" if attention.uses_adapter else f"__{attention.mode}")


def _link_loader(base: Callable[[], JobInputs], cache: InputCache, links: Sequence[Link],
                 exemplar_labels_path, target_labels_path) -> Callable[[], JobInputs]:
    if not links:
        return base

    def load() -> JobInputs:
        inputs = base()
        pairs = [(cache.mask(link.exemplar, exemplar_labels_path), cache.mask(link.target, target_labels_path))
                 for link in links]
        target_match, exemplar_match = link_regions(
            inputs.target_labels, inputs.exemplar_labels, pairs, cache.space.num_classes, cache.space.ignore_index,
        )
        inputs.target_match, inputs.exemplar_match = torch.as_tensor(target_match), torch.as_tensor(exemplar_match)
        return inputs

    return load


def make_job(cache: InputCache, exemplar_image, exemplar_labels, target_labels, *, target_image=None,
             paints: Sequence[Paint] = (), links: Sequence[Link] = (),
             attention: AttentionSettings = AttentionSettings(), target_stem: str | None = None,
             info: dict | None = None) -> Job:
    """A job drawing label file ``target_labels`` in the appearance of ``exemplar_image``/``exemplar_labels``."""
    exemplar_image, exemplar_labels, target_labels = Path(exemplar_image), Path(exemplar_labels), Path(target_labels)
    target_image = None if target_image is None else Path(target_image)
    paints = tuple(paints)
    if target_stem is None:
        target_stem = target_labels.stem + ("_edited" if paints else "")

    def base() -> JobInputs:
        ex_img, ex_lab = cache.exemplar(exemplar_image, exemplar_labels)
        return JobInputs(
            ex_img, ex_lab, cache.target(target_labels, paints),
            None if target_image is None else cache.target_image(target_image, target_labels),
        )

    record = {"exemplar": str(exemplar_image), "exemplar_labels": str(exemplar_labels),
              "target_labels": str(target_labels)}
    if target_image is not None:
        record["target_image"] = str(target_image)
    if paints:
        record["paint"] = [p.describe(cache.space) for p in paints]
    if links:
        record["links"] = [str(link) for link in links]
    record.update(info or {})
    return Job(output_stem(exemplar_image.stem, target_stem, attention), str(exemplar_image), str(target_labels),
               _link_loader(base, cache, links, exemplar_labels, target_labels), record)


def all_pairs(exemplar_images: Sequence, exemplar_labels: Sequence, target_labels: Sequence, cache: InputCache, *,
              target_images: Sequence | None = None, paints: Sequence[Paint] = (), links: Sequence[Link] = (),
              attention: AttentionSettings = AttentionSettings()) -> list[Job]:
    """Every exemplar with every target (grouped by exemplar). No targets: each exemplar with its own
    labels (after ``paints``: segmentation editing)."""
    if len(exemplar_images) != len(exemplar_labels):
        raise InputError(f"{len(exemplar_images)} exemplar image(s) but {len(exemplar_labels)} exemplar label "
                         "file(s): give one label file per exemplar image, in the same order")
    if target_images is not None and len(target_images) != len(target_labels):
        raise InputError(f"{len(target_images)} target image(s) for {len(target_labels)} target label file(s): "
                         "give one per target label file, in the same order")
    jobs = []
    for ex_img, ex_lab in zip(exemplar_images, exemplar_labels):
        if not target_labels:  # editing: the exemplar's own layout, edited, in its own appearance
            jobs.append(make_job(cache, ex_img, ex_lab, ex_lab, target_image=ex_img, paints=paints, links=links,
                                 attention=attention, target_stem=Path(ex_lab).stem + "_edited"))
            continue
        for k, tgt in enumerate(target_labels):
            jobs.append(make_job(cache, ex_img, ex_lab, tgt, paints=paints, links=links, attention=attention,
                                 target_image=None if target_images is None else target_images[k]))
    return jobs


def pairs_from_file(path: str | Path, cache: InputCache, *, paints: Sequence[Paint] = (),
                    links: Sequence[Link] = (), attention: AttentionSettings = AttentionSettings()) -> list[Job]:
    """The pairs of a pairs JSON (see :func:`amlight.data.pairing.read_pairs_file`); ``ground_truth``,
    when given, is shown as the target image in triplets."""
    return [make_job(cache, p.exemplar, p.exemplar_labels, p.target_labels, target_image=p.ground_truth,
                     paints=paints, links=links, attention=attention) for p in read_pairs_file(path)]


def retrieved_pairs(target_labels: Sequence, index, cache: InputCache, top_k: int = 1, *,
                    target_images: Sequence | None = None, paints: Sequence[Paint] = (),
                    attention: AttentionSettings = AttentionSettings()) -> list[Job]:
    """Each target with its ``top_k`` exemplars from ``index`` (a retrieval ``LabelIndex``); the target's
    own scene (same name) is never its exemplar."""
    if target_images is not None and len(target_images) != len(target_labels):
        raise InputError(f"{len(target_images)} target image(s) for {len(target_labels)} target label file(s)")
    jobs = []
    for k, tgt in enumerate(target_labels):
        tgt = Path(tgt)
        labels = cache.raw_labels(tgt)
        for paint in paints:
            try:
                labels = paint.apply(labels)
            except ValueError as e:
                raise InputError(f"--paint {paint.describe(cache.space)} on {tgt}: {e}") from None
        own = os.path.abspath(tgt)  # the target's own scene, whatever the database calls it
        exclude = {tgt.stem} | {name for name, path in zip(index.names, index.label_paths)
                                if path and os.path.abspath(path) == own}
        matches = index.rank(labels, top_k, exclude=sorted(exclude))
        if not matches:
            raise InputError(f"retrieval found no exemplar for {tgt}")
        for rank, m in enumerate(matches):
            info = {"retrieval": {"rank": rank + 1, "name": m.name, "score": float(m.score),
                                  "coverage": float(m.coverage),
                                  "missing_classes": [cache.space.class_name(int(c)) for c in m.missing_classes]}}
            jobs.append(make_job(cache, m.image_path, m.label_path, tgt, paints=paints, attention=attention,
                                 target_image=None if target_images is None else target_images[k], info=info))
    return jobs


def check_jobs(jobs: Sequence[Job]) -> None:
    """Load every job once, so that any bad file fails now (DataFileError naming it), and refuse two
    different jobs that would write the same output."""
    seen: dict[str, Job] = {}
    for job in jobs:
        other = seen.get(job.name)
        if other is not None and (other.exemplar, other.target, other.info) != (job.exemplar, job.target, job.info):
            raise InputError(
                f"two pairs would write the same output {job.name}.png: {other.exemplar} + {other.target} and "
                f"{job.exemplar} + {job.target} (files with equal names in different folders); rename one"
            )
        seen[job.name] = job
        job.load()


def dedupe(jobs: Sequence[Job]) -> list[Job]:
    """Jobs without repeats (same output name), in order."""
    out: dict[str, Job] = {}
    for job in jobs:
        out.setdefault(job.name, job)
    return list(out.values())
