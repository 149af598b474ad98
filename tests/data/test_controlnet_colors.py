"""Label maps drawn in ADE20K colours for a segmentation ControlNet (amlight.data.controlnet_colors)."""
from __future__ import annotations

import fnmatch
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import yaml

from amlight.data.controlnet_colors import KEY, controlnet_color_map, render_condition, shipped_map_names
from amlight.data.datasets import ade20k, bdd100k, cityscapes
from amlight.data.datasets.folder import load_classes_yaml
from amlight.data.io import DataFileError

REPO = Path(__file__).resolve().parents[2]
ADE_PALETTE = {tuple(c) for c in ade20k.COLORS}
ADE_INDEX = {name: i for i, name in enumerate(ade20k.CLASS_NAMES)}


def _shipped(name: str) -> dict:
    path = resources.files("amlight.data") / "controlnet_colors" / f"{name}.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))[KEY]


def test_maps_ship_for_cityscapes_and_bdd100k():
    assert {"cityscapes", "bdd100k"} <= set(shipped_map_names())


@pytest.mark.parametrize("metadata", [cityscapes.METADATA, bdd100k.METADATA], ids=["cityscapes", "bdd100k"])
def test_every_class_gets_the_ade20k_colour_of_its_named_class(metadata):
    lookup = controlnet_color_map(metadata.name)
    entries = _shipped(metadata.name)
    assert lookup.shape == (256, 3) and lookup.dtype == np.uint8
    assert set(entries) == set(metadata.class_names)
    for index, name in enumerate(metadata.class_names):
        target = entries[name]
        assert target in ADE_INDEX, f"{name} -> {target!r} is not spelt as an ADE20K class"
        assert tuple(lookup[index]) == ade20k.COLORS[ADE_INDEX[target]]
        assert tuple(lookup[index]) in ADE_PALETTE
    # Not the dataset's own palette: that would be colours the ControlNet never learned.
    assert not np.array_equal(lookup[: metadata.num_classes], metadata.palette())


def test_classes_ade20k_lacks_map_to_the_documented_stand_ins():
    entries = _shipped("cityscapes")
    assert (entries["train"], entries["rider"], entries["motorcycle"]) == ("bus", "person", "minibike")
    assert (entries["vegetation"], entries["terrain"], entries["traffic sign"]) == ("tree", "grass", "signboard")


def test_ade20k_is_its_own_palette():
    lookup = controlnet_color_map("ade20k")
    np.testing.assert_array_equal(lookup[:150], ade20k.METADATA.palette())
    np.testing.assert_array_equal(lookup[150:], 0)


def test_ignore_index_and_out_of_range_values_render_black():
    lookup = controlnet_color_map(cityscapes.METADATA)
    assert (0, 0, 0) not in ADE_PALETTE  # so black cannot be mistaken for a class
    labels = np.array([[0, 255, 10], [-1, 300, 18]], dtype=np.int64)
    image = render_condition(labels, lookup)
    assert image.shape == (2, 3, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[0, 1], 0)
    np.testing.assert_array_equal(image[1, :2], 0)
    assert tuple(image[0, 0]) == ade20k.COLORS[ADE_INDEX["road"]]
    assert tuple(image[0, 2]) == ade20k.COLORS[ADE_INDEX["sky"]]
    assert tuple(image[1, 2]) == ade20k.COLORS[ADE_INDEX["bicycle"]]


def test_render_condition_rejects_float_labels_and_bad_lookups():
    lookup = controlnet_color_map("ade20k")
    with pytest.raises(ValueError, match="integer"):
        render_condition(np.zeros((2, 2), dtype=np.float32), lookup)
    with pytest.raises(ValueError, match=r"\(256, 3\) uint8"):
        render_condition(np.zeros((2, 2), dtype=np.int64), lookup[:150])


def _folder(tmp_path, extra: dict) -> tuple[Path, dict]:
    data = {"names": ["sky", "tree", "lane marking"], **extra}
    path = tmp_path / "classes.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path, yaml.safe_load(path.read_text(encoding="utf-8"))


def test_folder_map_with_ade20k_names_and_rgb_triples(tmp_path):
    path, data = _folder(tmp_path, {KEY: {"sky": "sky", "tree": "palm", "lane marking": [255, 255, 255]}})
    metadata = _metadata(tmp_path, data)
    lookup = controlnet_color_map(metadata, data, source=path)
    assert tuple(lookup[0]) == ade20k.COLORS[ADE_INDEX["sky"]]
    assert tuple(lookup[1]) == ade20k.COLORS[ADE_INDEX["palm"]]
    assert tuple(lookup[2]) == (255, 255, 255)
    np.testing.assert_array_equal(lookup[3:], 0)


