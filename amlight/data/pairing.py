"""Exemplar-target pairs: which exemplar each target is drawn with, and the joint augmentation.

- ``self``: the exemplar is another view (independent crop / flip / scale) of the target's own scene,
  so the target image is the ground truth for "this layout in that appearance" (the training default);
- ``random``: the exemplar is another scene, chosen deterministically per index;
- ``listed``: (exemplar, target labels, ground truth) triples from a pairs JSON file.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from amlight.data.io import check_pair, load_image, load_labels
from amlight.data.registry import SceneSource

Pairing = Literal["self", "random", "listed"]
PAIRINGS = ("self", "random", "listed")


class PairsFileError(ValueError):
    pass


@dataclass(frozen=True)
class ListedPair:
    exemplar: Path
    exemplar_labels: Path
    target_labels: Path
    ground_truth: Path | None


def read_pairs_file(path: str | Path) -> list[ListedPair]:
    """Read a pairs JSON ({"pairs": [{exemplar, exemplar_labels, target_labels, ground_truth?}]});
    relative paths are relative to the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise PairsFileError(f"pairs file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PairsFileError(f"pairs file {path} is not valid JSON: {e}") from None
    entries = data.get("pairs") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise PairsFileError(f"pairs file {path} must hold a non-empty list under 'pairs'")
    base = path.parent
    pairs = []
    for i, entry in enumerate(entries):
        missing = [k for k in ("exemplar", "exemplar_labels", "target_labels") if k not in entry]
        if missing:
            raise PairsFileError(f"pairs file {path}, entry {i}: missing key(s) {missing}")
        gt = entry.get("ground_truth") or entry.get("target")
        pairs.append(ListedPair(
            base / entry["exemplar"], base / entry["exemplar_labels"], base / entry["target_labels"],
            None if gt is None else base / gt,
        ))
    return pairs


def choose_pairing(pairing: str, pairs_file: str | Path | None, default_file: Path,
                   role: str = "validation", flag: str = "--data.init_args.val_pairing") -> tuple[str, str]:
    """(pairing actually used, one line saying which and why) for ``role`` (validation, predict).

    ``listed`` without an explicit ``pairs_file`` reads ``default_file`` when it exists and otherwise
    falls back to self-pairs: each target is then its own exemplar, so the loss and the samples see the
    answer in the exemplar. The line says so, so that this is never silent.
    """
    if pairing == "listed":
        path = Path(pairs_file) if pairs_file else Path(default_file)
        if pairs_file or path.is_file():
            return "listed", f"{role} pairing: listed, the exemplar/target pairs of {path}"
        why = ("so the validation loss and sample grids see the answer in the exemplar" if role == "validation"
               else "so the exemplar holds the answer")
        return "self", (f"{role} pairing: self-pairs (each target is its own exemplar, {why}), because {flag} is "
                        f"listed and there is no {path}. Write "
                        f"that pairs file for held-out exemplars, or set {flag} random (other scenes) or self "
                        "to choose self-pairs knowingly")
    if pairing == "self":
        return "self", f"{role} pairing: self-pairs ({flag} self: each target is its own exemplar)"
    return pairing, f"{role} pairing: {pairing} ({flag} {pairing}: each target's exemplar is another scene)"


def _to_tensors(image: np.ndarray, labels: np.ndarray):
    return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)), tv_tensors.Mask(
        torch.from_numpy(np.ascontiguousarray(labels)).long()
    )


def _to_model_range(image: torch.Tensor) -> torch.Tensor:
    return image.float().div(127.5).sub(1.0)


class PairDataset(Dataset):
    """Items: image, labels (the target), exemplar_image, exemplar_labels, name.

    Images are float in [-1, 1] (3, H, W); labels int64 (H, W), resized with nearest only (torchvision
    resizes ``tv_tensors.Mask`` with nearest interpolation).
    """

    def __init__(
        self,
        source: SceneSource,
        pairing: Pairing,
        size: tuple[int, int],
        augment: bool = True,
        scale: tuple[float, float] = (0.6, 1.0),
        hflip: bool = True,
        pairs: list[ListedPair] | None = None,
        seed: int = 0,
        limit: int | None = None,
    ):
        if pairing not in PAIRINGS:
            raise ValueError(f"unknown pairing {pairing!r}; choose one of {', '.join(PAIRINGS)}")
        if pairing == "listed" and not pairs:
            raise ValueError("pairing 'listed' needs a pairs file")
        if pairing == "random" and len(source) < 2:
            raise ValueError("pairing 'random' needs at least two scenes")
        self.source, self.pairing, self.pairs, self.seed = source, pairing, pairs, seed
        self.size = tuple(size)
        aspect = self.size[1] / self.size[0]
        if augment:
            self.view = v2.Compose([
                v2.RandomResizedCrop(self.size, scale=tuple(scale), ratio=(aspect * 0.8, aspect * 1.25), antialias=True),
                v2.RandomHorizontalFlip(0.5 if hflip else 0.0),
            ])
        else:
            self.view = v2.Compose([v2.Resize(min(self.size), antialias=True), v2.CenterCrop(self.size)])
        n = len(pairs) if pairing == "listed" else len(source)
        self.length = n if limit is None else min(n, limit)

    def __len__(self) -> int:
        return self.length

    def _view(self, image: np.ndarray, labels: np.ndarray):
        img, lab = self.view(*_to_tensors(image, labels))
        return _to_model_range(img), lab.as_subclass(torch.Tensor)

    def _listed(self, index: int) -> dict:

        pair = self.pairs[index]
        # The source's own decoding (label format, id map: Cityscapes labelIds -> train ids), not just
        # its classes: a raw-id label file read as train ids would be silently wrong.
        read_labels = getattr(self.source, "read_label_file", None) or (
            lambda path: load_labels(path, self.source.metadata))
        ex_img, ex_lab = load_image(pair.exemplar), read_labels(pair.exemplar_labels)
        check_pair(ex_img, ex_lab, pair.exemplar, pair.exemplar_labels)
        tgt_lab = read_labels(pair.target_labels)
        if pair.ground_truth is not None:
            gt = load_image(pair.ground_truth)
            check_pair(gt, tgt_lab, pair.ground_truth, pair.target_labels)
        else:  # no ground truth: a grey placeholder keeps batches uniform; `has_ground_truth` says so
            gt = np.full((*tgt_lab.shape, 3), 127, np.uint8)
        image, labels = self._view(gt, tgt_lab)
        ex_image, ex_labels = self._view(ex_img, ex_lab)
        return {
            "image": image, "labels": labels, "exemplar_image": ex_image, "exemplar_labels": ex_labels,
            "name": pair.target_labels.stem, "has_ground_truth": pair.ground_truth is not None,
        }

    def __getitem__(self, index: int) -> dict:
        if self.pairing == "listed":
            return self._listed(index)
        image, labels = self.source.load(index)
        if self.pairing == "self":
            ex_image, ex_labels = image, labels
        else:
            rng = random.Random(self.seed * 1_000_003 + index)
            other = rng.randrange(len(self.source) - 1)
            ex_image, ex_labels = self.source.load(other + (other >= index))
        t_img, t_lab = self._view(image, labels)
        e_img, e_lab = self._view(ex_image, ex_labels)
        return {
            "image": t_img, "labels": t_lab, "exemplar_image": e_img, "exemplar_labels": e_lab,
            "name": self.source.scenes[index].name, "has_ground_truth": self.pairing == "self",
        }
