"""``python -m amlight metrics``: score a folder of generated images against reference images.

Files are matched by name (relative path without suffix) across the folders: ``--pred out/a.png``
pairs with ``--ref ref/a.jpg``, ``--labels labels/a.png`` and ``--exemplars ex/a.png``. Every
predicted image needs its partners; reference images without a prediction are allowed (they only
enter FID's real set). Prints a table (metric, mean, ±95% CI, n) and writes per-image values and the
summary as JSON with ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from amlight.cli.commands import parse_or_exit_code

PROG = "python -m amlight metrics"
ALL_METRICS = ("psnr", "ssim", "delta_e", "label_miou", "fid", "self_sim", "clip", "seg_miou")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_LISTED = 5


class _InputError(Exception):
    """A problem with the command's inputs; ``code`` 2 for usage, 1 for files and weights."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Score generated images against references, matched by file name across folders. "
        "Ground truth (synthetic pairs): psnr, ssim, delta_e (per-class mean-colour CIEDE2000), label_miou "
        "(label recovery from ground-truth class colours). Paper metrics, from local weights only: self_sim "
        "(DINO ViT, --dino), clip (I_CLIP against --exemplars, --clip), fid (Inception, --inception), "
        "seg_miou (a segmenter, --segmenter).",
    )
    parser.add_argument("--pred", metavar="DIR", required=True, help="generated images")
    parser.add_argument("--ref", metavar="DIR", required=True,
                        help="reference images: the ground truth (synthetic pairs) or the target's real image; "
                        "all of them form FID's real set")
    parser.add_argument("--labels", metavar="DIR", help="target label maps (for delta_e, label_miou, seg_miou)")
    parser.add_argument("--data", metavar="NAME_OR_DIR",
                        help="dataset whose classes the labels use: a registered name or a folder with classes.yaml")
    parser.add_argument("--label-format", choices=("auto", "index", "color"), default=None,
                        help="how label files encode classes (default: the dataset's classes.yaml, else auto)")
    parser.add_argument("--exemplars", metavar="DIR", help="each output's exemplar image, same name (for clip)")
    parser.add_argument("--metrics", metavar="LIST", type=_metric_list, default=None,
                        help=f"comma-separated, from {','.join(ALL_METRICS)} (default: every metric the given "
                        "folders and weights allow)")
    parser.add_argument("--dino", metavar="PATH", help="DINO ViT folder (save_pretrained) for self_sim")
    parser.add_argument("--clip", metavar="PATH", help="CLIP folder (save_pretrained) for clip")
    parser.add_argument("--inception", metavar="PATH",
                        help="FID Inception weights file (weights-inception-2015-12-05-6726825d.pth; "
                        "needs torch-fidelity)")
    parser.add_argument("--segmenter", metavar="PATH",
                        help="semantic segmentation model folder (save_pretrained) for seg_miou")
    parser.add_argument("--delta-e", choices=("ciede2000", "de76"), default="ciede2000",
                        help="colour difference formula of delta_e (default: %(default)s)")
    parser.add_argument("--no-erode", action="store_true",
                        help="use whole class regions for mean colours (default: regions eroded by 1 px)")
    parser.add_argument("--batch-size", type=_positive, default=8,
                        help="images per network call (default: %(default)s)")
    parser.add_argument("--device", default=None, help="torch device for the networks (default: cuda if available)")
    parser.add_argument("--out", metavar="FILE.json", help="write the summary and per-image values here")
    return parser


def _metric_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {', '.join(ALL_METRICS)}")
    return list(dict.fromkeys(names))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


# --- inputs ------------------------------------------------------------------------------------


def _choose_metrics(args) -> list[str]:
    available = {
        "psnr": None, "ssim": None,
        "delta_e": None if args.labels else "--labels DIR and --data NAME_OR_DIR",
        "label_miou": None if args.labels else "--labels DIR and --data NAME_OR_DIR",
        "self_sim": None if args.dino else "--dino PATH (a DINO ViT folder)",
        "clip": None if (args.clip and args.exemplars) else "--clip PATH and --exemplars DIR",
        "fid": None if args.inception else "--inception PATH (the Inception weights file)",
        "seg_miou": None if (args.segmenter and args.labels) else "--segmenter PATH and --labels DIR",
    }
    if args.metrics is None:
        return [m for m in ALL_METRICS if available[m] is None]
    missing = [f"{m} needs {available[m]}" for m in args.metrics if available[m] is not None]
    if missing:
        raise _InputError("; ".join(missing), code=2)
    return list(args.metrics)


def _list_images(folder: str, what: str, suffixes=IMAGE_SUFFIXES) -> dict[str, Path]:
    from amlight.data.datasets.folder import list_files

    directory = Path(folder)
    if not directory.is_dir():
        raise _InputError(f"{what} folder {directory} does not exist" if not directory.exists()
                          else f"{what} path {directory} is not a folder")
    files = list_files(directory, suffixes, what=what)
    if not files:
        raise _InputError(f"no {what} ({', '.join(suffixes)}) found in {directory}")
    return files


