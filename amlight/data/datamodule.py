"""The LightningDataModule of exemplar-target pairs, for any registered dataset."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from amlight.data.datasets.folder import SplitNotFoundError
from amlight.data.holdout import DEFAULT_VAL_HOLDOUT, split_off_holdout, train_batches
from amlight.data.io import DataFileError
from amlight.data.pairing import PairDataset, Pairing, choose_pairing, read_pairs_file
from amlight.data.registry import DatasetMetadata, resolve_dataset
from amlight.data.synthetic import ensure_synthetic_dataset, read_manifest


class ExemplarPairDataModule(L.LightningDataModule):
    """Args:
        dataset: a registered dataset name (see ``python -m amlight data list``) or a folder path. A folder
            path is the data read: a ``root`` that is not itself a folder dataset (e.g. the quickstart
            config's data/synthetic) is set aside with a note; a ``root`` that is another folder dataset
            is an error naming both.
        root: where a named dataset lives (default: the dataset's registered default, e.g. data/synthetic).
        resolution: training size, an int (square) or [height, width]. Labels are resized with nearest only.
        batch_size: training batch size (per process in a multi-GPU run).
        val_batch_size: validation batch size (default: batch_size).
        num_workers: DataLoader worker processes (0: load in the main process).
        train_split / val_split: the dataset's split names read for training and validation.
        train_pairing / val_pairing: self | random | listed (see amlight.data.pairing).
        train_pairs_file: pairs JSON for listed training (train_pairing: listed); default
            ``<root>/<train_split>/pairs.json``.
        val_pairs_file: pairs JSON for listed validation; default ``<root>/<val_split>/pairs.json`` if it exists,
            else validation uses self-pairs, and fit's log says so (``val_pairing_note``).
        dataset_options: keyword arguments of the dataset's builder, e.g. ``{strict: false}`` (keep the paired
            scenes of a split with unpaired files; fit's log counts the files dropped) or, for cityscapes,
            ``{annotations: coarse}`` (read gtCoarse).
        scale: training augmentation: each view of a pair is a random resized crop covering this range
            (min, max) of the image's area (validation resizes and centre-crops only).
        hflip: training augmentation: flip each view of a pair horizontally half of the time.
        synthetic: generator parameters when dataset is "synthetic": the data is generated on first use.
        max_val_samples: cap on validation items (validation renders samples, which costs time on a CPU).
        val_holdout: when the dataset has split folders but no ``val_split`` (a folder dataset with only
            train/), this share of the train scenes (at least one) is held out for validation instead, the
            same scenes on every run (drawn with ``seed``); 0 makes a missing val split an error.
        seed: the draws of random pairing (each target's exemplar) and of the held-out validation slice.
        drop_last: drop the last incomplete training batch (default). A train split with fewer pairs
            than ``batch_size`` then gives no batch at all, which ``setup`` reports as an error.
        predict_split / predict_pairing / predict_pairs_file / max_predict_samples: the pairs ``predict``
            generates (``python -m amlight predict``; default: the listed pairs of
            ``<root>/<predict_split>/pairs.json``, all of them), unaugmented.
        predict_batch_size: batch size of ``predict`` (default: val_batch_size, then batch_size).
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
        val_holdout: float = DEFAULT_VAL_HOLDOUT,
        drop_last: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.entry, self.root, self.root_note = resolve_dataset(dataset, root)
        self.size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        self._metadata: DatasetMetadata | None = self.entry.metadata
        self.train_set = self.val_set = self.predict_set = None
        self._train_src = self._val_src = None  # scene sources, after any held-out val slice
        self.holdout_note: str | None = None
        self.val_pairing_note: str | None = None  # which pairing validation uses, and why
        self.train_pairing_note: str | None = None
        self.predict_pairing_note: str | None = None
        self.dropped_notes: dict[str, str] = {}  # split -> unpaired files left out (dataset_options strict: false)
        self._logged: set[str] = set()

    # --- metadata, linked into the model's arguments by the CLI ---
    @property
    def metadata(self) -> DatasetMetadata:
        if self._metadata is None:  # the folder format keeps its classes in the folder

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

            params = self.hparams.synthetic
            if params is None and read_manifest(self.root) is not None:
                return  # no parameters asked for: use the synthetic dataset that is there, however made
            ensure_synthetic_dataset(self.root, **(params or {}))

    def _source(self, split: str):
        if self.entry.name == "synthetic":
            self.prepare_data()  # idempotent and cheap once the data exists; covers use without a Trainer
        source = self.entry.builder(root=self.root, split=split, **(self.hparams.dataset_options or {}))
        unpaired = [p for p in getattr(source, "problems", ()) or ()
                    if getattr(p, "kind", "") == "missing partner file"]
        if unpaired and split not in self.dropped_notes:
            shown = ", ".join(Path(p.path).name for p in unpaired[:3])
            self.dropped_notes[split] = (
                f"split {split!r}: {len(unpaired)} unpaired file(s) left out (dataset_options strict: false), "
                f"using its {len(source)} paired scenes; e.g. {shown} (data check lists them all)")
        return source

    def _pairs(self, pairing: str, split: str, pairs_file: str | None):
        if pairing != "listed":
            return None
        path = Path(pairs_file) if pairs_file else self.root / split / "pairs.json"
        return read_pairs_file(path)

    def _val_source(self):
        """The val split's scenes; without a val split, a held-out slice of train (train keeps the rest)."""
        if self._val_src is None:

            hp = self.hparams
            if hp.val_split == hp.train_split:
                self._val_src = self._train_source()
                return self._val_src
            try:
                self._val_src = self._source(hp.val_split)
            except SplitNotFoundError as exc:
                train = self._source(hp.train_split)
                if not hp.val_holdout or hp.val_holdout <= 0 or len(train) < 2:
                    raise DataFileError(
                        exc.path, exc.problem,
                        "Set --data.init_args.val_split to an existing split, or val_holdout > 0 (with at least "
                        "2 train pairs) to validate on a held-out share of train", kind=exc.kind,
                    ) from None
                self._train_src, self._val_src = split_off_holdout(train, hp.val_holdout, hp.seed)
                self.holdout_note = (f"no {hp.val_split!r} split in {self.root}: validating on {len(self._val_src)} of "
                                     f"the {len(train)} {hp.train_split!r} pairs held out (val_holdout "
                                     f"{hp.val_holdout}), training on the other {len(self._train_src)}")
        return self._val_src

    def _train_source(self):
        if self._train_src is None:
            if self.hparams.val_split != self.hparams.train_split:
                self._val_source()  # decides whether a slice of train is held out for validation
            if self._train_src is None:
                self._train_src = self._source(self.hparams.train_split)
        return self._train_src

    def _dataset(self, split: str, pairing: str, pairs_file: str | None, augment: bool, limit=None,
                 dataset_class: type[PairDataset] = PairDataset, source=None, role: str | None = None) -> PairDataset:
        hp = self.hparams
        if role is not None:  # no pairs file for listed pairing: self-pairs, and a note that says so
            key = {"training": "train", "validation": "val", "predict": "predict"}[role]
            pairing, note = choose_pairing(pairing, pairs_file, self.root / split / "pairs.json", role,
                                           f"--data.init_args.{key}_pairing")
            if role == "validation" and self.holdout_note and pairing == "self" and hp.val_pairing == "listed":
                note += f" (the held-out slice of {hp.train_split!r} has no pairs file)"
            setattr(self, f"{key}_pairing_note", note)
        return dataset_class(
            source if source is not None else self._source(split), pairing, self.size, augment=augment,
            scale=hp.scale, hflip=hp.hflip,
            pairs=self._pairs(pairing, split, pairs_file), seed=hp.seed, limit=limit,
        )

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._dataset(hp.train_split, hp.train_pairing, hp.train_pairs_file, augment=True,
                                           source=self._train_source(), role="training")
            self._check_train_batches()
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._dataset(
                hp.val_split, hp.val_pairing, hp.val_pairs_file, augment=False, limit=hp.max_val_samples,
                source=self._val_source(), role="validation",
            )
            self._log_notes(self.root_note, self.holdout_note, *self.dropped_notes.values(), self.val_pairing_note)
            if hp.train_pairing != "self":  # the default needs no word; listed or random do
                self._log_notes(self.train_pairing_note)
        if stage == "predict" and self.predict_set is None:
            self.predict_set = self._dataset(
                hp.predict_split, hp.predict_pairing, hp.predict_pairs_file, augment=False,
                limit=hp.max_predict_samples, dataset_class=NamedPairDataset, role="predict",
            )
            self._log_notes(self.root_note, *self.dropped_notes.values(), self.predict_pairing_note)

    @property
    def notes(self) -> list[str]:
        """What the data setup decided that the user should know (fit logs each line once)."""
        return [n for n in (self.root_note, self.holdout_note, *self.dropped_notes.values(),
                            self.train_pairing_note, self.val_pairing_note, self.predict_pairing_note) if n]

    def _log_notes(self, *notes: str | None) -> None:
        from lightning.pytorch.utilities import rank_zero_info

        for note in notes:
            if note and note not in self._logged:
                self._logged.add(note)
                rank_zero_info(f"amlight: {note}")

    def _check_train_batches(self) -> None:
        # Lightning treats an empty train loader as "nothing to do": a warning, exit 0 and no checkpoint.
        hp = self.hparams
        pairs = len(self.train_set)
        if train_batches(pairs, hp.batch_size, hp.drop_last) > 0:
            return
        what = f"split {hp.train_split!r}" + (" (after the held-out val slice)" if self.holdout_note else "")
        if pairs == 0:
            raise DataFileError(self.root, f"{what} has no training pairs", "Add image/label pairs, or check "
                                "train_split and train_pairs_file", kind="too few pairs")
        raise DataFileError(
            self.root,
            f"{what} has {pairs} training pair(s), fewer than batch_size {hp.batch_size}, and the incomplete "
            "last batch is dropped, so training would get no batch at all",
            f"Set --data.init_args.batch_size {pairs} (or less), --data.init_args.drop_last false, or add pairs",
            kind="too few pairs",
        )

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
            persistent_workers=workers > 0, drop_last=shuffle and self.hparams.drop_last,
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
