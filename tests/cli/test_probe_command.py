import json

from amlight.cli.main import main
from amlight.data.synthetic import ensure_synthetic_dataset

from helpers.tiny_models import save_stage1_checkpoint


def test_probe_reports_same_class_mass_per_mode(tmp_path, capsys):
    root = ensure_synthetic_dataset(tmp_path / "synth", num_train=2, num_val_groups=1, height=32, width=32,
                                    progress=False)
    stage1 = save_stage1_checkpoint(tmp_path / "s1.ckpt", num_classes=10)
    out = tmp_path / "probe.json"
    code = main(["probe", "--stage1", str(stage1), "--root", str(root), "--resolution", "16",
                 "--timesteps", "500", "--out", str(out)])
    assert code == 0
    table = json.loads(out.read_text())["modes"]
    assert set(table) == {"augmented", "hard_mask"}
    assert abs(table["hard_mask"]["same_class_mass"] - 1.0) < 1e-6  # masking leaves nothing off-class
    assert 0 < table["augmented"]["same_class_mass"] < 1
    assert "same-class mass" in capsys.readouterr().out


def test_probe_needs_a_checkpoint(tmp_path, capsys):
    assert main(["probe", "--stage2", str(tmp_path / "missing.ckpt")]) == 1
    assert "does not exist" in capsys.readouterr().err
