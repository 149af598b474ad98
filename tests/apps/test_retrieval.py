"""Exemplar retrieval: coverage first, then layout/histogram similarity; index persistence; the CLI."""
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from amlight.cli.commands.retrieve import main
from amlight.data.pairing import read_pairs_file
from amlight.apps.retrieval import IndexFileError, LabelIndex, label_features

SKY, TREE, ROAD, CAR = range(4)
NAMES = ["sky", "tree", "road", "car"]
COLORS = [[70, 130, 180], [107, 142, 35], [128, 64, 128], [0, 0, 142]]
REPO = Path(__file__).resolve().parents[2]


def scene(car: str | None = "left", tree: bool = False, h: int = 16, w: int = 16) -> np.ndarray:
    """Sky on top, road below; optionally a car in the lower left or right, a tree band in the middle."""
    labels = np.full((h, w), SKY, np.int64)
    labels[h // 2:] = ROAD
    if tree:
        labels[h // 4: h // 2] = TREE
    if car == "left":
        labels[h // 2: 3 * h // 4, : w // 4] = CAR
    elif car == "right":
        labels[h // 2: 3 * h // 4, -(w // 4):] = CAR
    return labels


def index_of(maps: dict, **kw) -> LabelIndex:
    return LabelIndex.from_label_maps(list(maps.values()), list(maps), num_classes=4, **kw)


# --- features ---------------------------------------------------------------------------------


def test_layout_is_an_exact_area_resize_and_aspect_independent():
    counts, layout = label_features(np.array([[0, 1, 2]]), 3, grid=2)
    assert counts.tolist() == [1, 1, 1]
    # 3 px into 2 cells: the middle pixel is split half/half between them
    np.testing.assert_allclose(layout[:, 0, 0], [2 / 3, 1 / 3, 0], atol=1e-6)
    np.testing.assert_allclose(layout[:, 0, 1], [0, 1 / 3, 2 / 3], atol=1e-6)
    # the same picture at another size and aspect ratio has the same layout
    small, big = scene(h=8, w=8), np.kron(scene(h=8, w=8), np.ones((3, 5), np.int64))
    np.testing.assert_allclose(label_features(small, 4)[1], label_features(big, 4)[1], atol=1e-6)
    # ignore pixels count nowhere; a cell of only ignore pixels is all zero
    labels = scene()
    labels[:4, :4] = 255
    counts, layout = label_features(labels, 4, grid=4)
    assert counts.sum() == labels.size - 16 and layout[:, 0, 0].sum() == 0
    np.testing.assert_allclose(layout.sum(axis=0)[1:, :], 1, atol=1e-6)


def test_bad_label_values_are_rejected():
    with pytest.raises(ValueError, match="outside 0..3"):
        index_of({"a": scene()}).rank(np.full((4, 4), 7))
    with pytest.raises(ValueError, match="2-D"):
        index_of({"a": scene()}).rank(np.zeros((4, 4, 3), np.int64))


# --- ranking ----------------------------------------------------------------------------------


def test_coverage_ranks_before_layout():
    target = scene(car="left", tree=True)
    # "nocar" has the target's layout except the car; "full" has every class but a different layout
    maps = {"nocar": scene(car=None, tree=True), "full": scene(car="right", tree=False)}
    maps["full"][: 2, :] = TREE
    matches = index_of(maps).rank(target, top_k=2)
    assert [m.name for m in matches] == ["full", "nocar"]
    assert matches[0].coverage == 1.0 and matches[0].missing_classes == []
    assert matches[1].missing_classes == [CAR]
    assert matches[1].coverage == pytest.approx(1 - (target == CAR).mean())
    assert matches[1].score > matches[0].score  # it lost on coverage, not on similarity


def test_equal_coverage_prefers_the_matching_layout():
    target = scene(car="left")
    maps = {"mirrored": scene(car="right"), "same": scene(car="left", h=24, w=40)}
    matches = index_of(maps).rank(target, top_k=5)
    assert [m.name for m in matches] == ["same", "mirrored"]
    assert [m.coverage for m in matches] == [1.0, 1.0]
    assert matches[0].histogram_similarity == pytest.approx(matches[1].histogram_similarity)
    assert matches[0].layout_similarity == pytest.approx(1.0)
    assert matches[1].layout_similarity < 0.99


def test_ranking_is_deterministic_and_ties_break_by_index():
    rng = np.random.default_rng(0)
    maps = {f"r{i}": rng.integers(0, 4, (12, 20)) for i in range(30)}
    for i in (3, 11, 27):  # three identical entries: an exact tie
        maps[f"r{i}"] = scene(car="right")
    index = index_of(maps)
    first = index.rank(scene(car="right"), top_k=10)
    assert [m.name for m in first[:3]] == ["r3", "r11", "r27"]
    assert first[0].score == first[1].score == first[2].score
    assert index.rank(scene(car="right"), top_k=10) == first
    assert index_of(maps).rank(scene(car="right"), top_k=10) == first


def test_exclude_drops_the_target_itself():
    maps = {"a": scene("left"), "b": scene("right"), "c": scene(None, tree=True)}
    index = index_of(maps)
    assert index.rank(maps["a"], top_k=1)[0].name == "a"
    names = [m.name for m in index.rank(maps["a"], top_k=5, exclude="a")]
    assert names[0] == "b" and "a" not in names and len(names) == 2
    assert [m.name for m in index.rank_entry(0, top_k=5)] == names
    assert index.rank(maps["a"], top_k=5, exclude=["a", "b"])[0].name == "c"
    assert len(index.rank(maps["a"], top_k=5, exclude="not-in-db")) == 3


def test_uncovered_classes_and_min_area():
    maps = {"a": scene(None, tree=True), "b": scene(None)}
    index = index_of(maps)
    target = scene("left", tree=True)
    assert index.uncovered_classes(target) == [CAR]
    assert index.uncovered_classes(target, exclude="a") == [TREE, CAR]
    # one car pixel in 256 (0.4 %) is present at the default 0.1 %, missing at 1 %
    speck = scene(None)
    speck[-1, -1] = CAR
    index = index_of({"speck": speck})
    assert index.rank(target, top_k=1)[0].missing_classes == [TREE]
    assert index.rank(target, top_k=1, min_area=0.01)[0].missing_classes == [TREE, CAR]
    assert index.uncovered_classes(target, min_area=0.01) == [TREE, CAR]


def test_save_load_round_trip_and_corrupt_files(tmp_path):
    rng = np.random.default_rng(1)
    maps = {f"s{i}": rng.integers(0, 4, (10, 14)) for i in range(12)}
    index = LabelIndex.from_label_maps(list(maps.values()), list(maps), 4, grid=3, class_names=NAMES,
                                       image_paths=[f"img/{k}.png" for k in maps],
                                       label_paths=[f"lab/{k}.png" for k in maps])
    path = index.save(tmp_path / "db.index")  # any suffix: written as given
    loaded = LabelIndex.load(path)
    assert (loaded.grid, loaded.class_names, loaded.names) == (3, NAMES, list(maps))
    for target in (scene("left"), maps["s4"]):
        assert loaded.rank(target, top_k=12, exclude="s4") == index.rank(target, top_k=12, exclude="s4")

    text = tmp_path / "notes.npz"
    text.write_text("not an index")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:200])
    other = tmp_path / "other.npz"
    np.savez(other, counts=np.zeros((2, 2)))
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    for bad in (text, truncated, other, single, tmp_path / "missing.npz"):
        with pytest.raises(IndexFileError) as info:
            LabelIndex.load(bad)
        assert str(bad) in str(info.value)


def test_faiss_backend_missing_and_with_a_stand_in(monkeypatch):
    maps = {f"m{i}": scene("left" if i % 2 else "right", tree=i % 3 == 0) for i in range(20)}
    index = index_of(maps)
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        index.rank(scene(), backend="faiss", preselect=4)

    class FlatIP:  # the two calls retrieval makes, in numpy
        def __init__(self, dim):
            self.data = np.zeros((0, dim), np.float32)

        def add(self, x):
            self.data = np.concatenate([self.data, x])

        def search(self, q, k):
            sims = q @ self.data.T
            ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            return np.take_along_axis(sims, ids, 1), ids

    monkeypatch.setitem(sys.modules, "faiss", types.SimpleNamespace(IndexFlatIP=FlatIP))
    target = scene("left", tree=True)
    full = index.rank(target, top_k=3)
    assert index.rank(target, top_k=3, backend="faiss", preselect=6) == full
    assert index.rank(target, top_k=3, backend="faiss", preselect=100) == full


# --- CLI ----------------------------------------------------------------------------------------


def save_png(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)
    return path


def make_folder_dataset(root: Path) -> dict:
    """val: five scenes with colour labels; train: no car anywhere. Returns the val label maps."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": NAMES, "colors": COLORS}))
    palette = np.asarray(COLORS, np.uint8)
    shifted = scene("left")
    shifted[8:12, :4] = ROAD
    shifted[8:12, 1:5] = CAR
    val = {"t_left": scene("left"), "e_left": shifted, "e_right": scene("right"), "e_nocar": scene(None),
           "e_tree": scene(None, tree=True)}
    train = {"u_plain": scene(None), "u_tree": scene(None, tree=True)}
    for split, maps in (("val", val), ("train", train)):
        for name, labels in maps.items():
            save_png(np.full((*labels.shape, 3), 100, np.uint8), root / split / "images" / f"{name}.png")
            save_png(palette[labels], root / split / "labels" / f"{name}.png")
    return val


def test_cli_end_to_end_on_a_folder_dataset(tmp_path, capsys):
    root = tmp_path / "ds"
    make_folder_dataset(root)
    out = tmp_path / "out" / "ret.json"
    assert main(["--data", str(root), "--split", "val", "--top-k", "3", "--out", str(out), "--grid", "4"]) == 0
    summary = capsys.readouterr().out
    assert "ranked 5 target(s)" in summary and str(out) in summary
    doc = json.loads(out.read_text())
    assert doc["database"]["size"] == 5 and doc["database"]["split"] == "val" and "coverage" in doc["score"]
    targets = {t["target"]: t for t in doc["targets"]}
    assert set(targets) == {"t_left", "e_left", "e_right", "e_nocar", "e_tree"}
    for name, t in targets.items():
        assert len(t["matches"]) == 3 and name not in [m["exemplar"] for m in t["matches"]]
        assert [m["rank"] for m in t["matches"]] == [1, 2, 3]
        assert Path(t["target_labels"]).is_file()
        # e_tree is the only scene with trees: without itself, nothing covers them
        assert t["uncovered_classes"] == (["tree"] if name == "e_tree" else [])
    best = targets["t_left"]["matches"]
    assert [m["exemplar"] for m in best[:2]] == ["e_left", "e_right"]
    assert best[0]["coverage"] == 1.0 and best[0]["missing_classes"] == []
    assert Path(best[0]["image"]).name == "e_left.png" and Path(best[0]["labels"]).is_file()
    assert targets["e_nocar"]["matches"][0]["exemplar"] in ("t_left", "e_left", "e_right")

    # pairs file: top-1 per target, read back by the pairing module
    pairs_path = tmp_path / "pairs.json"
    assert main(["--data", str(root), "--split", "val", "--out", str(pairs_path), "--as-pairs"]) == 0
    capsys.readouterr()
    pairs = read_pairs_file(pairs_path)
    assert len(pairs) == 5 and all(p.ground_truth is None for p in pairs)
    by_target = {p.target_labels.name: p for p in pairs}
    assert by_target["t_left.png"].exemplar.name == "e_left.png"
    assert by_target["t_left.png"].exemplar_labels == root / "val" / "labels" / "e_left.png"
    assert all(p.exemplar.is_file() and p.exemplar_labels.is_file() and p.target_labels.is_file() for p in pairs)
    # paths below the output folder are written relative to it
    assert json.loads(pairs_path.read_text())["pairs"][0]["exemplar"].startswith("ds/val/images/")


def test_cli_other_targets_uncovered_classes_and_index_cache(tmp_path, capsys):
    root = tmp_path / "ds"
    make_folder_dataset(root)
    out, cache = tmp_path / "ret.json", tmp_path / "train.npz"
    # database without cars, targets from the val split: cars are uncovered, and said so
    args = ["--data", str(root), "--split", "train", "--targets", str(root), "--target-split", "val",
            "--top-k", "5", "--out", str(out), "--index", str(cache)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "no exemplar in the database has" in err and "car" in err
    doc = json.loads(out.read_text())
    targets = {t["target"]: t for t in doc["targets"]}
    assert targets["t_left"]["uncovered_classes"] == ["car"]
    assert targets["t_left"]["matches"][0]["missing_classes"] == ["car"]
    assert len(targets["t_left"]["matches"]) == 2  # the database holds two scenes
    assert LabelIndex.load(cache).names == ["u_plain", "u_tree"]
    assert main(args) == 0  # the cached index is reused, same answer
    assert "rebuilding" not in capsys.readouterr().err
    assert json.loads(out.read_text()) == doc

    # label files as targets; a file that is in the database does not retrieve itself
    files = [str(root / "val" / "labels" / "t_left.png"), str(root / "val" / "labels" / "e_left.png")]
    assert main(["--data", str(root), "--split", "val", "--target-labels", *files, "--out", str(out)]) == 0
    capsys.readouterr()
    doc = json.loads(out.read_text())
    assert [t["target"] for t in doc["targets"]] == ["t_left", "e_left"]
    assert doc["targets"][0]["matches"][0]["exemplar"] == "e_left"
    assert doc["targets"][1]["matches"][0]["exemplar"] == "t_left"


def test_cli_bad_input_is_one_line_exit_1(tmp_path, capsys):
    root = tmp_path / "ds"
    make_folder_dataset(root)
    out = str(tmp_path / "ret.json")

    def fails(args, *needles, code=1):
        assert main([*args, "--out", out]) == code
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err
        for needle in needles:
            assert needle in err
        return err

    err = fails(["--data", "no-such-dataset"], "amlight retrieve: error:", "no-such-dataset", "synthetic")
    assert len(err.splitlines()) == 1
    fails(["--data", str(tmp_path / "missing-folder")], "missing-folder")
    fails(["--data", str(root), "--split", "test"], "split 'test' not found")
    fails(["--data", str(root), "--target-labels", str(tmp_path / "nope.png")], "nope.png", "does not exist")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    fails(["--data", str(root), "--target-labels", str(broken)], "broken.png")
    off_palette = save_png(np.full((8, 8, 3), 7, np.uint8) + np.arange(3, dtype=np.uint8), tmp_path / "odd.png")
    fails(["--data", str(root), "--target-labels", str(off_palette)], "odd.png")
    bad_index = tmp_path / "bad.npz"
    bad_index.write_text("x")
    fails(["--data", str(root), "--index", str(bad_index)], "bad.npz", "not an amlight label index")
    (root / "val" / "labels" / "e_tree.png").write_bytes(b"truncated")
    fails(["--data", str(root)], "e_tree.png")
    fails(["--data", str(root), "--top-k", "0"], code=2)
    assert not Path(out).exists()


@pytest.mark.skipif(not (REPO / "data" / "synthetic" / "manifest.json").is_file(),
                    reason="bundled synthetic data not generated (python -m amlight synth --out data/synthetic)")
def test_cli_on_the_bundled_synthetic_val_split(tmp_path, capsys):
    out = tmp_path / "ret.json"
    root = str(REPO / "data" / "synthetic")
    assert main(["--data", "synthetic", "--root", root, "--split", "val", "--top-k", "3", "--out", str(out),
                 "--no-progress"]) == 0
    capsys.readouterr()
    doc = json.loads(out.read_text())
    assert doc["database"]["size"] == len(doc["targets"]) > 0
    for t in doc["targets"]:
        assert len(t["matches"]) == 3
        assert t["target"] not in [m["exemplar"] for m in t["matches"]]
        scores = [(m["coverage"], m["score"]) for m in t["matches"]]
        assert scores == sorted(scores, reverse=True)
