"""The command line: subcommand listing, a short quickstart fit, config parsing and errors."""
from pathlib import Path

import pytest
import yaml

from amlight.cli.main import main
from amlight.checkpoints.files import read_checkpoint

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
TINY_OVERRIDES = [
    "--trainer.max_steps", "4",
    "--trainer.val_check_interval", "2",
    "--data.init_args.batch_size", "2",
    "--data.init_args.max_val_samples", "2",
    "--data.init_args.resolution", "16",
    "--data.init_args.synthetic", "{num_train: 8, num_val_groups: 1, height: 32, width: 32}",
    "--model.init_args.backbone_options", "{block_out_channels: [16, 32], attention_heads: 2}",
    "--model.init_args.guidance_channels", "16",
    "--model.init_args.sample_steps", "2",
]


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ["fit", "validate", "test", "predict", "synth", "data"]:
        assert f"  {command} " in out


def test_unknown_subcommand_is_an_error(capsys):
    assert main(["trian"]) == 2
    assert "unknown subcommand 'trian'" in capsys.readouterr().err


def test_quickstart_fit_writes_checkpoint_config_samples_and_events(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = str(REPO / "configs/quickstart/stage1.yaml")
    assert main(["fit", "--config", config, *TINY_OVERRIDES]) == 0
    run = tmp_path / "runs/quickstart/stage1"
    assert (run / "checkpoints/last.ckpt").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    # dotted overrides and omegaconf interpolation both reach the saved, resolved config
    assert saved["trainer"]["max_steps"] == 4
    dirpaths = [c["init_args"].get("dirpath") for c in saved["trainer"]["callbacks"]]
    assert "runs/quickstart/stage1/checkpoints" in dirpaths
    ckpt = read_checkpoint(run / "checkpoints/last.ckpt", expect_stage="generation")
    assert ckpt["amlight"]["hparams"]["num_classes"] == 10  # linked from the synthetic dataset
    # the tiny preset's checkpoint: trained parts only, no VAE or text encoder (nor its prompt embedding)
    assert {k.split(".")[1] for k in ckpt["state_dict"]} == {"unet", "guidance"}
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step_000002.png", "step_000004.png"]
    assert list(run.glob("events.out.tfevents.*"))
    # the synthetic data was generated on first use, where the config says
    assert (tmp_path / "data/synthetic/val/pairs.json").is_file()


def test_unknown_config_key_is_rejected(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(REPO / "configs/quickstart/stage1.yaml"), "--model.init_args.learning_rat", "1"]) == 1
    assert "unknown key model.init_args.learning_rat" in capsys.readouterr().err  # more in tests/cli/test_fit_errors.py


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith(("amlight.stages.", "amlight.apps."))
    assert printed["data"]["class_path"] == "amlight.data.ExemplarPairDataModule"