def _listing(keys) -> str:
    keys = sorted(keys)
    text = ", ".join(keys[:_LISTED])
    return text + (f", ... ({len(keys) - _LISTED} more)" if len(keys) > _LISTED else "")


def _match(pred: dict[str, Path], other: dict[str, Path], what: str, other_dir: str) -> None:
    common = set(pred) & set(other)
    if not common:
        raise _InputError(f"no file names match between --pred and {what} {other_dir}: "
                          f"pred has {_listing(pred)}; {what} has {_listing(other)}")
    missing = set(pred) - set(other)
    if missing:
        raise _InputError(f"{len(missing)} of {len(pred)} predicted image(s) have no file of the same name in "
                          f"{what} {other_dir}: {_listing(missing)}")


def _metadata_and_settings(data: str | None):
    from amlight.data.datasets.folder import CLASSES_FILE, load_classes_yaml, read_classes_settings
    from amlight.data.registry import UnknownDatasetError, get_dataset_entry, is_module_spec, registered_datasets

    if data is None:
        raise _InputError("--labels needs --data NAME_OR_DIR to know the classes (a registered dataset name "
                          f"such as {', '.join(registered_datasets())}, or a folder with {CLASSES_FILE})", code=2)
    if data in registered_datasets() or is_module_spec(data):  # a name, or my_pkg.my_module:NAME
        try:
            entry = get_dataset_entry(data)
        except UnknownDatasetError as exc:
            raise _InputError(f"--data: {exc}", code=2) from None
        if entry.metadata is not None:
            return entry.metadata, {}
    folder = Path(data)
    if folder.is_dir():
        classes = folder / CLASSES_FILE
        if not classes.is_file():
            raise _InputError(f"--data {folder} has no {CLASSES_FILE}; pass a registered dataset name "
                              f"({', '.join(registered_datasets())}) or a folder with {CLASSES_FILE}")
        return load_classes_yaml(classes), read_classes_settings(classes)
    raise _InputError(f"--data {data!r} is neither a registered dataset with fixed classes "
                      f"({', '.join(n for n in registered_datasets() if get_dataset_entry(n).metadata is not None)}) "
                      f"nor a folder with {CLASSES_FILE}")


def _check_size(name: str, pred_path: Path, shape, other_path: Path, other_shape, what: str) -> None:
    if tuple(shape[:2]) != tuple(other_shape[:2]):
        raise _InputError(f"size mismatch for {name!r}: {pred_path} is {shape[1]}x{shape[0]} (WxH) but {what} "
                          f"{other_path} is {other_shape[1]}x{other_shape[0]}")


# --- scoring -----------------------------------------------------------------------------------


