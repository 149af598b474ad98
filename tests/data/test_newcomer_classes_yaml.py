"""A user's own folder dataset (issue 18, item 8): classes.yaml's keys are documented, a first guess
(`classes: [...]`, no colours for index labels) works, and a wrong one is one message, said once,
with nothing false after it."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from amlight.cli.main import main
from amlight.data import build_dataset
from amlight.data.datasets import folder
from amlight.data.datasets.folder import load_classes_yaml, read_classes_settings


def make_folder(root: Path, classes_yaml: str, splits=("train", "val"), n: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for split in splits:
        for sub in ("images", "labels"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / split / "images" / f"{k}.png")
            Image.fromarray(rng.integers(0, 3, (8, 8)).astype(np.uint8)).save(root / split / "labels" / f"{k}.png")
    (root / "classes.yaml").write_text(classes_yaml)
    return root


def test_the_keys_are_documented_with_an_example():
    doc = folder.__doc__
    for key in ("names", "classes", "colors", "ignore_index", "label_format", "unknown_colors", "ignore_color", "name"):
        assert f"{key}:" in doc or f"alias: {key}" in doc, key
    assert "names: [sky, tree, road]\n" in doc  # the index-label example needs nothing else


@pytest.mark.parametrize("text", ["classes: [sky, tree, road]\n", "names: [sky, tree, road]\n",
                                  "names: {0: sky, 1: tree, 2: road}\n"])
def test_index_labels_need_only_the_class_names(tmp_path, text):
    from amlight.data.datasets.folder import default_palette

    root = make_folder(tmp_path / "ds", text)
    meta = load_classes_yaml(root / "classes.yaml")
    assert meta.class_names == ("sky", "tree", "road")
    assert meta.colors == tuple(default_palette(3))  # a default palette draws the label maps
    assert read_classes_settings(root / "classes.yaml")["label_format"] == "index"
    source = build_dataset(str(root), split="train")
    assert len(source) == 2 and source.load(0)[1].max() <= 2


def test_default_palette_is_distinct_and_never_black():
    from amlight.data.datasets.folder import default_palette

    colors = default_palette(255)
    assert len(set(colors)) == 255 and (0, 0, 0) not in colors


@pytest.mark.parametrize("text, message", [
    ("classes: [a, b]\nnames: [a, b]\n", "both 'names' and 'classes' are given"),
    ("labels: [a, b]\n", "unknown key(s) labels"),
    ("names: [a, b]\ncolours: [[1, 2, 3], [4, 5, 6]]\n", "did you mean colours -> colors?"),
    ("colors: [[1, 2, 3]]\n", "missing key 'names'"),
    ("names: [a, b]\nlabel_format: color\n", "label_format is color but no 'colors' are given"),
])
def test_wrong_guesses_say_what_to_write(classes_yaml_error, text, message):
    assert message in classes_yaml_error(text)


def test_data_check_says_a_classes_yaml_problem_once_and_nothing_false(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", "labels: [sky, tree, road]\n")
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert out.count("unknown key(s) labels") == 1, out
    assert "Problems (1)" in out, out
    assert "no image/label pairs found" not in out, out  # there are pairs; they could not be decoded
    assert "no 'train' split" not in out, out  # there is one


def test_data_check_passes_with_the_first_guess(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", "classes: [sky, tree, road]\n")
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "3 classes" in out and "OK: 4 image/label pairs" in out, out
