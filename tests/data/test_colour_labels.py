"""Colour label PNGs in the dataset's palette are accepted where the dataset says its labels are index
PNGs (issue 13: the synthetic dataset rejected them with "label_format is index but the file is a colour
image", although README says colour PNGs work)."""
import numpy as np
from PIL import Image

from amlight.cli.main import main
from amlight.data.registry import build_dataset
from amlight.data.synthetic import SYNTHETIC_METADATA


def test_synthetic_dataset_with_colour_label_pngs(tmp_path, capsys):
    root = tmp_path / "syn"
    assert main(["synth", "--out", str(root), "--num-train", "3", "--num-val-groups", "1", "--height", "16",
                 "--width", "16", "--no-progress"]) == 0
    index_label = next(iter(sorted((root / "train" / "labels").glob("*.png"))))
    labels = np.asarray(Image.open(index_label)).astype(np.int64)
    # rewrite it as a colour PNG in the synthetic palette
    Image.fromarray(SYNTHETIC_METADATA.colorize(labels)).save(index_label)
    assert Image.open(index_label).mode == "RGB"
    source = build_dataset("synthetic", root=root, split="train")
    position = [s.label_path for s in source.scenes].index(index_label)
    np.testing.assert_array_equal(source.load(position)[1], labels)
    capsys.readouterr()
    assert main(["data", "check", "synthetic", "--root", str(root)]) == 0
    assert "OK:" in capsys.readouterr().out
