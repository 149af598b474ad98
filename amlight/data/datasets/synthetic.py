"""The synthetic driving scenes (:mod:`amlight.data.synthetic`), registered as dataset ``synthetic``.

On disk they are a plain folder dataset (``ROOT/<split>/images``, ``ROOT/<split>/labels``,
``ROOT/classes.yaml``) plus ``ROOT/val/pairs.json``, the fixed exemplar/target pairs for evaluation.
Building the source never generates data: the DataModule calls
:func:`amlight.data.synthetic.ensure_synthetic_dataset` first, and everything else is told how to.
"""
from __future__ import annotations

from pathlib import Path

from amlight.data.datasets.folder import FolderSource
from amlight.data.io import DataFileError
from amlight.data.registry import register_dataset
from amlight.data.synthetic import SYNTHETIC_METADATA

DEFAULT_ROOT = "data/synthetic"


def _require_generated(root: Path) -> None:
    if not (root / "manifest.json").is_file():
        what = "does not exist" if not root.exists() else "has no manifest.json, so it is not a generated synthetic dataset"
        raise DataFileError(
            root,
            f"synthetic dataset folder {what}",
            f"Generate it with `python -m amlight synth --out {root}`",
            kind="dataset layout",
        )


def build_synthetic(root: str | Path, split: str = "train", **kwargs) -> FolderSource:
    root = Path(root)
    _require_generated(root)
    # The generator writes single-channel index PNGs; saying so skips colour-map detection.
    kwargs.setdefault("label_format", "index")
    return FolderSource.from_folder(root, split, metadata=SYNTHETIC_METADATA, **kwargs)


def synthetic_pairs_file(root: str | Path) -> Path:
    """``ROOT/val/pairs.json``: each validation appearance on two layouts, both directions.

    Only the path: it may be asked for before the data is generated.
    """
    return Path(root) / "val" / "pairs.json"


register_dataset(
    "synthetic",
    build_synthetic,
    metadata=SYNTHETIC_METADATA,
    description="synthetic driving-like scenes rendered offline (`python -m amlight synth`); "
    "per-scene random class appearances, val pairs share one appearance across two layouts",
    default_root=DEFAULT_ROOT,
)