def _metadata(tmp_path, data):
    # folder.py reads classes.yaml itself; give it only the keys it knows.
    plain = tmp_path / "plain" / "classes.yaml"
    plain.parent.mkdir(exist_ok=True)
    plain.write_text(yaml.safe_dump({k: v for k, v in data.items() if k != KEY}), encoding="utf-8")
    return load_classes_yaml(plain)


def test_missing_class_is_one_line_naming_class_dataset_and_file(tmp_path):
    path, data = _folder(tmp_path, {"name": "streets", KEY: {"sky": "sky", "tree": "tree"}})
    with pytest.raises(DataFileError) as info:
        controlnet_color_map(_metadata(tmp_path, data), data, source=path)
    message = str(info.value)
    assert "\n" not in message
    assert "'lane marking'" in message and "'streets'" in message and str(path) in message


def test_names_are_resolved_exactly(tmp_path):
    path, data = _folder(tmp_path, {KEY: {"sky": "Sky", "tree": "tree", "lane marking": [1, 2, 3]}})
    with pytest.raises(DataFileError, match=r"'Sky', which is no ADE20K class \(did you mean 'sky'\?\)"):
        controlnet_color_map(_metadata(tmp_path, data), data, source=path)
    # "television receiver" is a common misreading of objectInfo150's "television;television;receiver".
    path, data = _folder(tmp_path, {KEY: {"sky": "television receiver", "tree": "tree", "lane marking": "road"}})
    with pytest.raises(DataFileError, match="no ADE20K class"):
        controlnet_color_map(_metadata(tmp_path, data), data, source=path)


@pytest.mark.parametrize("entries, problem", [
    ({"sky": "sky", "tree": "tree", "lane marking": "road", "cloud": "sky"}, "'cloud' is not a class"),
    ({"sky": "sky", "tree": "tree", "lane marking": [256, 0, 0]}, "'lane marking' maps to"),
    (["sky", "tree"], "must be a mapping"),
])
def test_bad_folder_maps_name_the_problem(tmp_path, entries, problem):
    path, data = _folder(tmp_path, {KEY: entries})
    with pytest.raises(DataFileError, match=problem) as info:
        controlnet_color_map(_metadata(tmp_path, data), data, source=path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_folder_without_a_map_is_a_clear_error(tmp_path):
    path, data = _folder(tmp_path, {"name": "streets"})
    with pytest.raises(DataFileError, match=f"'streets' has no ControlNet colour map.*'{KEY}:'"):
        controlnet_color_map(_metadata(tmp_path, data), data, source=path)
    with pytest.raises(ValueError, match="pass the DatasetMetadata"):
        controlnet_color_map("folder")


def test_a_folder_map_wins_over_the_shipped_one():
    data = {KEY: {name: [7, 7, 7] for name in cityscapes.CLASS_NAMES}}
    lookup = controlnet_color_map(cityscapes.METADATA, data)
    np.testing.assert_array_equal(lookup[:19], 7)


def test_setup_cfg_ships_the_maps_in_wheels():
    from setuptools.config.setupcfg import read_configuration

    patterns = read_configuration(REPO / "setup.cfg")["options"].get("package_data", {}).get("amlight.data", [])
    files = sorted(p.relative_to(REPO / "amlight" / "data").as_posix()
                   for p in (REPO / "amlight" / "data" / "controlnet_colors").glob("*"))
    assert files and all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files)


def test_a_folder_classes_yaml_with_a_controlnet_map_loads_and_gives_its_map(tmp_path):
    """The folder dataset accepts the key (it refused unknown keys) and the map reads from the same file."""
    import yaml

    from amlight.data.datasets.folder import load_classes_yaml

    path = tmp_path / "classes.yaml"
    path.write_text("names: [sky, tree]\ncontrolnet_colors:\n  sky: sky\n  tree: [1, 2, 3]\n")
    metadata = load_classes_yaml(path)
    lookup = controlnet_color_map(metadata, yaml.safe_load(path.read_text()), source=path)
    assert lookup[1].tolist() == [1, 2, 3] and lookup[0].tolist() != [0, 0, 0]
