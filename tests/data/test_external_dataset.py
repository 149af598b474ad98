"""Datasets from outside the package: registered by the user's own module (named
``my_module:NAME``) or by an installed package's ``amlight.datasets`` entry point, no edit to amlight."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from amlight.cli.main import main
from amlight.data.registry import UnknownDatasetError, build_dataset, get_dataset_entry, is_module_spec

REPO = Path(__file__).resolve().parents[2]

# The user's module: their own classes and a folder layout, registered under a name of their choosing.
USER_MODULE = textwrap.dedent('''
    from amlight.data.datasets.folder import FolderSource
    from amlight.data.registry import DatasetMetadata, register_dataset

    METADATA = DatasetMetadata(name="{name}", class_names=("road", "car", "sky"),
                               colors=((128, 64, 128), (0, 0, 142), (70, 130, 180)))

    def build(root, split="train", **kwargs):
        return FolderSource.from_folder(root, split, metadata=METADATA, **kwargs)

    register_dataset("{name}", build, metadata=METADATA, description="my street scenes")
''')


def make_data(root: Path, n: int = 4, size=(16, 16)) -> Path:
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for sub in ("images", "labels"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / "images" / f"{k}.png")
            Image.fromarray(rng.integers(0, 3, size).astype(np.uint8)).save(root / split / "labels" / f"{k}.png")
    return root


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module `my_streets_<n>` on sys.path that registers dataset `streets_<n>` (fresh names per test:
    the registry is per process)."""
    tag = tmp_path.name.replace("-", "_")[-20:]
    module, name = f"my_streets_{tag}", f"streets_{tag}"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / f"{module}.py").write_text(USER_MODULE.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    return module, name


def test_module_spec_form():
    assert is_module_spec("my_pkg.my_dataset:NAME") and is_module_spec("m:streets")
    assert not is_module_spec("cityscapes") and not is_module_spec("/data/x:y") and not is_module_spec("C:\\data")


def test_datamodule_uses_a_dataset_registered_in_the_users_module(user_module, tmp_path):
    from amlight.data.datamodule import ExemplarPairDataModule

    module, name = user_module
    data = make_data(tmp_path / "data")
    dm = ExemplarPairDataModule(dataset=f"{module}:{name}", root=str(data), batch_size=2, resolution=16)
    assert dm.num_classes == 3 and dm.metadata.class_names == ("road", "car", "sky")
    dm.setup("fit")
    assert len(dm.train_set) == 4 and len(dm.val_set) == 4
    # once imported, the plain name works too (the module registered it)
    assert get_dataset_entry(name).description == "my street scenes"
    assert len(build_dataset(name, root=data, split="val")) == 4


def test_data_check_uses_a_dataset_registered_in_the_users_module(user_module, tmp_path, capsys):
    module, name = user_module
    data = make_data(tmp_path / "data")
    assert main(["data", "check", f"{module}:{name}", "--root", str(data)]) == 0
    out = capsys.readouterr().out
    assert f"Dataset '{name}'" in out and "3 classes" in out and "OK: 8 image/label pairs" in out
    # no val/ and no split lister: not a problem, fit holds out a slice of train (as data check says)
    import shutil

    shutil.rmtree(data / "val")
    assert main(["data", "check", f"{module}:{name}", "--root", str(data)]) == 0
    out = capsys.readouterr().out
    assert "no 'val' split: fit holds out 1 of the 4 'train' pairs" in out and "OK: 4 image/label pairs" in out


def test_data_check_from_the_command_line_with_pythonpath(user_module, tmp_path):
    """What a user types: their module's folder on PYTHONPATH, no amlight file edited."""
    module, name = user_module
    data = make_data(tmp_path / "data")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "src"))
    proc = subprocess.run([sys.executable, "-m", "amlight", "data", "check", f"{module}:{name}", "--root", str(data)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "OK: 8 image/label pairs" in proc.stdout


def test_entry_point_group_registers_a_dataset(tmp_path):
    """An installed package declares `[amlight.datasets] NAME = module`; the name works without the module."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "ep_streets.py").write_text(USER_MODULE.format(name="ep_streets"))
    dist = site / "ep_streets-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-streets\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[amlight.datasets]\nep_streets = ep_streets\n")
    data = make_data(tmp_path / "data")
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run([sys.executable, "-m", "amlight", "data", "check", "ep_streets", "--root", str(data)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Dataset 'ep_streets'" in proc.stdout and "OK: 8 image/label pairs" in proc.stdout
    code = "from amlight.data.registry import registered_datasets; print(registered_datasets())"
    listed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "'ep_streets'" in listed.stdout  # listed before it is loaded


def test_bad_module_specs_are_clear_errors(user_module):
    module, name = user_module
    with pytest.raises(UnknownDatasetError, match="cannot import module 'no_such_module_xyz'.*PYTHONPATH"):
        get_dataset_entry("no_such_module_xyz:foo")
    with pytest.raises(UnknownDatasetError, match=rf"registered no dataset 'other'.*it registered {name}"):
        get_dataset_entry(f"{module}:other")
    with pytest.raises(UnknownDatasetError, match="my_pkg.my_module:NAME"):
        get_dataset_entry("nosuchds")


@pytest.mark.parametrize("first_import", ["amlight.data.registry", "amlight.data.datasets.cityscapes",
                                          "amlight.data.check", "amlight.data.datasets.folder"])
def test_builtin_datasets_are_registered_whatever_is_imported_first(first_import):
    """The registry imports none of its datasets (no import circle); `amlight.data` registers them."""
    code = (f"import importlib, sys; importlib.import_module({first_import!r}); "
            "from amlight.data.registry import registered_datasets, get_dataset_entry; "
            "names = registered_datasets(); "
            "assert {'synthetic', 'folder', 'cityscapes', 'bdd100k', 'ade20k'} <= set(names), names; "
            "assert callable(get_dataset_entry('cityscapes').extra['splits']); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_register_dataset_takes_the_split_lister(tmp_path):
    """`splits=` at registration (no editing the entry afterwards); data check checks those splits."""
    from amlight.data.check import check_dataset
    from amlight.data.datasets.folder import FolderSource
    from amlight.data.registry import DatasetMetadata, register_dataset

    data = make_data(tmp_path / "data")
    meta = DatasetMetadata("only_val", ("a", "b", "c"), ((1, 1, 1), (2, 2, 2), (3, 3, 3)))
    entry = register_dataset(f"only_val_{tmp_path.name[-12:]}",
                             lambda root, split="train", **kw: FolderSource.from_folder(root, split, metadata=meta, **kw),
                             metadata=meta, splits=lambda root: ["val"])
    report = check_dataset(entry.name, root=data)
    assert list(report.counts) == ["val"] and report.ok, report.problems


def test_metrics_labels_accept_a_users_dataset(user_module):
    from amlight.cli.commands.metrics import _InputError, _metadata_and_settings

    module, name = user_module
    metadata, settings = _metadata_and_settings(f"{module}:{name}")
    assert metadata.class_names == ("road", "car", "sky") and settings == {}
    with pytest.raises(_InputError, match="cannot import module 'no_such_mod_q'") as info:
        _metadata_and_settings("no_such_mod_q:x")
    assert info.value.code == 2
