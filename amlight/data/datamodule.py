"""The LightningDataModule of exemplar-target pairs, for any registered dataset."""
from __future__ import annotations

import random
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
        predict_split / predict_pairing / predict_pairs_file / max_predict_samples: the pairs ``predict``
            generates (``python -m amlight predict``; default: the listed pairs of
            ``<root>/<predict_split>/pairs.json``, all of them), unaugmented; batches of
            ``predict_batch_size`` (default: val_batch_size, then batch_size).
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
        predict_split: str = "val",
        predict_pairing: Pairing = "listed",
        predict_pairs_file: str | None = None,
        max_predict_samples: int | None = None,
        predict_batch_size: int | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.entry = get_dataset_entry(dataset) if not Path(dataset).is_dir() else get_dataset_entry("folder")
        self.root = Path(root if root is not None else (dataset if Path(dataset).is_dir() else self.entry.default_root or ""))
        self.size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        self._metadata: DatasetMetadata | None = self.entry.metadata
        self.train_set = self.val_set = self.predict_set = None

    # --- metadata, linked into the model's arguments by the CLI ---
    @property
    def metadata(self) -> DatasetMetadata:
        if self._metadata is None:  # the folder format keeps its classes in the folder
            from amlight.data.io import DataFileError

            hp = self.hparams
            splits = list(dict.fromkeys([hp.train_split, hp.val_split, hp.predict_split]))
            for i, split in enumerate(splits):
                try:  # any split will do (a predict-only folder may have no train split)
                    self._metadata = self._source(split).metadata
                    break
                except DataFileError:
                    if i == len(splits) - 1:
                        raise
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

    def _dataset(self, split: str, pairing: str, pairs_file: str | None, augment: bool, limit=None,
                 dataset_class: type[PairDataset] = PairDataset) -> PairDataset:
        hp = self.hparams
        if pairing == "listed" and pairs_file is None and not (self.root / split / "pairs.json").exists():
            pairing = "self"  # no pairs file: validate on self-pairs
        return dataset_class(
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
        if stage == "predict" and self.predict_set is None:
            self.predict_set = self._dataset(
                hp.predict_split, hp.predict_pairing, hp.predict_pairs_file, augment=False,
                limit=hp.max_predict_samples, dataset_class=NamedPairDataset,
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

    def predict_dataloader(self) -> DataLoader:
        hp = self.hparams
        return self._loader(self.predict_set, hp.predict_batch_size or hp.val_batch_size or hp.batch_size, shuffle=False)


class NamedPairDataset(PairDataset):
    """PairDataset items plus where the pair comes from, for naming generated files: ``exemplar_name`` /
    ``target_name`` (file stems) and ``exemplar_path`` / ``target_path`` (the exemplar image, the target
    label map)."""

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        if self.pairing == "listed":
            pair = self.pairs[index]
            exemplar, target = Path(pair.exemplar), Path(pair.target_labels)
            exemplar_labels = Path(pair.exemplar_labels)
        else:
            scene = self.source.scenes[index]
            if self.pairing == "random":  # the same draw as PairDataset.__getitem__
                rng = random.Random(self.seed * 1_000_003 + index)
                other = rng.randrange(len(self.source) - 1)
                ex_scene = self.source.scenes[other + (other >= index)]
            else:
                ex_scene = scene
            exemplar, exemplar_labels, target = Path(ex_scene.image_path), Path(ex_scene.label_path), Path(scene.label_path)
        item.update(exemplar_name=exemplar.stem, target_name=target.stem, exemplar_path=str(exemplar),
                    exemplar_labels_path=str(exemplar_labels), target_path=str(target))
        return item
