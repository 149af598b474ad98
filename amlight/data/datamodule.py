"""The LightningDataModule of exemplar-target pairs, for any registered dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from amlight.data.pairing import PairDataset, Pairing, read_pairs_file
from amlight.data.registry import DatasetMetadata, build_dataset, get_dataset_entry


class ExemplarPairDataModule(L.LightningDataModule):
    """Args:
        dataset: a registered dataset name (see ``python -m amlight data list``) or a folder path.
        root: the dataset's folder (default: the dataset's registered default, e.g. data/synthetic).
        resolution: training size, an int (square) or [height, width]. Labels are resized with nearest only.
        train_pairing / val_pairing: self | random | listed (see amlight.data.pairing).
        val_pairs_file: pairs JSON for listed validation; default ``<root>/<val_split>/pairs.json`` if it exists.
        synthetic: generator parameters when dataset is "synthetic": the data is generated on first use.
        max_val_samples: cap on validation items (validation renders samples, which costs time on a CPU).
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        resolution: int | list[int] = 32,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        train_split: str = "train",
        val_split: str = "val",
        train_pairing: Pairing = "self",
        val_pairing: Pairing = "listed",
        train_pairs_file: str | None = None,
        val_pairs_file: str | None = None,
        scale: tuple[float, float] = (0.6, 1.0),
        hflip: bool = True,
        max_val_samples: int | None = 16,
        synthetic: dict[str, Any] | None = None,
        dataset_options: dict[str, Any] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.entry = get_dataset_entry(dataset) if not Path(dataset).is_dir() else get_dataset_entry("folder")
        self.root = Path(root if root is not None else (dataset if Path(dataset).is_dir() else self.entry.default_root or ""))
        self.size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        self._metadata: DatasetMetadata | None = self.entry.metadata
        self.train_set = self.val_set = None

    # --- metadata, linked into the model's arguments by the CLI ---
    @property
    def metadata(self) -> DatasetMetadata:
        if self._metadata is None:  # the folder format keeps its classes in the folder
            self._metadata = self._source(self.hparams.train_split).metadata
        return self._metadata

    @property
    def num_classes(self) -> int:
        return self.metadata.num_classes

    @property
    def ignore_index(self) -> int:
        return self.metadata.ignore_index

    def prepare_data(self) -> None:
        if self.entry.name == "synthetic":
            from amlight.data.synthetic import ensure_synthetic_dataset, read_manifest

            params = self.hparams.synthetic
            if params is None and read_manifest(self.root) is not None:
                return  # no parameters asked for: use the synthetic dataset that is there, however made
            ensure_synthetic_dataset(self.root, **(params or {}))

    def _source(self, split: str):
        if self.entry.name == "synthetic":
            self.prepare_data()  # idempotent and cheap once the data exists; covers use without a Trainer
        return build_dataset(self.entry.name, self.root, split, **(self.hparams.dataset_options or {}))

    def _pairs(self, pairing: str, split: str, pairs_file: str | None):
        if pairing != "listed":
            return None
        path = Path(pairs_file) if pairs_file else self.root / split / "pairs.json"
        return read_pairs_file(path)

    def _dataset(self, split: str, pairing: str, pairs_file: str | None, augment: bool, limit=None) -> PairDataset:
        hp = self.hparams
        if pairing == "listed" and pairs_file is None and not (self.root / split / "pairs.json").exists():
            pairing = "self"  # no pairs file: validate on self-pairs
        return PairDataset(
            self._source(split), pairing, self.size, augment=augment, scale=hp.scale, hflip=hp.hflip,
            pairs=self._pairs(pairing, split, pairs_file), seed=hp.seed, limit=limit,
        )

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._dataset(hp.train_split, hp.train_pairing, hp.train_pairs_file, augment=True)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._dataset(
                hp.val_split, hp.val_pairing, hp.val_pairs_file, augment=False, limit=hp.max_val_samples
            )

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
            persistent_workers=workers > 0, drop_last=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.hparams.val_batch_size or self.hparams.batch_size, shuffle=False)
