"""``data check``: read every image/label pair of a dataset once and report everything that is wrong.

Training stops at the first bad file, possibly hours in and inside a DataLoader worker; this reads
the whole dataset up front, collects every problem (unpaired files, unreadable files, size
mismatches, colours outside the palette, out-of-range indices) and summarises which classes occur.
"""
from __future__ import annotations

import inspect
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from amlight.data.datasets.folder import FLAT_SPLIT, SplitNotFoundError
from amlight.data.holdout import DEFAULT_VAL_HOLDOUT, holdout_count, train_batches
from amlight.data.io import DataFileError
from amlight.data.pairing import choose_pairing
from amlight.data.registry import (
    DatasetEntry,
    DatasetMetadata,
    UnknownDatasetError,
    get_dataset_entry,
    is_module_spec,
    registered_datasets,
)

# Splits tried for datasets that do not say which splits they have.
_DEFAULT_SPLITS = ("train", "val")


@dataclass(frozen=True)
class Problem:
    file: str
    message: str
    kind: str = "bad file"


@dataclass
class CheckReport:
    """What :func:`check_dataset` found.

    ``counts``: image/label pairs found per split; ``checked``: pairs actually read per split
    (fewer with ``max_files``). ``class_pixels`` / ``class_images``: per class, pixels and number of
    checked label maps containing it. ``problems``: everything that would break training.
    """

    dataset: str
    root: str | None = None
    metadata: DatasetMetadata | None = None
    counts: dict[str, int] = field(default_factory=dict)
    checked: dict[str, int] = field(default_factory=dict)
    class_pixels: list[int] = field(default_factory=list)
    class_images: list[int] = field(default_factory=list)
    ignore_pixels: int = 0
    total_pixels: int = 0
    problems: list[Problem] = field(default_factory=list)
    max_files: int | None = None
    fit_notes: list[str] = field(default_factory=list)  # what `fit` will make of the splits found
    split_notes: dict[str, str] = field(default_factory=dict)  # splits on disk that are not read, and why
    fit_batch_size: int = 8

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def classes_present(self) -> list[int]:
        return [i for i, n in enumerate(self.class_pixels) if n > 0]

    @property
    def classes_missing(self) -> list[int]:
        return [i for i, n in enumerate(self.class_pixels) if n == 0]

    def add_problem(self, error: BaseException, file: str | Path | None = None) -> None:
        if isinstance(error, DataFileError):
            problem = Problem(error.path, error.detail, error.kind)
        else:
            problem = Problem(str(file or self.root or self.dataset), f"{type(error).__name__}: {error}",
                              "unexpected error")
        if problem not in self.problems:  # a dataset-wide problem (classes.yaml) is met by every split
            self.problems.append(problem)


def _resolve(name_or_dir: str, root: str | Path | None) -> tuple[DatasetEntry, Path]:
    name_or_dir = str(name_or_dir)
    known = registered_datasets()
    if name_or_dir not in known and not is_module_spec(name_or_dir):
        if not Path(name_or_dir).is_dir():
            raise UnknownDatasetError(
                f"{name_or_dir!r} is neither a registered dataset nor an existing folder; registered datasets: "
                f"{', '.join(known)} (a folder with images/, labels/ and classes.yaml works as a path)"
            )
        if root is not None:
            raise ValueError(f"{name_or_dir!r} is a folder: pass it alone, or a dataset name with --root")
        return get_dataset_entry("folder"), Path(name_or_dir)
    entry = get_dataset_entry(name_or_dir)
    root = root if root is not None else entry.default_root
    if root is None:
        raise ValueError(f"dataset {entry.name!r} needs a root folder (--root DIR)")
    return entry, Path(root)