def run(args, progress=lambda message: None) -> dict:
    """Score the folders named in ``args``; the JSON record (summary, per-image values, settings)."""
    from amlight.data.io import load_image, load_labels
    from amlight.metrics import (
        ClipImageSimilarity,
        FIDMetric,
        SegmentationMIoU,
        SelfSimilarityDistance,
        class_color_error,
        ground_truth_scores,
        images_from_uint8,
    )
    from amlight.metrics.report import json_number, summarize

    metrics = _choose_metrics(args)
    pred_files = _list_images(args.pred, "predicted images")
    ref_files = _list_images(args.ref, "reference images")
    _match(pred_files, ref_files, "--ref", args.ref)
    label_metrics = [m for m in metrics if m in ("delta_e", "label_miou", "seg_miou")]
    label_files = exemplar_files = None
    metadata, settings = None, {}
    if label_metrics:
        metadata, settings = _metadata_and_settings(args.data)
        label_files = _list_images(args.labels, "labels", suffixes=(".png",))
        _match(pred_files, label_files, "--labels", args.labels)
    if "clip" in metrics:
        exemplar_files = _list_images(args.exemplars, "exemplars")
        _match(pred_files, exemplar_files, "--exemplars", args.exemplars)
    label_format = args.label_format or settings.get("label_format", "auto")

    paired = [m for m in metrics if m in ("psnr", "ssim", "delta_e", "label_miou", "self_sim")]
    gt_metrics = [m for m in metrics if m in ("psnr", "ssim", "delta_e", "label_miou")]
    models = {}
    if "self_sim" in metrics:
        progress(f"loading DINO ViT from {args.dino}")
        models["self_sim"] = SelfSimilarityDistance(args.dino, device=args.device, batch_size=args.batch_size)
    if "clip" in metrics:
        progress(f"loading CLIP from {args.clip}")
        models["clip"] = ClipImageSimilarity(args.clip, device=args.device, batch_size=args.batch_size)
    if "seg_miou" in metrics:
        progress(f"loading segmenter from {args.segmenter}")
        models["seg_miou"] = SegmentationMIoU(args.segmenter, metadata.num_classes, metadata.ignore_index,
                                              device=args.device, batch_size=args.batch_size)
    fid = None
    if "fid" in metrics:
        progress(f"loading Inception weights from {args.inception}")
        fid = FIDMetric(weights_path=args.inception, device=args.device)

    names = sorted(pred_files)
    per_image: dict[str, dict[str, float]] = {name: {} for name in names}
    per_class_delta_e: list[np.ndarray] = []
    for k, name in enumerate(names):
        pred_np = load_image(pred_files[name])
        pred = images_from_uint8(pred_np)
        ref_np = None
        if paired:
            ref_np = load_image(ref_files[name])
            _check_size(name, pred_files[name], pred_np.shape, ref_files[name], ref_np.shape, "reference")
        labels = None
        if label_metrics:
            labels = load_labels(label_files[name], metadata, label_format=label_format,
                                 unknown_colors=settings.get("unknown_colors", "error"),
                                 ignore_colors=settings.get("ignore_colors", ()))
            _check_size(name, pred_files[name], pred_np.shape, label_files[name], labels.shape, "label map")
            labels = labels[None]
        scores: dict[str, np.ndarray] = {}
        ref = images_from_uint8(ref_np) if ref_np is not None else None
        others = [m for m in gt_metrics if m != "delta_e"]
        if others:
            scores.update(ground_truth_scores(
                pred, ref, labels, metadata.num_classes if metadata else None,
                metadata.ignore_index if metadata else 255, metrics=others, erode=not args.no_erode))
        if "delta_e" in gt_metrics:
            colour = class_color_error(pred, ref, labels, metadata.num_classes, metadata.ignore_index,
                                       formula=args.delta_e, erode=not args.no_erode)
            scores["delta_e"] = colour.per_image
            per_class_delta_e.append(colour.per_class[0])
        if "self_sim" in models:
            scores["self_sim"] = models["self_sim"](pred, ref)
        if "clip" in models:
            scores["clip"] = models["clip"](pred, images_from_uint8(load_image(exemplar_files[name])))
        if "seg_miou" in models:
            scores["seg_miou"] = models["seg_miou"](pred, labels)
        if fid is not None:
            fid.update(pred, real=False)
        per_image[name] = {m: float(scores[m][0]) for m in metrics if m in scores}
        if (k + 1) % 50 == 0 or k + 1 == len(names):
            progress(f"scored {k + 1}/{len(names)} images")

    summary = {m: summarize([per_image[n][m] for n in names]) for m in metrics if m != "fid"}
    extra = {}
    if fid is not None:
        for ref_name in sorted(ref_files):
            fid.update(images_from_uint8(load_image(ref_files[ref_name])), real=True)
        try:
            value = fid.compute()
        except ValueError as exc:
            raise _InputError(str(exc)) from exc
        summary["fid"] = {"mean": json_number(value), "ci95": None, "n": len(names)}
        extra["fid_real_images"] = len(ref_files)
    if per_class_delta_e:
        table = np.stack(per_class_delta_e)
        extra["delta_e_per_class"] = {metadata.class_names[c]: summarize(table[:, c])
                                      for c in range(metadata.num_classes) if not np.isnan(table[:, c]).all()}
    if "seg_miou" in models:
        extra["seg_miou_dataset"] = models["seg_miou"].dataset_miou()

    return {
        "inputs": {"pred": str(args.pred), "ref": str(args.ref), "labels": args.labels, "data": args.data,
                   "exemplars": args.exemplars, "num_images": len(names)},
        "settings": {"metrics": metrics, "delta_e_formula": args.delta_e, "erode": not args.no_erode,
                     "dino": args.dino, "clip": args.clip, "inception": args.inception, "segmenter": args.segmenter,
                     "label_format": label_format},
        "summary": summary,
        **{key: json_number(value) if isinstance(value, float) else value for key, value in extra.items()},
        "per_image": {n: {m: json_number(v) for m, v in per_image[n].items()} for n in names},
    }


def write_json_atomic(path: Path, data: dict) -> None:
    from amlight.utils.atomic_write import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, allow_nan=False) + "\n"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_or_exit_code(parser, argv)
    if isinstance(args, int):
        return args
    from amlight.data.io import DataFileError
    from amlight.metrics import MetricWeightsError, MissingDependencyError
    from amlight.metrics.report import format_table

    def progress(message: str) -> None:
        print(f"[metrics] {message}", file=sys.stderr, flush=True)

    try:
        record = run(args, progress)
    except _InputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except (DataFileError, MetricWeightsError, MissingDependencyError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(format_table(record["summary"]))
    if "fid_real_images" in record:
        print(f"\nFID: {record['inputs']['num_images']} generated vs {record['fid_real_images']} real images")
    if args.out:
        out = Path(args.out)
        write_json_atomic(out, record)
        print(f"\nwrote {out}")
    return 0
