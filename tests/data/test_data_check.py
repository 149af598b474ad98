import numpy as np
import pytest
import yaml
from PIL import Image

from amlight.cli.commands.data import main
from amlight.data.check import check_dataset, format_report

NAMES = ["sky", "tree", "road", "car"]
COLORS = [[70, 130, 180], [107, 142, 35], [128, 64, 128], [0, 0, 142]]


def save(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)
    return path


def make_dataset(root, n_train=3, n_val=2):
    """Colour-label folder dataset that uses classes 0..2 only (car never appears)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": NAMES, "colors": COLORS}))
    palette = np.asarray(COLORS, np.uint8)
    for split, n in (("train", n_train), ("val", n_val)):
        for k in range(n):
            labels = np.zeros((4, 6), np.int64)
            labels[:2] = 0
            labels[2:, :3] = 1
            labels[2:, 3:] = 2
            save(np.full((4, 6, 3), 90, np.uint8), root / split / "images" / f"{k:03d}.png")
            save(palette[labels], root / split / "labels" / f"{k:03d}.png")
    return root


def break_dataset(root):
    train = root / "train"
    # 1. image without label
    save(np.zeros((4, 6, 3), np.uint8), train / "images" / "orphan.png")
    # 2. truncated label
    data = (train / "labels" / "000.png").read_bytes()
    (train / "labels" / "000.png").write_bytes(data[:30])
    # 3. size mismatch
    save(np.zeros((5, 6, 3), np.uint8), train / "images" / "001.png")
    # 4. BGR-swapped label
    bgr = np.asarray(Image.open(train / "labels" / "002.png"))[..., ::-1].copy()
    save(bgr, train / "labels" / "002.png")
    # 5. out-of-palette colour in val
    val_label = np.asarray(Image.open(root / "val" / "labels" / "000.png")).copy()
    val_label[3, 5] = (1, 2, 3)
    save(val_label, root / "val" / "labels" / "000.png")
    return root


def test_healthy_dataset_reports_ok(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds")
    report = check_dataset(str(root))
    assert report.ok and report.problems == []
    assert report.counts == {"train": 3, "val": 2}
    assert report.class_pixels == [5 * 12, 5 * 6, 5 * 6, 0]
    assert report.class_images == [5, 5, 5, 0]
    assert report.classes_missing == [3]

    assert main(["check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "train  3 image/label pairs" in out
    assert "sky" in out and "50.00%" in out and "25.00%" in out
    assert "never present: 3 car" in out
    assert out.strip().splitlines()[-1].startswith("OK: 5 image/label pairs in 2 split(s)")


def test_broken_dataset_collects_every_problem(tmp_path, capsys):
    root = break_dataset(make_dataset(tmp_path / "ds"))
    report = check_dataset(str(root))
    assert not report.ok
    kinds = sorted(p.kind for p in report.problems)
    assert kinds == ["missing partner file", "size mismatch", "unknown colours", "unknown colours", "unreadable file"]
    files = {p.file for p in report.problems}
    assert str(root / "train" / "images" / "orphan.png") in files
    assert str(root / "train" / "labels" / "000.png") in files
    bgr = next(p for p in report.problems if p.file.endswith("train/labels/002.png"))
    assert "BGR-swapped" in bgr.message
    off = next(p for p in report.problems if p.file.endswith("val/labels/000.png"))
    assert "(1, 2, 3)" in off.message and "(3, 5)" in off.message
    # The good val pair still counts towards the class statistics.
    assert report.checked == {"train": 3, "val": 2} and sum(report.class_pixels) > 0

    assert main(["check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "FAILED: 5 problems in 5 file(s)" in out
    assert "size mismatch (1):" in out and "unknown colours (2):" in out
    assert "looks BGR-swapped" in out


def test_out_of_range_index_and_split_option(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds")
    save(np.array([[0, 1, 2, 3, 9, 9]] * 4, np.uint8), root / "val" / "labels" / "001.png")
    assert main(["check", str(root), "--split", "train"]) == 0
    capsys.readouterr()
    assert main(["check", str(root), "--split", "val"]) == 1
    out = capsys.readouterr().out
    assert "bad label values" in out and "9 (8 px" in out


def test_max_files_limits_pairs_read(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", n_train=4)
    (root / "train" / "labels" / "003.png").write_bytes(b"broken")  # beyond the limit: not read
    report = check_dataset(str(root), max_files=2)
    assert report.ok and report.counts == {"train": 4, "val": 2} and report.checked == {"train": 2, "val": 2}
    assert "(2 checked, --max-files 2)" in format_report(report)
    assert main(["check", str(root), "--max-files", "0"]) == 2
    assert "positive integer" in capsys.readouterr().err


def test_unknown_dataset_exits_2_and_lists_known(capsys):
    assert main(["check", "no-such-dataset"]) == 2
    captured = capsys.readouterr()
    assert "cityscapes" in captured.err and "ade20k" in captured.err and "Traceback" not in captured.err


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["check"]) == 2
    assert main(["check", "cityscapes"]) == 2  # a named dataset needs --root
    assert "--root" in capsys.readouterr().err


def test_missing_classes_yaml_is_a_problem_not_a_crash(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds")
    (root / "classes.yaml").unlink()
    assert main(["check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "classes.yaml" in out and "FAILED" in out


def test_named_dataset_with_root(tmp_path, capsys):
    stem = "aachen_000000_000019"
    save(np.zeros((2, 2, 3), np.uint8), tmp_path / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png")
    label = tmp_path / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png"
    save(np.array([[7, 7], [26, 0]], np.uint8), label)
    assert main(["check", "cityscapes", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "road" in out and "car" in out and "ignored pixels (255): 25.00%" in out
    assert main(["check", "cityscapes", "--root", str(tmp_path / "nope")]) == 1
    assert "leftImg8bit" in capsys.readouterr().out


def test_all_ignore_labels_are_a_problem(tmp_path):
    root = make_dataset(tmp_path / "ds", n_train=1, n_val=0)
    save(np.full((4, 6), 255, np.uint8), root / "train" / "labels" / "000.png")
    report = check_dataset(str(root))
    assert [p.kind for p in report.problems] == ["no labelled pixels"]


@pytest.mark.parametrize("argv", [["--help"], ["check", "--help"]])
def test_help_exits_0(argv, capsys):
    assert main(argv) == 0
    assert "python -m amlight data" in capsys.readouterr().out