def _build(entry: DatasetEntry, root: Path, split: str):
    # Non-strict building turns unpaired files into problems instead of one exception, so they are
    # reported along with everything else; builders that cannot do that are built strictly.
    params = inspect.signature(entry.builder).parameters.values()
    if any(p.name == "strict" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        try:
            return entry.builder(root=root, split=split, strict=False)
        except TypeError as exc:  # **kwargs that end somewhere without `strict`
            if "strict" not in str(exc):
                raise
    return entry.builder(root=root, split=split)


def _check_one(source, index: int) -> tuple[np.ndarray | None, int, int, list]:
    """(per-class pixel counts or None, ignored pixels, all pixels, problems) of one scene.

    Workers return counts rather than label maps so results waiting to be consumed in order stay small.
    """
    if hasattr(source, "diagnose"):
        labels, problems = source.diagnose(index)
    else:
        try:
            labels, problems = source.load(index)[1], []
        except Exception as exc:  # noqa: BLE001 - a check reports whatever breaks loading
            labels, problems = None, [exc]
    if labels is None:
        return None, 0, 0, problems
    labels = np.asarray(labels)
    num_classes = source.metadata.num_classes
    valid = labels[(labels >= 0) & (labels < num_classes)]
    per_class = np.bincount(valid.reshape(-1), minlength=num_classes)[:num_classes]
    ignored = int(np.count_nonzero(labels == source.metadata.ignore_index))
    return per_class, ignored, labels.size, problems


def _scene_file(source, index: int) -> str | None:
    try:
        return str(source.scenes[index].label_path)
    except (AttributeError, IndexError, TypeError):
        return None


def check_dataset(
    name_or_dir: str,
    root: str | Path | None = None,
    split: str | None = None,
    max_files: int | None = None,
    workers: int | None = None,
    batch_size: int = 8,
    train_split: str = "train",
    val_split: str = "val",
    val_holdout: float = DEFAULT_VAL_HOLDOUT,
    drop_last: bool = True,
    val_pairing: str = "listed",
    val_pairs_file: str | Path | None = None,
) -> CheckReport:
    """Load every image/label pair of a dataset (all its splits unless ``split``) and report all problems.

    ``name_or_dir`` is a registered dataset name (``root`` then says where it lives) or a folder in
    the ``folder`` format. ``max_files`` limits the pairs read per split. Raises
    :class:`UnknownDatasetError` for an unknown name and ValueError for a missing root; everything
    wrong with the data itself ends up in :attr:`CheckReport.problems`. ``batch_size`` ... ``drop_last``,
    ``val_pairing`` and ``val_pairs_file`` are the DataModule's settings (its defaults): :attr:`CheckReport.fit_notes`
    says what ``fit`` will do with the splits found (held-out validation slice, which pairing validation
    uses and why, batches per epoch, no batch at all). :attr:`CheckReport.split_notes` names the splits on
    disk that the dataset does not read (an official test split without labels, coarse-only splits).
    """
    if max_files is not None and max_files < 1:
        raise ValueError(f"max_files must be at least 1, got {max_files}")
    entry, root = _resolve(name_or_dir, root)
    report = CheckReport(dataset=entry.name, root=str(root), metadata=entry.metadata, max_files=max_files)

    if split is not None:
        splits = [split]
    else:
        lister = entry.extra.get("splits")
        # With no split found on disk, building "train" still runs and yields the builder's own
        # explanation of the layout it expected.
        splits = (list(lister(root)) if lister else list(_DEFAULT_SPLITS)) or ["train"]
    guessed_splits = split is None and not entry.extra.get("splits")
    unreadable = entry.extra.get("unreadable_splits")
    if unreadable is not None:
        report.split_notes = {name: why for name, why in unreadable(root).items() if split in (None, name)}

    pixels = images = None
    unbuilt: set[str] = set()  # splits that could not be read at all (their problems say why)
    unpaired: dict[str, int] = {}  # split -> unpaired files, which strict pairing (fit's default) refuses
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for split_name in splits:
            try:
                source = _build(entry, root, split_name)
            except Exception as exc:  # noqa: BLE001 - report it and check the other splits
                if guessed_splits and split_name != train_split and isinstance(exc, SplitNotFoundError):
                    continue  # a guessed val split that is not there: fit holds out a slice (see fit_notes)
                report.add_problem(exc, root)
                unbuilt.add(split_name)
                continue
            for problem in getattr(source, "problems", ()):
                report.add_problem(problem)
                if getattr(problem, "kind", None) == "missing partner file":
                    unpaired[split_name] = unpaired.get(split_name, 0) + 1
            metadata = source.metadata
            if report.metadata is None:
                report.metadata = metadata
            if pixels is None:
                pixels = np.zeros(metadata.num_classes, dtype=np.int64)
                images = np.zeros(metadata.num_classes, dtype=np.int64)
            total = len(source)
            count = total if max_files is None else min(total, max_files)
            report.counts[split_name] = total
            report.checked[split_name] = count
            results = pool.map(partial(_check_one, source), range(count))
            for index, (per_class, ignored, size, problems) in enumerate(results):
                if per_class is not None:
                    report.total_pixels += size
                    report.ignore_pixels += ignored
                    pixels += per_class
                    images += per_class > 0
                for problem in problems:
                    report.add_problem(problem, _scene_file(source, index))

    if split is None and not unbuilt:  # fit's arithmetic on splits that could not be read would be false
        report.fit_batch_size = batch_size
        report.fit_notes = fit_notes(report.counts, batch_size, train_split, val_split, val_holdout, drop_last)
        if train_split in report.counts or FLAT_SPLIT in report.counts:
            where = 1 if len(report.fit_notes) > 1 else len(report.fit_notes)
            report.fit_notes.insert(where, choose_pairing(val_pairing, val_pairs_file, root / val_split / "pairs.json",
                                                          "validation", "--data.init_args.val_pairing")[1])
        for split_name, count in unpaired.items():
            report.fit_notes.append(
                f"split {split_name!r}: fit refuses its {count} unpaired file(s); dataset_options: {{strict: false}} "
                f"(--data.init_args.dataset_options '{{strict: false}}') keeps its "
                f"{report.counts.get(split_name, 0)} paired scenes and drops them")
    if pixels is not None:
        report.class_pixels = pixels.tolist()
        report.class_images = images.tolist()
        if report.total_pixels and report.total_pixels == report.ignore_pixels:
            report.problems.append(Problem(
                str(root),
                f"every checked label pixel is the ignore label ({report.metadata.ignore_index}), so there "
                "is nothing to train on. Check ignore_index and the label format (index vs colour)",
                "no labelled pixels",
            ))
    return report


def fit_notes(counts: dict[str, int], batch_size: int = 8, train_split: str = "train", val_split: str = "val",
              val_holdout: float = DEFAULT_VAL_HOLDOUT, drop_last: bool = True) -> list[str]:
    """What ExemplarPairDataModule will make of these split sizes, as lines for the user (same arithmetic:
    :mod:`amlight.data.holdout`)."""

    notes: list[str] = []
    flag = "--data.init_args."
    if FLAT_SPLIT in counts and len(counts) == 1:
        notes.append(f"no split folders: every split reads the same {counts[FLAT_SPLIT]} pairs, so validation "
                     "sees the training pairs (make train/ and val/ folders to hold pairs out)")
        num_train = counts[FLAT_SPLIT]
    elif train_split not in counts:
        return [f"no {train_split!r} split: fit needs one ({flag}train_split NAME picks another)"]
    else:
        num_train = counts[train_split]
        if val_split not in counts:
            held = holdout_count(num_train, val_holdout)
            if held:
                notes.append(f"no {val_split!r} split: fit holds out {held} of the {num_train} {train_split!r} pairs "
                             f"for validation (val_holdout {val_holdout}; {flag}val_split NAME uses another split)")
                num_train -= held
            else:
                notes.append(f"no {val_split!r} split and too few {train_split!r} pairs to hold one out: fit needs "
                             f"{flag}val_split NAME (e.g. {train_split}) or a {val_split}/ folder")
        else:
            notes.append(f"validation: the {counts[val_split]} {val_split!r} pairs")
    batches = train_batches(num_train, batch_size, drop_last)
    if batches == 0:
        notes.append(f"{num_train} training pairs, fewer than batch_size {batch_size}: "
                     + ("with drop_last (the default) " if drop_last else "")
                     + f"fit gets no batch and stops. Set {flag}batch_size {max(num_train, 1)} (or less)"
                     + (f", {flag}drop_last false" if drop_last else "") + ", or add pairs")
    else:
        notes.append(f"training: {num_train} pairs, {batches} batch{'es' if batches != 1 else ''} of {batch_size} per epoch"
                     + (" (the incomplete last one dropped)" if drop_last and num_train % batch_size else ""))
    return notes


def format_report(report: CheckReport, max_per_kind: int = 10) -> str:
    """The report as text: pair counts, class statistics, problems grouped by kind, a final verdict line."""
    lines: list[str] = []
    meta = report.metadata
    head = f"Dataset {report.dataset!r}"
    if report.root:
        head += f" at {report.root}"
    if meta is not None:
        head += f": {meta.num_classes} classes, ignore index {meta.ignore_index}"
    lines.append(head)

    if report.counts:
        width = max(len(s) for s in report.counts)
        for split, total in report.counts.items():
            checked = report.checked.get(split, total)
            note = "" if checked == total else f" ({checked} checked, --max-files {report.max_files})"
            lines.append(f"  {split:<{width}}  {total} image/label pairs{note}")
    elif not report.problems:  # with problems, they say why nothing was read
        lines.append("  no image/label pairs found")

    labelled = sum(report.class_pixels)
    if meta is not None and report.total_pixels:
        lines.append("")
        partial = " (in the checked files)" if report.checked != report.counts else ""
        lines.append(f"Classes present{partial}: {len(report.classes_present)} of {meta.num_classes} "
                     "(share of labelled pixels, label maps containing the class)")
        name_width = max(len(meta.class_names[i]) for i in report.classes_present) if report.classes_present else 0
        for i in report.classes_present:
            share = 100.0 * report.class_pixels[i] / labelled
            lines.append(f"  {i:>3} {meta.class_names[i]:<{name_width}}  {share:6.2f}%  {report.class_images[i]} files")
        lines.append(f"  ignored pixels ({meta.ignore_index}): "
                     f"{100.0 * report.ignore_pixels / report.total_pixels:.2f}% of all pixels")
        missing = report.classes_missing
        if missing:
            names = ", ".join(f"{i} {meta.class_names[i]}" for i in missing)
            lines.append(f"Classes never present{partial}: {names}")
        else:
            lines.append("Every class is present.")

    if report.problems:
        by_kind: dict[str, list[Problem]] = defaultdict(list)
        for problem in report.problems:
            by_kind[problem.kind].append(problem)
        lines.append("")
        lines.append(f"Problems ({len(report.problems)}):")
        for kind, problems in by_kind.items():
            lines.append(f"  {kind} ({len(problems)}):")
            for problem in problems[:max_per_kind]:
                lines.append(f"    {problem.file}")
                lines.append(f"      {problem.message}")
            if len(problems) > max_per_kind:
                lines.append(f"    ... and {len(problems) - max_per_kind} more")

    if report.split_notes:
        lines.append("")
        lines.append("Splits on disk that are not read:")
        lines += [f"  {name}: {why}" for name, why in report.split_notes.items()]

    if report.fit_notes:
        lines.append("")
        lines.append(f"For fit (batch_size {report.fit_batch_size}; another with --batch-size N):")
        lines += [f"  {note}" for note in report.fit_notes]

    lines.append("")
    pairs = sum(report.checked.values())
    if report.ok:
        lines.append(f"OK: {pairs} image/label pairs in {len(report.checked)} split(s) read without problems.")
    else:
        files = len({p.file for p in report.problems})
        kinds = Counter(p.kind for p in report.problems)
        summary = ", ".join(f"{kind}: {n}" for kind, n in kinds.items())
        lines.append(f"FAILED: {len(report.problems)} problems in {files} file(s) ({summary}); "
                     "fix them before training.")
    return "\n".join(lines)
