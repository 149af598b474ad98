"""Exemplar retrieval: rank a database of (image, label map) pairs for a target label map.

The adapter copies appearance class by class, so a target region whose class the exemplar lacks has
nothing to copy from. Retrieval therefore looks at label maps only and prefers, in this order:

1. **coverage**: the fraction of the target's labelled (non-ignore) pixels whose class is *present*
   in the exemplar. A class is present in an exemplar when it covers at least ``min_area`` (default
   0.001, i.e. 0.1 %) of the exemplar's labelled pixels, and at least one pixel. Coverage is
   computed from integer pixel counts, so equal coverage is an exact tie, never a rounding accident.
   A target with no labelled pixel has coverage 1.
2. **score** = ``layout_weight * layout + (1 - layout_weight) * histogram`` (default weight 0.5),
   both terms in [0, 1]:

   - ``layout``: cosine similarity of the coarse spatial class layouts. A layout is a
     ``(num_classes, grid, grid)`` array: the label map is cut into ``grid x grid`` equal cells
     (cell edges at fractional pixel positions, so the layout does not depend on the image size or
     aspect ratio) and each cell holds the fraction of its labelled area taken by each class;
     pixels cut by a cell edge count in both cells in proportion to their overlap (an exact area
     resize, not nearest-neighbour sampling). Cells with no labelled pixel are all zero.
   - ``histogram``: histogram intersection ``sum_c min(p_c, q_c)`` of the class-area histograms
     (fraction of labelled pixels per class).

Matches are ordered by coverage (descending, lexicographically first), then score (descending),
then database index (ascending), so the same input always gives the same ranking, and the top-1
covers every target class whenever any database entry does. Scoring is vectorised over the whole
database (numpy); ``backend="faiss"`` instead pre-selects the ``preselect`` entries with the most
similar layouts with faiss (inner product on normalised layouts) and ranks only those: faster on
very large databases, but coverage then only counts among the pre-selected entries.

An index is saved as one ``.npz`` file (read back with ``allow_pickle=False``; no pickle anywhere)
whose ``meta`` entry is a JSON document (format name, version, grid, classes, dataset, file stamps).
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from amlight.utils.atomic_write import atomic_write

INDEX_FORMAT = "amlight-label-index"
INDEX_VERSION = 1
DEFAULT_GRID = 4
DEFAULT_MIN_AREA = 1e-3
DEFAULT_LAYOUT_WEIGHT = 0.5
DEFAULT_PRESELECT = 2048
BACKENDS = ("numpy", "faiss")
PROGRESS_MIN_ITEMS = 50  # show a progress bar from this many label maps on
_CHUNK = 4096  # database rows per block when scoring (bounds the temporary memory)


def describe_score(min_area: float = DEFAULT_MIN_AREA, layout_weight: float = DEFAULT_LAYOUT_WEIGHT,
                   grid: int = DEFAULT_GRID) -> str:
    """The ranking rule in one line (written into retrieval JSON files)."""
    return (
        f"ranked by coverage (fraction of the target's labelled pixels whose class the exemplar has on "
        f">= {min_area:g} of its labelled pixels), then score = {layout_weight:g} * cosine similarity of "
        f"{grid}x{grid} per-cell class-fraction layouts + {1 - layout_weight:g} * class-histogram intersection "
        f"(both in [0, 1]), then database order"
    )


class IndexFileError(ValueError):
    """A file given as a label index is missing, unreadable or not a label index."""


@dataclass(frozen=True)
class Match:
    """One ranked exemplar for a target.

    ``index``: position in the database; ``score``: the layout/histogram similarity in [0, 1] (the
    second ranking key); ``coverage``: fraction of the target's labelled pixels whose class the
    exemplar has (the first ranking key); ``missing_classes``: target classes the exemplar lacks.
    """

    index: int
    name: str
    score: float
    coverage: float
    missing_classes: list[int]
    image_path: str | None
    label_path: str | None
    layout_similarity: float = 0.0
    histogram_similarity: float = 0.0

    @property
    def full_coverage(self) -> bool:
        return not self.missing_classes


# --- features ---------------------------------------------------------------------------------


def _cell_weights(n: int, grid: int) -> np.ndarray:
    """(grid, n) overlap of pixel [p, p + 1) with cell [i * n / grid, (i + 1) * n / grid), in pixels."""
    edges = np.arange(grid + 1, dtype=np.float64) * (n / grid)
    pixels = np.arange(n, dtype=np.float64)
    low = np.maximum(pixels[None, :], edges[:-1, None])
    high = np.minimum(pixels[None, :] + 1.0, edges[1:, None])
    return np.clip(high - low, 0.0, None)


def _check_labels(labels: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label map must be 2-D (H, W), got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError(f"a label map must not be empty, got shape {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise ValueError(f"a label map must hold integer class indices, got dtype {labels.dtype}")
    labels = labels.astype(np.int64, copy=False)
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        values = np.unique(labels[bad])[:5].tolist()
        raise ValueError(
            f"label map holds values outside 0..{num_classes - 1} and the ignore label {ignore_index}: {values}"
        )
    return labels


def label_features(labels: np.ndarray, num_classes: int, ignore_index: int = 255,
                   grid: int = DEFAULT_GRID) -> tuple[np.ndarray, np.ndarray]:
    """(pixel counts per class (C,) int64, layout (C, grid, grid) float32) of one label map.

    The layout holds, for each of the grid x grid equal cells, the fraction of the cell's labelled
    area per class (see the module docstring); ignored pixels count nowhere.
    """
    labels = _check_labels(labels, num_classes, ignore_index)
    height, width = labels.shape
    valid = labels != ignore_index
    counts = np.bincount(labels[valid], minlength=num_classes).astype(np.int64)

    row_w = _cell_weights(height, grid)  # (g, H)
    col_w = _cell_weights(width, grid)  # (g, W)
    keys = labels * width + np.arange(width)[None, :]  # class-major, column-minor
    cells = np.zeros((num_classes, grid, grid), dtype=np.float64)
    for i in range(grid):
        rows = np.flatnonzero(row_w[i] > 0)
        block_valid = valid[rows]
        weights = np.broadcast_to(row_w[i, rows][:, None], block_valid.shape)[block_valid]
        # per (class, column): the labelled area in cell row i
        per_column = np.bincount(keys[rows][block_valid], weights=weights, minlength=num_classes * width)
        cells[:, i, :] = per_column.reshape(num_classes, width) @ col_w.T
    area = cells.sum(axis=0, keepdims=True)
    layout = np.divide(cells, area, out=np.zeros_like(cells), where=area > 0)
    return counts, layout.astype(np.float32)


# --- the index --------------------------------------------------------------------------------


def _strings(values: Sequence | None, n: int, what: str) -> list[str]:
    if values is None:
        return [""] * n
    values = ["" if v is None else str(v) for v in values]
    if len(values) != n:
        raise ValueError(f"{len(values)} {what} for {n} label maps")
    return values


def _file_stamp(path: str | Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return int(st.st_mtime_ns), int(st.st_size)


class LabelIndex:
    """Class-area histograms and coarse class layouts of a database's label maps, ready to rank.

    Build with :meth:`from_source` (a dataset from :func:`amlight.data.registry.build_dataset`) or
    :meth:`from_label_maps`; rank with :meth:`rank`; persist with :meth:`save` / :meth:`load`.
    """

    def __init__(
        self,
        counts: np.ndarray,
        layouts: np.ndarray,
        names: Sequence[str],
        *,
        ignore_index: int = 255,
        image_paths: Sequence[str | None] | None = None,
        label_paths: Sequence[str | None] | None = None,
        class_names: Sequence[str] | None = None,
        info: dict | None = None,
        stamps: np.ndarray | None = None,
    ):
        counts = np.asarray(counts, dtype=np.int64)
        layouts = np.asarray(layouts, dtype=np.float32)
        if counts.ndim != 2:
            raise ValueError(f"counts must be (entries, classes), got shape {counts.shape}")
        n, num_classes = counts.shape
        if layouts.ndim != 4 or layouts.shape[:2] != (n, num_classes) or layouts.shape[2] != layouts.shape[3]:
            raise ValueError(f"layouts must be ({n}, {num_classes}, grid, grid), got shape {layouts.shape}")
        if len(names) != n:
            raise ValueError(f"{len(names)} names for {n} label maps")
        names = [str(v) for v in names]
        if len(set(names)) != n:
            dupes = sorted({v for v in names if names.count(v) > 1})[:5]
            raise ValueError(f"entry names must be unique (exclude= refers to them), repeated: {dupes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.counts = counts
        self.layouts = layouts
        self.names = names
        self.num_classes = num_classes
        self.grid = int(layouts.shape[2])
        self.ignore_index = int(ignore_index)
        self.image_paths = _strings(image_paths, n, "image paths")
        self.label_paths = _strings(label_paths, n, "label paths")
        self.class_names = [str(c) for c in class_names] if class_names is not None else [str(c) for c in range(num_classes)]
        self.info = dict(info or {})
        self.stamps = (np.full((n, 2), -1, np.int64) if stamps is None else np.asarray(stamps, np.int64).reshape(n, 2))

        # Derived arrays, computed once: histograms and unit-length layout vectors.
        totals = counts.sum(axis=1)
        self.totals = totals
        self._hist = np.divide(counts, totals[:, None], out=np.zeros(counts.shape), where=totals[:, None] > 0)
        flat = layouts.reshape(n, -1).astype(np.float64)
        norms = np.sqrt(np.einsum("nd,nd->n", flat, flat))
        self._unit_layouts = np.divide(flat, norms[:, None], out=np.zeros_like(flat),
                                       where=norms[:, None] > 0).astype(np.float32)
        self._name_to_index = {v: i for i, v in enumerate(names)}
        self._present_cache: dict[float, np.ndarray] = {}
        self._faiss_index = None

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"LabelIndex({len(self)} entries, {self.num_classes} classes, grid {self.grid})"

    # construction ------------------------------------------------------------------------------

    @classmethod
    def from_label_maps(
        cls,
        label_maps: Sequence[np.ndarray],
        names: Sequence[str],
        num_classes: int,
        ignore_index: int = 255,
        grid: int = DEFAULT_GRID,
        image_paths: Sequence[str | None] | None = None,
        label_paths: Sequence[str | None] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> "LabelIndex":
        """Index in-memory label maps (H, W) of integer class ids (sizes may differ)."""
        if len(label_maps) != len(names):
            raise ValueError(f"{len(label_maps)} label maps but {len(names)} names")
        return cls._build(((lab, None) for lab in label_maps), len(names), names, num_classes, ignore_index,
                          grid, image_paths, label_paths, class_names, progress=False)

    @classmethod
    def from_source(cls, source, grid: int = DEFAULT_GRID, progress: bool = True,
                    info: dict | None = None) -> "LabelIndex":
        """Index every scene of a dataset source, reading label files only where the source allows it.

        Bad label files raise the source's :class:`amlight.data.io.DataFileError` (naming the file).
        A tqdm progress bar goes to stderr when ``progress`` and the source has >= 50 scenes.
        """
        meta = source.metadata
        scenes = list(source.scenes)
        read = source.load_labels if hasattr(source, "load_labels") else (lambda i: source.load(i)[1])

        def label_maps():
            for i, scene in enumerate(scenes):
                yield read(i), scene.label_path

        info = {"dataset": meta.name, **(info or {})}
        return cls._build(
            label_maps(), len(scenes), [s.name for s in scenes], meta.num_classes, meta.ignore_index, grid,
            [os.path.abspath(s.image_path) for s in scenes], [os.path.abspath(s.label_path) for s in scenes],
            meta.class_names,
            progress=progress, info=info, desc=f"indexing {meta.name} label maps",
        )

    @classmethod
    def _build(cls, items: Iterable, n: int, names, num_classes: int, ignore_index: int, grid: int,
               image_paths, label_paths, class_names, progress: bool, info: dict | None = None,
               desc: str = "indexing label maps") -> "LabelIndex":
        grid = int(grid)
        if grid < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        counts = np.zeros((n, num_classes), np.int64)
        layouts = np.zeros((n, num_classes, grid, grid), np.float32)
        stamps = np.full((n, 2), -1, np.int64)
        if progress and n >= PROGRESS_MIN_ITEMS:
            from tqdm import tqdm

            items = tqdm(items, total=n, desc=desc, unit="map", dynamic_ncols=True)
        for i, (labels, path) in enumerate(items):
            if path is not None:
                stamps[i] = _file_stamp(path)
            try:
                counts[i], layouts[i] = label_features(labels, num_classes, ignore_index, grid)
            except ValueError as exc:
                where = path if path is not None else f"label map {i} ({names[i]!r})"
                raise ValueError(f"{where}: {exc}") from None
        return cls(counts, layouts, names, ignore_index=ignore_index, image_paths=image_paths,
                   label_paths=label_paths, class_names=class_names, info=info, stamps=stamps)

    # ranking -----------------------------------------------------------------------------------

    def features(self, target_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(counts, layout) of a target label map with this index's classes and grid."""
        return label_features(target_labels, self.num_classes, self.ignore_index, self.grid)

    def present(self, min_area: float = DEFAULT_MIN_AREA) -> np.ndarray:
        """(entries, classes) bool: class present in the entry (>= ``min_area`` of its labelled pixels, >= 1 px)."""
        key = float(min_area)
        if key not in self._present_cache:
            if not 0.0 <= key < 1.0:
                raise ValueError(f"min_area must be in [0, 1), got {min_area}")
            self._present_cache[key] = (self.counts > 0) & (self.counts >= key * self.totals[:, None])
        return self._present_cache[key]

    def rank(
        self,
        target_labels: np.ndarray,
        top_k: int = 5,
        exclude: str | Iterable[str] | None = None,
        *,
        min_area: float = DEFAULT_MIN_AREA,
        layout_weight: float = DEFAULT_LAYOUT_WEIGHT,
        backend: str = "numpy",
        preselect: int = DEFAULT_PRESELECT,
    ) -> list[Match]:
        """The ``top_k`` best exemplars for ``target_labels`` (H, W), best first (see the module docstring).

        ``exclude``: entry name(s) never returned (a target that is itself in the database);
        names not in the database are ignored. Fewer than ``top_k`` matches come back only when the
        database (less the excluded entries) is smaller.
        """
        counts, layout = self.features(target_labels)
        return self.rank_features(counts, layout, top_k, exclude, min_area=min_area, layout_weight=layout_weight,
                                  backend=backend, preselect=preselect)

    def rank_entry(self, i: int, top_k: int = 5, **kwargs) -> list[Match]:
        """Rank the database for its own entry ``i`` (its stored features), never returning entry ``i``."""
        exclude = kwargs.pop("exclude", None)
        names = {self.names[i]} | ({exclude} if isinstance(exclude, str) else set(exclude or ()))
        return self.rank_features(self.counts[i], self.layouts[i], top_k, names, **kwargs)

    def rank_features(
        self,
        counts: np.ndarray,
        layout: np.ndarray,
        top_k: int = 5,
        exclude: str | Iterable[str] | None = None,
        *,
        min_area: float = DEFAULT_MIN_AREA,
        layout_weight: float = DEFAULT_LAYOUT_WEIGHT,
        backend: str = "numpy",
        preselect: int = DEFAULT_PRESELECT,
    ) -> list[Match]:
        """:meth:`rank` on precomputed target features (from :meth:`features`)."""
        if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        if not 0.0 <= layout_weight <= 1.0:
            raise ValueError(f"layout_weight must be in [0, 1], got {layout_weight}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        counts = np.asarray(counts, np.int64).reshape(self.num_classes)
        layout = np.asarray(layout, np.float32).reshape(self.num_classes, self.grid, self.grid)
        excluded = self._excluded_rows(exclude)
        present = self.present(min_area)

        total = int(counts.sum())
        hist_t = counts / total if total > 0 else np.zeros(self.num_classes)
        if backend == "faiss" and len(self) > preselect:
            rows = self._faiss_candidates(layout, int(preselect) + len(excluded))
            covered, layout_sim, hist_sim = self._similarities(present, counts, hist_t, layout, rows)
        else:  # every entry, in order: slices instead of gathers
            rows = np.arange(len(self))
            covered, layout_sim, hist_sim = self._similarities(present, counts, hist_t, layout, None)
        if excluded.size:
            keep = ~np.isin(rows, excluded)
            rows, covered, layout_sim, hist_sim = rows[keep], covered[keep], layout_sim[keep], hist_sim[keep]
        if rows.size == 0:
            return []
        score = layout_weight * layout_sim + (1.0 - layout_weight) * hist_sim
        # lexsort: last key is primary. Coverage first, then score, then database order.
        order = np.lexsort((rows, -score, -covered))[: int(top_k)]

        target_classes = np.flatnonzero(counts > 0)
        matches = []
        for k in order:
            row = int(rows[k])
            missing = target_classes[~present[row, target_classes]]
            matches.append(Match(
                index=row,
                name=self.names[row],
                score=float(score[k]),
                coverage=float(covered[k] / total) if total > 0 else 1.0,
                missing_classes=[int(c) for c in missing],
                image_path=self.image_paths[row] or None,
                label_path=self.label_paths[row] or None,
                layout_similarity=float(layout_sim[k]),
                histogram_similarity=float(hist_sim[k]),
            ))
        return matches

    def uncovered_classes(self, target_labels: np.ndarray, min_area: float = DEFAULT_MIN_AREA,
                          exclude: str | Iterable[str] | None = None) -> list[int]:
        """Classes of the target that no database entry has (same presence rule as :meth:`rank`);
        entries named in ``exclude`` do not count (a target that is itself in the database)."""
        counts, _ = self.features(target_labels)
        return self.uncovered_classes_of_counts(counts, min_area, exclude)

    def uncovered_classes_of_counts(self, counts: np.ndarray, min_area: float = DEFAULT_MIN_AREA,
                                    exclude: str | Iterable[str] | None = None) -> list[int]:
        """:meth:`uncovered_classes` from the target's per-class pixel counts."""
        present = self.present(min_area)
        holders = present.sum(axis=0)
        excluded = self._excluded_rows(exclude)
        if excluded.size:
            holders = holders - present[excluded].sum(axis=0)
        counts = np.asarray(counts).reshape(self.num_classes)
        return [int(c) for c in np.flatnonzero((counts > 0) & (holders == 0))]

    def class_name(self, c: int) -> str:
        return self.class_names[c]

    # internals -----------------------------------------------------------------------------------

    def _excluded_rows(self, exclude) -> np.ndarray:
        if exclude is None:
            return np.zeros(0, np.int64)
        if isinstance(exclude, str):
            exclude = [exclude]
        return np.asarray(sorted(self._name_to_index[v] for v in exclude if v in self._name_to_index), np.int64)

    def _similarities(self, present: np.ndarray, counts: np.ndarray, hist_t: np.ndarray, layout: np.ndarray,
                      rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(covered target pixels (exact ints), layout cosine, histogram intersection) for database
        ``rows`` (None: all entries).

        Products are summed row by row (no matrix-vector product, whose blocking can differ between
        rows): identical database entries get bit-identical values wherever they sit, so ties really
        break by index. Blocks of rows bound the temporary memory.
        """
        target = layout.reshape(-1).astype(np.float64)
        norm = np.sqrt(target @ target)
        target = (target / norm if norm > 0 else target).astype(np.float32)
        n = len(self) if rows is None else rows.size
        covered = np.empty(n, np.int64)
        layout_sim = np.empty(n)
        hist_sim = np.empty(n)
        for start in range(0, n, _CHUNK):
            part = slice(start, min(start + _CHUNK, n))
            block = part if rows is None else rows[part]
            covered[part] = np.where(present[block], counts[None, :], 0).sum(axis=1)
            layout_sim[part] = (self._unit_layouts[block] * target[None, :]).sum(axis=1, dtype=np.float64)
            hist_sim[part] = np.minimum(self._hist[block], hist_t[None, :]).sum(axis=1)
        return covered, np.clip(layout_sim, 0.0, 1.0), hist_sim

    def _faiss_candidates(self, layout: np.ndarray, k: int) -> np.ndarray:
        faiss = _import_faiss()
        if self._faiss_index is None:
            index = faiss.IndexFlatIP(self._unit_layouts.shape[1])
            index.add(np.ascontiguousarray(self._unit_layouts, dtype=np.float32))
            self._faiss_index = index
        query = layout.reshape(1, -1).astype(np.float32)
        norm = float(np.linalg.norm(query))
        if norm > 0:
            query = query / norm
        _, ids = self._faiss_index.search(np.ascontiguousarray(query), min(k, len(self)))
        ids = ids.reshape(-1)
        return np.sort(ids[ids >= 0].astype(np.int64))

    # persistence -------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the index to ``path`` (a ``.npz``; written atomically, no pickle)."""
        meta = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "entries": len(self),
            "num_classes": self.num_classes,
            "grid": self.grid,
            "ignore_index": self.ignore_index,
            "class_names": self.class_names,
            "info": self.info,
        }
        arrays = {
            "meta": np.array(json.dumps(meta)),
            "counts": self.counts,
            "layouts": self.layouts,
            "names": np.array(self.names, dtype=np.str_).reshape(-1),
            "image_paths": np.array(self.image_paths, dtype=np.str_).reshape(-1),
            "label_paths": np.array(self.label_paths, dtype=np.str_).reshape(-1),
            "stamps": self.stamps,
        }

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
                np.savez_compressed(f, **arrays)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> "LabelIndex":
        """Read an index written by :meth:`save`; :class:`IndexFileError` naming the file otherwise."""
        path = Path(path)
        if not path.is_file():
            raise IndexFileError(f"{path}: label index file does not exist" if not path.exists()
                                 else f"{path}: is not a file")
        not_index = f"{path}: not an amlight label index (expected a .npz written by LabelIndex.save)"
        try:
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise IndexFileError(f"{not_index}; it holds a single numpy array")
            with data:
                missing = {"meta", "counts", "layouts", "names"} - set(data.files)
                if missing:
                    raise IndexFileError(f"{not_index}; missing entries: {', '.join(sorted(missing))}")
                meta = json.loads(str(data["meta"]))
                if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
                    raise IndexFileError(f"{not_index}; its meta has no format {INDEX_FORMAT!r}")
                if meta.get("version") != INDEX_VERSION:
                    raise IndexFileError(f"{path}: label index version {meta.get('version')!r} is not supported "
                                         f"(this amlight reads version {INDEX_VERSION}); rebuild the index")
                arrays = {k: data[k] for k in data.files if k != "meta"}
        except IndexFileError:
            raise
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise IndexFileError(f"{not_index}; reading it failed: {type(exc).__name__}: {exc}") from None
        try:
            index = cls(
                arrays["counts"], arrays["layouts"], arrays["names"].tolist(),
                ignore_index=int(meta["ignore_index"]),
                image_paths=arrays["image_paths"].tolist() if "image_paths" in arrays else None,
                label_paths=arrays["label_paths"].tolist() if "label_paths" in arrays else None,
                class_names=meta.get("class_names"), info=meta.get("info") or {},
                stamps=arrays.get("stamps"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFileError(f"{path}: corrupt label index: {exc}") from None
        if index.grid != meta.get("grid") or index.num_classes != meta.get("num_classes"):
            raise IndexFileError(f"{path}: corrupt label index: arrays do not match its meta "
                                 f"(grid {index.grid} vs {meta.get('grid')}, classes {index.num_classes} vs "
                                 f"{meta.get('num_classes')})")
        return index

    def matches_source(self, source, grid: int | None = None) -> bool:
        """True when this index was built from exactly ``source``'s label files as they are now
        (same names, paths, classes, grid, file sizes and modification times)."""
        scenes = list(source.scenes)
        meta = source.metadata
        if (len(scenes) != len(self) or list(meta.class_names) != self.class_names
                or meta.ignore_index != self.ignore_index or (grid is not None and grid != self.grid)):
            return False
        for i, scene in enumerate(scenes):
            if scene.name != self.names[i] or os.path.abspath(scene.label_path) != self.label_paths[i]:
                return False
            if tuple(self.stamps[i]) != _file_stamp(scene.label_path):
                return False
        return True


def _import_faiss():
    try:
        import faiss  # noqa: F401
    except ImportError:
        raise ImportError("backend 'faiss' needs the faiss package: pip install faiss-cpu "
                          "(or use the default backend 'numpy')") from None
    return faiss


__all__ = [
    "BACKENDS",
    "DEFAULT_GRID",
    "DEFAULT_MIN_AREA",
    "IndexFileError",
    "LabelIndex",
    "Match",
    "describe_score",
    "label_features",
]
