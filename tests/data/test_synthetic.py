"""The synthetic driving scenes: determinism, label/image alignment, layout variety, the validation
pairs (one appearance, two layouts), crash-safe idempotent generation and the `synth` command."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from amlight.data import synthetic as S

TINY = dict(num_train=6, num_val_groups=3, height=64, width=64)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _components(mask: np.ndarray) -> int:
    """4-connected components of a small boolean mask."""
    seen = np.zeros_like(mask, dtype=bool)
    count = 0
    h, w = mask.shape
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        count += 1
        stack = [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    return count


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "data"
    S.generate_synthetic_dataset(root, seed=0, progress=False, **TINY)
    return root


def test_metadata_classes():
    meta = S.SYNTHETIC_METADATA
    assert meta.name == "synthetic"
    assert meta.class_names[:8] == ("sky", "road", "sidewalk", "building", "vegetation", "car", "person", "pole")
    assert meta.ignore_index == 255
    assert len(set(meta.colors)) == meta.num_classes


def test_files_and_formats(tiny_root):
    classes = __import__("yaml").safe_load((tiny_root / "classes.yaml").read_text())
    assert classes["names"] == list(S.CLASS_NAMES)
    assert [tuple(c) for c in classes["colors"]] == list(S.CLASS_COLORS)
    assert classes["ignore_index"] == 255
    manifest = json.loads((tiny_root / "manifest.json").read_text())
    assert manifest["format_version"] == S.FORMAT_VERSION
    assert manifest["params"] == {**S.DEFAULT_PARAMS, "seed": 0, **TINY}
    assert len(list((tiny_root / "train" / "images").glob("*.png"))) == TINY["num_train"]
    assert len(list((tiny_root / "val" / "labels").glob("*.png"))) == 2 * TINY["num_val_groups"]
    with Image.open(tiny_root / "train" / "labels" / "00000.png") as img:
        assert img.mode == "L" and img.size == (64, 64)
    with Image.open(tiny_root / "train" / "images" / "00000.png") as img:
        assert img.mode == "RGB" and img.size == (64, 64)


def test_same_seed_same_bytes_other_seed_differs(tiny_root, tmp_path):
    again = tmp_path / "again"
    S.generate_synthetic_dataset(again, seed=0, progress=False, **TINY)
    assert _hashes(again) == _hashes(tiny_root)
    other = tmp_path / "other"
    S.generate_synthetic_dataset(other, seed=1, progress=False, **TINY)
    reference, changed = _hashes(tiny_root), _hashes(other)
    pngs = [k for k in changed if k.endswith(".png")]
    assert pngs and all(changed[k] != reference[k] for k in pngs)


def test_scene_does_not_depend_on_dataset_size(tiny_root, tmp_path):
    # Per-scene seeding: the first scenes of a bigger dataset are the scenes of a smaller one.
    small = tmp_path / "small"
    S.generate_synthetic_dataset(small, seed=0, num_train=2, num_val_groups=1, progress=False)
    for name in ("train/images/00001.png", "train/labels/00001.png", "val/images/00000_b.png"):
        assert (small / name).read_bytes() == (tiny_root / name).read_bytes()


def test_images_align_with_labels(tiny_root):
    for i in range(TINY["num_train"]):
        labels = _read(tiny_root / "train" / "labels" / f"{i:05d}.png")
        image = _read(tiny_root / "train" / "images" / f"{i:05d}.png").astype(np.float64)
        assert labels.max() < S.SYNTHETIC_METADATA.num_classes
        layout = S.sample_layout(S._scene_rng(0, "train", i, 1), 64, 64)
        appearance = S.sample_appearance(S._scene_rng(0, "train", i, 0), len(S.CLASS_NAMES))
        np.testing.assert_array_equal(S.render_labels(layout, 64, 64), labels)
        # Every pixel is its own class's texture plus small noise: no label/image offset anywhere.
        expected = np.zeros_like(image)
        for cls in np.unique(labels):
            expected[labels == cls] = S.class_texture(appearance, int(cls), 64, 64)[labels == cls]
        assert np.abs(image - expected).max() <= 5 * appearance.noise + 1


def test_layout_variety():
    present = set()
    cars, horizons = [], []
    for i in range(12):
        rng = np.random.default_rng([7, i])
        layout = S.sample_layout(rng, 64, 64)
        labels = S.render_labels(layout, 64, 64)
        present |= set(np.unique(labels).tolist())
        cars.append(_components(labels == S.CAR))
        horizons.append(layout.horizon)
    assert len(present) >= 8
    assert np.median(cars) >= 2, cars
    assert max(horizons) - min(horizons) > 0.1


def test_appearance_is_independent_of_layout():
    appearance = S.sample_appearance(np.random.default_rng(3), len(S.CLASS_NAMES))
    la = S.sample_layout(np.random.default_rng(4), 64, 64)
    lb = S.sample_layout(np.random.default_rng(5), 64, 64)
    ia, a = S.render_scene(la, appearance, 64, 64)
    ib, b = S.render_scene(lb, appearance, 64, 64)
    same = a == b
    assert same.any() and not same.all()
    # Where the two label maps agree, the two images agree to the last byte.
    np.testing.assert_array_equal(ia[same], ib[same])
    # A layout is resolution independent.
    image, labels = S.render_scene(la, appearance, 32, 48)
    assert image.shape == (32, 48, 3) and labels.shape == (32, 48)


def test_val_pairs(tiny_root):
    val = tiny_root / "val"
    pairs = json.loads((val / "pairs.json").read_text())["pairs"]
    assert len(pairs) == 2 * TINY["num_val_groups"]
    directions = {(p["exemplar"], p["ground_truth"]) for p in pairs}
    for p in pairs:
        assert set(p) == {"exemplar", "exemplar_labels", "target_labels", "ground_truth"}
        assert all((val / v).is_file() for v in p.values())
        assert (p["ground_truth"], p["exemplar"]) in directions
        ex, ex_labels = _read(val / p["exemplar"]).astype(np.float64), _read(val / p["exemplar_labels"])
        gt, gt_labels = _read(val / p["ground_truth"]).astype(np.float64), _read(val / p["target_labels"])
        assert (ex_labels == gt_labels).mean() <= S.VAL_MAX_AGREEMENT
        for cls in S.VAL_REQUIRED_CLASSES:
            assert (ex_labels == cls).any() and (gt_labels == cls).any()
        assert set(np.unique(gt_labels)) <= set(np.unique(ex_labels))
        # Same appearance, so the same mean colour per class; a striped or speckled region of a few
        # dozen pixels can sample its pattern unevenly, hence the minimum size.
        for cls in range(S.SYNTHETIC_METADATA.num_classes):
            a, b = ex_labels == cls, gt_labels == cls
            if a.sum() >= 64 and b.sum() >= 64:
                diff = np.abs(ex[a].mean(0) - gt[b].mean(0)).max()
                assert diff <= 12, (p, S.CLASS_NAMES[cls], diff)


def test_ensure_is_idempotent_and_refuses_other_params(tmp_path):
    root = tmp_path / "ds"
    assert S.ensure_synthetic_dataset(root, progress=False, seed=2, **TINY) == root
    before = _mtimes(root)
    S.ensure_synthetic_dataset(root, progress=False, seed=2, **TINY)
    assert _mtimes(root) == before
    with pytest.raises(ValueError, match=r"num_train: 6 on disk, 7 requested.*another folder"):
        S.ensure_synthetic_dataset(root, progress=False, seed=2, **{**TINY, "num_train": 7})
    with pytest.raises(TypeError, match="unknown"):
        S.ensure_synthetic_dataset(root, progress=False, colour="red")
    assert _mtimes(root) == before
    S.ensure_synthetic_dataset(root, progress=False, force=True, seed=2, **{**TINY, "num_train": 7})
    assert len(list((root / "train" / "images").iterdir())) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_ensure_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a generated synthetic dataset"):
        S.ensure_synthetic_dataset(tmp_path / "mine", progress=False, **TINY)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_save(array, path):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real_save(array, path)

    real_save = S._save_png
    monkeypatch.setattr(S, "_save_png", failing_save)
    with pytest.raises(KeyboardInterrupt):
        S.ensure_synthetic_dataset(tmp_path / "ds", progress=False, **TINY)
    assert list(tmp_path.iterdir()) == []


def test_losing_a_race_finds_the_winners_folder(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    real_generate = S.generate_synthetic_dataset

    def generate_while_another_process_wins(out, **kwargs):
        summary = real_generate(out, **kwargs)
        monkeypatch.setattr(S, "generate_synthetic_dataset", real_generate)
        S.ensure_synthetic_dataset(root, **kwargs)  # the other process publishes first
        return summary

    monkeypatch.setattr(S, "generate_synthetic_dataset", generate_while_another_process_wins)
    assert S.ensure_synthetic_dataset(root, progress=False, **TINY) == root
    assert json.loads((root / "manifest.json").read_text())["params"]["num_train"] == TINY["num_train"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_synth_command(tmp_path, capsys):
    from amlight.cli.commands.synth import main

    out = tmp_path / "cli"
    args = ["--out", str(out), "--num-train", "3", "--num-val-groups", "1", "--no-progress"]
    assert main(args) == 0
    assert "3 train scenes" in capsys.readouterr().out
    assert main(args) == 0
    assert "already present" in capsys.readouterr().out
    assert main(args[:3] + ["4"] + args[4:]) == 1
    assert "different parameters" in capsys.readouterr().err
    assert main(args[:3] + ["4"] + args[4:] + ["--force"]) == 0
    assert len(list((out / "train" / "labels").iterdir())) == 4


def test_registered_dataset(tiny_root, tmp_path):
    from amlight.data.datasets.synthetic import synthetic_pairs_file
    from amlight.data.io import DataFileError
    from amlight.data.registry import build_dataset, get_dataset_entry

    assert get_dataset_entry("synthetic").metadata is S.SYNTHETIC_METADATA
    source = build_dataset("synthetic", root=tiny_root, split="val")
    assert len(source) == 2 * TINY["num_val_groups"]
    image, labels = source.load(0)
    assert image.shape == (64, 64, 3) and labels.shape == (64, 64)
    assert synthetic_pairs_file(tiny_root) == tiny_root / "val" / "pairs.json"
    with pytest.raises(DataFileError, match="python -m amlight synth --out"):
        build_dataset("synthetic", root=tmp_path / "missing")


def test_appearance_spread_draws_colours_around_the_class_prior():
    rng = lambda: np.random.default_rng(5)  # noqa: E731
    exact = S.sample_appearance(rng(), len(S.CLASS_NAMES), spread=0)
    assert list(exact.base) == list(S.CLASS_COLORS)
    spread = S.sample_appearance(rng(), len(S.CLASS_NAMES), spread=64)
    diffs = np.abs(np.array(spread.base) - np.array(S.CLASS_COLORS))
    assert diffs.max() > 20 and diffs.mean() < 100  # varied per scene, yet near the prior
    uniform = S.sample_appearance(rng(), len(S.CLASS_NAMES), spread=256)
    assert list(uniform.base) != list(spread.base)
