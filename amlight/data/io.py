"""Reading images and label maps, with errors that say which file is wrong and what to do about it.

Everything that decodes a dataset file goes through here, so a broken file fails the same way
whether it is hit by training, by ``data check`` or by retrieval.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from amlight.data.registry import DatasetMetadata

LABEL_FORMATS = ("auto", "index", "color")
UNKNOWN_COLOR_POLICIES = ("error", "ignore")

# How many distinct offending values an error message lists; more would bury the first ones.
_MAX_LISTED = 5


class DataFileError(ValueError):
    """A dataset file is missing, unreadable or holds values the dataset does not define.

    ``path`` is the file at fault (for pairs, the label file), ``problem`` what is wrong with it,
    ``fix`` what to do, ``kind`` a short category that ``data check`` groups problems by.
    """

    def __init__(self, path: str | Path, problem: str, fix: str = "", kind: str = "bad file"):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        self.kind = kind
        message = f"{self.path}: {problem}"
        if fix:
            message += f". {fix}"
        super().__init__(message)

    @property
    def detail(self) -> str:
        """The message without the path, for reports that already show the path."""
        return f"{self.problem}. {self.fix}" if self.fix else self.problem


@contextmanager
def _open_image(path: str | Path) -> Iterator[Image.Image]:
    path = Path(path)
    if not path.exists():
        raise DataFileError(path, "file does not exist", "Check the path, or remove the entry that refers to it",
                            kind="missing file")
    if path.is_dir():
        raise DataFileError(path, "is a directory, not an image file", "Point to an image file inside it",
                            kind="missing file")
    try:
        img = Image.open(path)
        # Image.open only reads the header; decoding here makes truncated files fail now, with the
        # file name attached, rather than later inside a DataLoader worker.
        img.load()
    except Image.DecompressionBombError as exc:
        raise DataFileError(path, f"image is too large to decode safely ({exc})",
                            "Downscale the file, or raise PIL.Image.MAX_IMAGE_PIXELS if it is genuine",
                            kind="unreadable file") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataFileError(path, f"cannot be decoded as an image ({type(exc).__name__}: {exc})",
                            "The file is corrupt or truncated: re-download or re-export it",
                            kind="unreadable file") from exc
    try:
        yield img
    finally:
        img.close()


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth single-channel pixels to 8 bit."""
    values = values.astype(np.float64) if mode == "F" else values.astype(np.int64)
    if mode == "F":
        # Float images are stored either normalised to [0, 1] or in 8-bit units.
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(values) * scale + 0.5, 0, 255).astype(np.uint8)
    if mode.startswith("I;16"):
        return ((values * 255 + 32767) // 65535).astype(np.uint8)
    # Mode "I" is 32-bit and says nothing about the intended range: 8-bit data stays as it is and
    # anything wider is read as 16 bit, which is what PNG and TIFF files decoded as "I" hold.
    if values.size and values.min() >= 0 and values.max() <= 255:
        return values.astype(np.uint8)
    values = np.clip(values, 0, 65535)
    return ((values * 255 + 32767) // 65535).astype(np.uint8)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3), whatever its mode (grey, alpha, palette, 16 bit).

    EXIF orientation is deliberately not applied: label maps carry no EXIF, so rotating only the
    photo would break the pixel correspondence; a rotated file shows up as a size mismatch instead.
    """
    with _open_image(path) as img:
        mode = img.mode
        if mode == "RGB":
            return np.asarray(img, dtype=np.uint8).copy()
        if mode in ("RGBA", "RGBX", "RGBa"):
            return np.asarray(img.convert("RGBA"), dtype=np.uint8)[..., :3].copy()
        if mode == "P":
            # A palette may carry transparency; RGBA keeps PIL from warning, the alpha is dropped.
            return np.asarray(img.convert("RGBA"), dtype=np.uint8)[..., :3].copy()
        if mode in ("L", "LA", "1", "La"):
            grey = np.asarray(img.convert("L"), dtype=np.uint8)
        elif mode in ("F",) or mode.startswith("I"):
            grey = _to_uint8(np.asarray(img), mode)
        else:  # CMYK, YCbCr, LAB, HSV: PIL knows how to get RGB
            try:
                return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
            except (OSError, ValueError) as exc:
                raise DataFileError(path, f"image mode {mode!r} cannot be converted to RGB ({exc})",
                                    "Re-save the file as an 8-bit RGB PNG or JPEG",
                                    kind="unreadable file") from exc
        return np.repeat(grey[..., None], 3, axis=2)


# --- labels -----------------------------------------------------------------------------------


def _encode_rgb(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours to one int per colour (0xRRGGBB), so colours can be sorted and searched."""
    rgb = np.asarray(rgb).astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _decode_rgb(code: int) -> tuple[int, int, int]:
    code = int(code)
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


def _encode_colors(colors: Sequence[Sequence[int]]) -> np.ndarray:
    return _encode_rgb(np.asarray(colors, dtype=np.int64).reshape(-1, 3))


def _swap_rb(codes: np.ndarray) -> np.ndarray:
    return ((codes & 0xFF) << 16) | (codes & 0xFF00) | ((codes >> 16) & 0xFF)


def _describe_values(flat: np.ndarray, bad: np.ndarray, width: int, fmt) -> tuple[str, int]:
    """List the distinct bad values with their pixel counts and one (row, col) each."""
    where = np.flatnonzero(bad)
    values, first, counts = np.unique(flat[where], return_index=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")  # most frequent first: that is what to look at
    parts = []
    for k in order[:_MAX_LISTED]:
        row, col = divmod(int(where[first[k]]), width)
        parts.append(f"{fmt(values[k])} ({int(counts[k])} px, e.g. at (row, col) = ({row}, {col}))")
    text = ", ".join(parts)
    if len(values) > _MAX_LISTED:
        text += f" and {len(values) - _MAX_LISTED} more"
    return text, len(values)


class IdMapBySuffix:
    """An id map chosen by the label file's name, for datasets that ship one map in two encodings.

    Cityscapes writes ``*_gtFine_labelIds.png`` (raw ids, to be mapped) and ``*_gtFine_labelTrainIds.png``
    (already train ids). A source reads one kind, but a pairs file or a ``--target-labels`` flag may name
    the other: decoding it with the source's map would give silently wrong classes.
    """

    def __init__(self, by_suffix: Mapping[str, Any], default: Any = None):
        self.by_suffix = dict(by_suffix)
        self.default = default

    def for_path(self, path: str | Path):
        stem = Path(path).stem
        for suffix, id_map in self.by_suffix.items():
            if stem.endswith(suffix):
                return id_map
        return self.default

    def __repr__(self) -> str:
        return f"IdMapBySuffix({sorted(self.by_suffix)}, default={'map' if self.default is not None else None})"


def _build_id_lut(id_map, size: int, ignore_index: int) -> np.ndarray:
    """Lookup table raw id -> train id covering 0..size-1; ids the map does not name become ignore."""
    if isinstance(id_map, Mapping):
        lut = np.full(max(size, 1), ignore_index, dtype=np.int64)
        for raw, train in id_map.items():
            raw = int(raw)
            if 0 <= raw < lut.size:
                lut[raw] = ignore_index if train is None else int(train)
        return lut
    table = np.asarray(id_map, dtype=np.int64).reshape(-1)
    lut = np.full(max(size, table.size, 1), ignore_index, dtype=np.int64)
    lut[: table.size] = table
    return lut[: max(size, 1)]


def _index_labels(raw: np.ndarray, path: Path, metadata: DatasetMetadata, unknown_colors: str, id_map) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
            raise DataFileError(path, "label file holds non-integer values",
                                "Labels must be integer class indices; re-export as an 8-bit PNG",
                                kind="bad label values")
    ignore = metadata.ignore_index
    if id_map is not None and raw.dtype in (np.uint8, np.uint16):
        labels = _build_id_lut(id_map, 1 << (8 * raw.dtype.itemsize), ignore)[raw]
    elif id_map is not None:
        # Wide (32-bit) files can hold ids far too large for a table indexed by raw value, so map
        # the distinct ids instead.
        raw = raw.astype(np.int64)
        ids, inverse = np.unique(raw, return_inverse=True)
        lut = _build_id_lut(id_map, int(min(max(ids.max(initial=0), 0), 1 << 20)) + 1, ignore)
        in_table = (ids >= 0) & (ids < lut.size)
        mapped = np.where(in_table, lut[np.where(in_table, ids, 0)], ignore)
        labels = mapped[inverse.reshape(-1)].reshape(raw.shape)
    else:
        labels = raw.astype(np.int64)
    bad = ((labels < 0) | (labels >= metadata.num_classes)) & (labels != ignore)
    if not bad.any():
        return labels
    if unknown_colors == "ignore":
        labels = labels.copy()
        labels[bad] = ignore
        return labels
    listed, _ = _describe_values(labels.reshape(-1), bad.reshape(-1), labels.shape[1], lambda v: str(int(v)))
    fix = (f"Valid values are 0..{metadata.num_classes - 1} ({metadata.num_classes} classes) "
           f"and {ignore} (ignore)")
    if id_map is None and int(labels[bad].max()) == metadata.num_classes and not (labels == 0).any():
        fix += "; the values look 1-based (1..N): subtract 1, or map them with an id_map"
    elif id_map is None and int(labels[bad].min()) >= metadata.num_classes and metadata.num_classes < 255:
        fix += ("; if these are raw dataset ids, map them to train ids (id_map), "
                "or set ignore_index in classes.yaml if they mark unlabelled pixels")
    fix += "; unknown_colors: ignore turns them into the ignore label"
    raise DataFileError(path, f"label values outside the {metadata.num_classes} classes: {listed}", fix,
                        kind="bad label values")


def _color_labels(rgb: np.ndarray, path: Path, metadata: DatasetMetadata, unknown_colors: str,
                  ignore_colors: Sequence[Sequence[int]]) -> np.ndarray:
    height, width = rgb.shape[:2]
    ignore = metadata.ignore_index
    codes = _encode_rgb(rgb).reshape(-1)
    colors, first, inverse, counts = np.unique(codes, return_index=True, return_inverse=True, return_counts=True)

    palette = _encode_rgb(metadata.palette())
    # A stable sort makes searchsorted land on the lowest class index when a colour repeats.
    order = np.argsort(palette, kind="stable")
    sorted_palette = palette[order]
    pos = np.clip(np.searchsorted(sorted_palette, colors), 0, len(sorted_palette) - 1)
    known = sorted_palette[pos] == colors
    classes = np.where(known, order[pos], ignore).astype(np.int64)

    ignore_codes = _encode_colors(ignore_colors)
    is_ignore_color = np.isin(colors, ignore_codes) & ~known
    unknown = ~known & ~is_ignore_color

    if unknown.any() and unknown_colors != "ignore":
        bad_pixels = unknown[inverse.reshape(-1)]
        listed, n_colors = _describe_values(codes, bad_pixels, width, lambda code: str(_decode_rgb(code)))
        problem = (f"{n_colors} colour(s) not in the palette of {metadata.name!r} "
                   f"({int(bad_pixels.sum())} of {height * width} px): {listed}")

        own = colors[~is_ignore_color]
        swapped_known = np.isin(_swap_rb(own), palette) | np.isin(_swap_rb(own), ignore_codes)
        if swapped_known.all():
            fix = ("The file looks BGR-swapped (saved with OpenCV?): its colours match the palette after "
                   "swapping red and blue. Convert with cv2.cvtColor(label, cv2.COLOR_BGR2RGB) before "
                   "cv2.imwrite, or save with PIL")
        elif n_colors > 4 * max(metadata.num_classes, 5):
            fix = ("So many colours usually means the label was resized with interpolation or saved as "
                   "JPEG; resize labels with nearest-neighbour and save them as PNG")
        else:
            fix = ("Add the colours to the palette (classes.yaml: colors), fix the file, or set "
                   "unknown_colors: ignore to treat them as the ignore label")
        raise DataFileError(path, problem, fix, kind="unknown colours")
    return classes[inverse.reshape(-1)].reshape(height, width)


def load_labels(
    path: str | Path,
    metadata: DatasetMetadata,
    label_format: str = "auto",
    unknown_colors: str = "error",
    id_map: Mapping[int, int] | Sequence[int] | np.ndarray | None = None,
    *,
    ignore_colors: Sequence[Sequence[int]] = (),
) -> np.ndarray:
    """Read a label map as int64 class indices (H, W), ``metadata.ignore_index`` for ignored pixels.

    ``label_format``: "index" (pixel values are class ids; palette images give their raw indices),
    "color" (RGB colours looked up in ``metadata.colors``) or "auto" (single-channel and palette
    files are index maps, RGB(A) files colour maps, except RGB files whose three channels are equal,
    which are index maps saved as RGB). ``id_map`` maps raw ids to class ids (e.g. Cityscapes
    labelIds -> trainIds); ids it does not name become the ignore label. ``unknown_colors``:
    "error" raises :class:`DataFileError` on values outside the classes, "ignore" turns them into the
    ignore label. ``ignore_colors`` are colours that mean "ignore" in colour-format files.
    """
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label_format must be one of {', '.join(LABEL_FORMATS)}, got {label_format!r}")
    if unknown_colors not in UNKNOWN_COLOR_POLICIES:
        raise ValueError(f"unknown_colors must be one of {', '.join(UNKNOWN_COLOR_POLICIES)}, got {unknown_colors!r}")
    path = Path(path)
    if isinstance(id_map, IdMapBySuffix):
        id_map = id_map.for_path(path)
    with _open_image(path) as img:
        mode = img.mode
        if mode == "P":
            # Raw palette indices are the class ids; the palette colours only matter as colour labels.
            single = np.asarray(img) if label_format != "color" else None
            rgb = np.asarray(img.convert("RGB")) if label_format == "color" else None
        elif mode in ("L", "1", "F") or mode.startswith("I"):
            single, rgb = np.asarray(img.convert("L") if mode == "1" else img), None
        elif mode in ("LA", "La"):
            single, rgb = np.asarray(img.getchannel(0)), None
        elif mode in ("RGB", "RGBA", "RGBX", "RGBa"):
            single, rgb = None, np.asarray(img.convert("RGB") if mode != "RGB" else img)
        else:
            raise DataFileError(path, f"label image mode {mode!r} is not supported",
                                "Save labels as 8-bit single-channel (index) or RGB (colour) PNG",
                                kind="unreadable file")

    if label_format == "color":
        if rgb is None:
            if single.dtype != np.uint8:
                raise DataFileError(path, f"a {mode} (high bit depth, single-channel) file cannot be a colour label",
                                    "Set label_format to index (or auto) for this dataset", kind="bad label values")
            rgb = np.repeat(single[..., None], 3, axis=2)
        return _color_labels(rgb, path, metadata, unknown_colors, ignore_colors)
    if label_format == "index":
        if single is None:
            if not _is_grey(rgb):
                # An RGB file with colours cannot be an index map; when every colour is the dataset's,
                # it is unambiguously a colour label (e.g. the synthetic palette written as colours).
                if _all_palette_colors(rgb, metadata, ignore_colors):
                    return _color_labels(rgb, path, metadata, unknown_colors, ignore_colors)
                raise DataFileError(path, f"is a colour image whose colours are not all in the palette of "
                                    f"{metadata.name!r}, and label_format is index",
                                    "Save labels as single-channel index PNGs, or as colour PNGs using exactly the "
                                    "palette's colours (label_format auto or color lists the colours that are off)",
                                    kind="bad label values")
            single = rgb[..., 0]
        return _index_labels(single, path, metadata, unknown_colors, id_map)
    # auto
    if single is not None:
        return _index_labels(single, path, metadata, unknown_colors, id_map)
    if _is_grey(rgb):
        grey = rgb[..., 0]
        valid = (grey < metadata.num_classes) | (grey == metadata.ignore_index)
        # A grey RGB file is normally an index map saved as RGB, but a palette with grey colours
        # (Cityscapes' building, pole...) gives grey colour files too: when the values are no
        # valid indices yet all are palette colours, the file is a colour file.
        if id_map is None and not valid.all() and _all_palette_colors(rgb, metadata, ignore_colors):
            return _color_labels(rgb, path, metadata, unknown_colors, ignore_colors)
        return _index_labels(grey, path, metadata, unknown_colors, id_map)
    return _color_labels(rgb, path, metadata, unknown_colors, ignore_colors)


def _all_palette_colors(rgb: np.ndarray, metadata: DatasetMetadata, ignore_colors: Sequence[Sequence[int]]) -> bool:
    allowed = np.concatenate([_encode_rgb(metadata.palette()), _encode_colors(ignore_colors)])
    return bool(np.isin(np.unique(_encode_rgb(rgb)), allowed).all())


def _is_grey(rgb: np.ndarray) -> bool:
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def raise_if_unpaired(problems: Sequence[DataFileError], scenes: Sequence, images_dir: str | Path,
                      labels_dir: str | Path, strict: bool = True,
                      what: tuple[str, str] = ("images", "labels")) -> None:
    """Strict pairing for a split paired with ``strict=False`` (``problems`` from ``pair_files``): raise one
    :class:`DataFileError` that counts the unpaired files, says how many scenes are paired, and names the
    switch that keeps them (``dataset_options: {strict: false}``). An empty split is raised as it is."""
    if not strict:
        return
    layout = [p for p in problems if p.kind != "missing partner file"]
    if layout:
        raise layout[0]
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    no_label = [Path(p.path) for p in problems if Path(p.path).is_relative_to(images_dir)]
    no_image = [Path(p.path) for p in problems if not Path(p.path).is_relative_to(images_dir)]
    if not no_label and not no_image:
        return
    def one(word: str) -> str:  # "images" -> "an image", "masks" -> "a mask"
        word = word[:-1] if word.endswith("s") else word
        return ("an " if word[:1] in "aeiou" else "a ") + word

    parts = []
    if no_label:
        parts.append(f"{len(no_label)} {what[0]} without {one(what[1])} in {labels_dir} "
                     f"(e.g. {', '.join(p.name for p in no_label[:3])})")
    if no_image:
        parts.append(f"{len(no_image)} {what[1]} without {one(what[0])} in {images_dir} "
                     f"(e.g. {', '.join(p.name for p in no_image[:3])})")
    dropped = len(no_label) + len(no_image)
    raise DataFileError(
        images_dir.parent if images_dir.parent == labels_dir.parent else images_dir,
        f"{' and '.join(parts)}; strict pairing refuses the split",
        f"To train on the {len(scenes)} paired scenes and drop these {dropped} files, set dataset_options: "
        "{strict: false} (--data.init_args.dataset_options '{strict: false}'); or add or remove the files "
        "(data check lists them all)",
        kind="missing partner file",
    )


def check_pair(image: np.ndarray, labels: np.ndarray, image_path: str | Path, label_path: str | Path) -> None:
    """Raise :class:`DataFileError` unless the image and its label map have the same height and width."""
    ih, iw = np.asarray(image).shape[:2]
    lh, lw = np.asarray(labels).shape[:2]
    if (ih, iw) != (lh, lw):
        raise DataFileError(
            label_path,
            f"label is {lw}x{lh} (WxH) but its image {image_path} is {iw}x{ih}",
            "Image and label must have the same size: re-export the label at the image size "
            "(nearest-neighbour resizing), or check that the two files belong together",
            kind="size mismatch",
        )
