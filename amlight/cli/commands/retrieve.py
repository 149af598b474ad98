"""``python -m amlight retrieve``: rank a dataset's exemplars for target label maps.

The database is one dataset split (``--data``/``--split``). Targets are, by default, the same split
(each target never retrieves itself), or another dataset/split (``--targets``), or label files
(``--target-labels``, read with the database's classes). Ranking: see
:mod:`amlight.apps.retrieval` (class coverage first, then layout and class-histogram similarity).

The JSON names every target's top-k exemplars; ``--as-pairs`` writes the top-1 of each target as a
pairs file instead (``{"pairs": [...]}``, read by :func:`amlight.data.pairing.read_pairs_file`).
Paths inside the output file are relative to its folder when they lie below it, absolute otherwise.

Exit status: 0 done, 1 bad input (unknown dataset, missing folder, unreadable label or index file),
2 usage error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from amlight.cli.commands import parse_or_exit_code, int_at_least

EXIT_OK, EXIT_INPUT, EXIT_USAGE = 0, 1, 2
PROG = "amlight retrieve"
_MAX_LISTED = 10


class _InputError(Exception):
    """A user input problem: printed as one line, exit status 1."""


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {value}")
    return value


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a weight in [0, 1], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m amlight retrieve",
        description="Rank a database of (image, label map) pairs for target label maps: exemplars that "
        "have every class of the target first (coverage: fraction of the target's labelled pixels whose "
        "class the exemplar has), then by score = layout_weight * cosine similarity of coarse grid class "
        "layouts + (1 - layout_weight) * class-histogram intersection. Writes JSON; exit status 0 ok, "
        "1 bad input, 2 usage error.",
    )
    parser.add_argument("--data", metavar="NAME_OR_DIR", required=True,
                        help="database: a registered dataset (synthetic, cityscapes, ...) or a folder with classes.yaml")
    parser.add_argument("--root", metavar="DIR", help="where a named database dataset lives")
    parser.add_argument("--split", default="val", help="database split (default: %(default)s)")
    targets = parser.add_mutually_exclusive_group()
    targets.add_argument("--targets", metavar="NAME_OR_DIR_OR_FILE", nargs="+",
                         help="targets: a dataset (name or folder; with --target-root/--target-split) or label "
                         "files (default: the database split itself, each target excluding itself)")
    targets.add_argument("--target-labels", metavar="FILE", nargs="+",
                         help="target label files (PNG), read with the database's classes and palette")
    parser.add_argument("--target-root", metavar="DIR", help="where a named target dataset lives")
    parser.add_argument("--target-split", metavar="S", help="target dataset split (default: --split)")
    parser.add_argument("--top-k", type=int_at_least(1), default=5, metavar="K",
                        help="exemplars per target (default: %(default)s)")
    parser.add_argument("--out", metavar="FILE.json", required=True, help="where to write the result (JSON)")
    parser.add_argument("--as-pairs", action="store_true",
                        help="write the top-1 exemplar of each target as a pairs file ({'pairs': [...]}) "
                        "for `pairing: listed` / generate")
    parser.add_argument("--grid", type=int_at_least(1), default=4, metavar="G",
                        help="layout grid: G x G cells (default: %(default)s)")
    parser.add_argument("--min-area", type=_fraction, default=1e-3, metavar="F",
                        help="a class counts as present in an exemplar from this fraction of its labelled "
                        "pixels (default: %(default)s)")
    parser.add_argument("--layout-weight", type=_weight, default=0.5, metavar="W",
                        help="weight of the layout cosine against the histogram intersection (default: %(default)s)")
    parser.add_argument("--index", metavar="FILE.npz",
                        help="cache of the database index: reused when it was built from the same label files "
                        "(names, sizes, times) with the same grid, (re)built and saved otherwise")
    parser.add_argument("--backend", choices=("numpy", "faiss"), default="numpy",
                        help="numpy: score every entry (default); faiss: pre-select by layout first (large "
                        "databases; needs faiss-cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_or_exit_code(parser, argv)
    if isinstance(args, int):
        return args
    if args.target_root is not None and not args.targets:
        print(f"{PROG}: error: --target-root needs --targets NAME_OR_DIR", file=sys.stderr)
        return EXIT_USAGE
    if args.backend == "faiss":
        from amlight.apps.retrieval import _import_faiss

        try:
            _import_faiss()
        except ImportError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return EXIT_INPUT
    try:
        return _run(args)
    except _InputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT


def _run(args: argparse.Namespace) -> int:
    from amlight.data.registry import UnknownDatasetError, build_dataset, registered_datasets
    from amlight.apps.retrieval import IndexFileError, LabelIndex, describe_score

    started = time.perf_counter()
    progress = not args.no_progress

    def open_dataset(name: str, root: str | None, split: str):
        try:
            return build_dataset(name, root=root, split=split)
        except UnknownDatasetError as exc:
            if os.sep in name or "/" in name or name.startswith("."):  # meant as a folder
                what = "is not a folder" if Path(name).exists() else "dataset folder does not exist"
                raise _InputError(f"{name}: {what} (and it is no registered dataset name: "
                                  f"{', '.join(registered_datasets())})") from None
            raise _InputError(str(exc)) from None
        except ValueError as exc:  # DataFileError (missing folder, split, classes.yaml) and "needs a root"
            raise _InputError(str(exc)) from None

    source = open_dataset(args.data, args.root, args.split)
    if len(source) == 0:
        raise _InputError(f"database {args.data!r} split {args.split!r} has no scenes")
    meta = source.metadata

    # --- targets: None (the database itself) or [(name, label path, image path or None, load labels)] ---
    same_split = False
    if args.target_labels or (args.targets and _are_files(args.targets, args.target_root)):
        files = args.target_labels or args.targets
        target_items = _file_targets(files, source)
        target_desc = {"label_files": len(files)}
    elif args.targets:
        split = args.target_split or args.split
        target_source = open_dataset(args.targets[0], args.target_root, split)
        if list(target_source.metadata.class_names) != list(meta.class_names):
            raise _InputError(
                f"target dataset {args.targets[0]!r} has classes {list(target_source.metadata.class_names)}, "
                f"the database {args.data!r} has {list(meta.class_names)}: class ids must mean the same"
            )
        target_items = _source_targets(target_source)
        target_desc = {"data": args.targets[0], "split": split, "size": len(target_source)}
    else:
        same_split = True
        target_items = None
        target_desc = {"data": args.data, "split": args.split, "size": len(source), "same_as_database": True}

    # --- the database index (optionally cached) ---
    index = None
    if args.index and Path(args.index).exists():
        try:
            cached = LabelIndex.load(args.index)
        except IndexFileError as exc:
            raise _InputError(str(exc)) from None
        if cached.matches_source(source, grid=args.grid):
            index = cached
        else:
            print(f"{PROG}: {args.index} was built from other files or settings; rebuilding it", file=sys.stderr)
    if index is None:
        try:
            index = LabelIndex.from_source(source, grid=args.grid, progress=progress,
                                           info={"data": args.data, "split": args.split})
        except ValueError as exc:  # DataFileError names the file; others are prefixed with it
            raise _InputError(str(exc)) from None
        if args.index:
            index.save(args.index)
    indexed = time.perf_counter()

    by_label_path = {os.path.normcase(p): name for p, name in zip(index.label_paths, index.names) if p}
    options = dict(min_area=args.min_area, layout_weight=args.layout_weight, backend=args.backend)
    out = Path(args.out)
    base = out.parent.resolve() if str(out.parent) else Path.cwd()

    results = []
    n_targets = len(index) if same_split else len(target_items)
    iterator = range(n_targets)
    if progress and n_targets >= 50:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="ranking", unit="target", dynamic_ncols=True)
    for t in iterator:
        if same_split:
            name, label_path, image_path = index.names[t], index.label_paths[t], index.image_paths[t] or None
            matches = index.rank_entry(t, args.top_k, **options)
            counts, exclude = index.counts[t], name
        else:
            name, label_path, image_path, load = target_items[t]
            try:
                labels = load()
            except ValueError as exc:  # DataFileError: names the file
                raise _InputError(str(exc)) from None
            try:
                counts, layout = index.features(labels)
            except ValueError as exc:
                raise _InputError(f"{label_path}: {exc}") from None
            exclude = by_label_path.get(os.path.normcase(os.path.abspath(label_path)))
            matches = index.rank_features(counts, layout, args.top_k, exclude, **options)
        uncovered = index.uncovered_classes_of_counts(counts, args.min_area, exclude)
        results.append({
            "target": name,
            "target_labels": _rel(label_path, base),
            **({"target_image": _rel(image_path, base)} if image_path else {}),
            "matches": [
                {
                    "rank": r + 1,
                    "exemplar": m.name,
                    "image": _rel(m.image_path, base),
                    "labels": _rel(m.label_path, base),
                    "score": round(m.score, 6),
                    "coverage": round(m.coverage, 6),
                    "layout_similarity": round(m.layout_similarity, 6),
                    "histogram_similarity": round(m.histogram_similarity, 6),
                    "missing_classes": [meta.class_names[c] for c in m.missing_classes],
                }
                for r, m in enumerate(matches)
            ],
            "uncovered_classes": [meta.class_names[c] for c in uncovered],
        })
    ranked = time.perf_counter()

    database = {"data": args.data, "root": args.root, "split": args.split, "size": len(index), "grid": index.grid,
                "min_area": args.min_area, "layout_weight": args.layout_weight, "backend": args.backend,
                "classes": list(meta.class_names)}
    document = {
        "database": database,
        "targets_from": target_desc,
        "score": describe_score(args.min_area, args.layout_weight, index.grid),
        "paths": "relative to this file's folder when below it, absolute otherwise",
    }
    if args.as_pairs:
        pairs = []
        for result in results:
            if not result["matches"]:
                continue
            top = result["matches"][0]
            # No "target"/"ground_truth" key: read_pairs_file would take it as the ground truth, and
            # the target's own image shows another appearance than the exemplar's.
            pairs.append({
                "exemplar": top["image"],
                "exemplar_labels": top["labels"],
                "target_labels": result["target_labels"],
                "name": result["target"],
                "exemplar_name": top["exemplar"],
                "score": top["score"],
                "coverage": top["coverage"],
                "missing_classes": top["missing_classes"],
            })
        if not pairs:
            raise _InputError("no target got an exemplar (the database has no other entry), so there are no pairs")
        document["pairs"] = pairs
    else:
        document["targets"] = results

    from amlight.utils.atomic_write import atomic_write

    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8"))
    _print_summary(results, args, len(index), indexed - started, ranked - indexed, out)
    return EXIT_OK


def _are_files(values: list[str], target_root: str | None) -> bool:
    """--targets names label files (not a dataset) when it has several values, or one file (or .png name)."""
    if len(values) > 1:
        return True
    path = Path(values[0])
    return target_root is None and (path.is_file() or path.suffix.lower() in (".png", ".jpg", ".jpeg"))


def _file_targets(files: list[str], source) -> list:
    from amlight.data.io import load_labels

    settings = {k: getattr(source, k) for k in ("label_format", "unknown_colors", "id_map", "ignore_colors")
                if hasattr(source, k)}
    items = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise _InputError(f"{path}: target label file does not exist" if not path.exists()
                              else f"{path}: is not a file")
        items.append((path.stem, os.path.abspath(path), None,
                      lambda path=path: load_labels(path, source.metadata, **settings)))
    stems = [item[0] for item in items]
    if len(set(stems)) != len(stems):  # keep target names unique: use the paths
        items = [(item[1], *item[1:]) for item in items]
    return items


def _source_targets(source) -> list:
    read = source.load_labels if hasattr(source, "load_labels") else (lambda i: source.load(i)[1])
    return [(scene.name, os.path.abspath(scene.label_path), os.path.abspath(scene.image_path),
             lambda i=i: read(i)) for i, scene in enumerate(source.scenes)]


def _rel(path: str | None, base: Path) -> str | None:
    """``path`` relative to ``base`` when it lies below it, else absolute."""
    if not path:
        return None
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(base).as_posix()
    except ValueError:
        return str(absolute)


def _listing(items: list[str]) -> str:
    text = "; ".join(items[:_MAX_LISTED])
    return text + (f"; ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _print_summary(results: list[dict], args, db_size: int, index_s: float, rank_s: float, out: Path) -> None:
    n = len(results)
    with_match = [r for r in results if r["matches"]]
    full = sum(1 for r in with_match if not r["matches"][0]["missing_classes"])
    short = [r for r in results if r["matches"] and len(r["matches"]) < args.top_k]
    print(f"ranked {n} target(s) against {db_size} exemplar(s) of {args.data} ({args.split}): "
          f"top-{args.top_k}, grid {args.grid}; indexing {index_s:.2f} s, ranking {rank_s:.2f} s")
    print(f"top-1 covers every target class for {full}/{len(with_match)} target(s)")
    if len(with_match) < n:
        print(f"warning: {n - len(with_match)} target(s) got no exemplar (the database has no other entry)",
              file=sys.stderr)
    if short:
        print(f"note: {len(short)} target(s) got fewer than {args.top_k} matches (small database)")
    uncovered = [f"{r['target']}: {', '.join(r['uncovered_classes'])}" for r in results if r["uncovered_classes"]]
    if uncovered:
        print(f"warning: {len(uncovered)} target(s) have classes that no exemplar in the database has, so no "
              f"exemplar can give them an appearance: {_listing(uncovered)}", file=sys.stderr)
    partial = [f"{r['target']} -> {r['matches'][0]['exemplar']} lacks {', '.join(r['matches'][0]['missing_classes'])}"
               for r in with_match if r["matches"][0]["missing_classes"]
               and set(r["matches"][0]["missing_classes"]) != set(r["uncovered_classes"])]
    if partial:
        print(f"warning: {len(partial)} target(s) have no single exemplar with all their classes (each class "
              f"exists somewhere in the database, not together); their top-1 lacks some: {_listing(partial)}",
              file=sys.stderr)
    if args.as_pairs:
        print(f"wrote {len(with_match)} pair(s) (top-1 per target) to {out}")
    else:
        print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
