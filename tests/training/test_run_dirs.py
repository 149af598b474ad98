"""One run, one directory: `fit` writes only under trainer.default_root_dir, never over an earlier run,
and resumes with --ckpt_path last (issue 11)."""
import os
import sys
from pathlib import Path

import pytest
import yaml
from jsonargparse import dict_to_namespace
from lightning.pytorch.trainer.states import TrainerFn

from amlight.cli.main import main
from amlight.training.run_config import config_name, free_config_name
from amlight.training.run_directory import FailedStartCleanup, RunDirError, RunLayout, check_fit_target, derive_run_layout
from amlight.checkpoints.files import read_checkpoint

REPO = Path(__file__).resolve().parents[2]
TRAINING_CONFIGS = sorted(p for p in (REPO / "configs").rglob("stage*.yaml"))
STAGE1 = str(REPO / "configs/quickstart/stage1.yaml")


def tiny_fit_args(data_root, run_dir, steps=4):
    return ["fit", "--config", STAGE1,
            "--trainer.default_root_dir", str(run_dir),
            "--trainer.max_steps", str(steps), "--trainer.val_check_interval", "2",
            "--trainer.enable_progress_bar", "false",
            "--data.init_args.root", str(data_root),
            "--data.init_args.batch_size", "2", "--data.init_args.max_val_samples", "2",
            "--data.init_args.resolution", "16",
            "--data.init_args.synthetic", "{num_train: 8, num_val_groups: 1, height: 32, width: 32}",
            "--model.init_args.backbone_options", "{block_out_channels: [16, 32], attention_heads: 2}",
            "--model.init_args.guidance_channels", "16", "--model.init_args.sample_steps", "2"]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A finished 4-step stage-1 run written from another working directory with
    --trainer.default_root_dir; returns (cwd, data root, run dir, files of cwd before the run)."""
    base = tmp_path_factory.mktemp("runs")
    cwd, data, run = base / "cwd", base / "data", base / "elsewhere" / "myrun"
    cwd.mkdir()
    before = sorted(os.listdir(cwd))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setattr(sys, "argv", sys.argv[:1])  # the autouse fixture does not reach module fixtures
        # --ckpt_path last into a folder without a checkpoint starts the run (what `make demo` does)
        assert main([*tiny_fit_args(data, run), "--ckpt_path", "last"]) == 0
    return cwd, data, run, before


def test_every_output_goes_under_the_run_directory(first_run):
    cwd, data, run, before = first_run
    assert sorted(os.listdir(cwd)) == before  # nothing in the working directory (no runs/quickstart)
    assert sorted(os.listdir(run.parent.parent)) == ["cwd", "data", "elsewhere"]
    files = set(tree(run))
    assert {"config.yaml", "hparams.yaml", "checkpoints/last.ckpt", "samples/step_000002.png",
            "samples/step_000004.png"} <= files
    assert any(f.startswith("events.out.tfevents.") for f in files)
    assert all(f.split("/")[0] in ("config.yaml", "hparams.yaml", "checkpoints", "samples")
               or f.startswith("events.out.tfevents.") for f in files), files
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["ckpt_path"] is None  # nothing to resume: a new run, with its config.yaml
    assert saved["trainer"]["logger"]["init_args"]["save_dir"] == str(run)
    dirpaths = [c["init_args"].get("dirpath") for c in saved["trainer"]["callbacks"]]
    assert str(run / "checkpoints") in dirpaths


def test_a_second_fit_into_a_finished_run_refuses_and_writes_nothing(first_run, monkeypatch, capsys):
    cwd, data, run, _ = first_run
    monkeypatch.chdir(cwd)
    files = tree(run)
    capsys.readouterr()
    assert main(tiny_fit_args(data, run)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"amlight fit: error: {run} already holds a run")
    assert "--ckpt_path last" in err[-1] and "--trainer.default_root_dir" in err[-1]
    assert tree(run) == files  # the earlier run's config.yaml, checkpoints and events are untouched


def test_resume_with_ckpt_path_last_continues_and_keeps_the_first_config(first_run, monkeypatch, capsys):
    cwd, data, run, _ = first_run
    monkeypatch.chdir(cwd)
    first_config = (run / "config.yaml").read_bytes()
    assert main([*tiny_fit_args(data, run, steps=6), "--ckpt_path", "last"]) == 0
    ckpt = read_checkpoint(run / "checkpoints/last.ckpt", expect_stage="generation")
    assert ckpt["global_step"] == 6
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]  # no last-v1.ckpt beside it
    # The scheduler and optimiser went on from step 4, not from 0: both counted 6 steps.
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 6
    assert int(next(iter(ckpt["optimizer_states"][0]["state"].values()))["step"]) == 6
    assert (run / "config.yaml").read_bytes() == first_config
    resumed = yaml.safe_load((run / "config.resume-1.yaml").read_text())
    assert resumed["trainer"]["max_steps"] == 6 and resumed["ckpt_path"] == "last"
    # Resuming a complete run does nothing and says so.
    files = tree(run)
    capsys.readouterr()
    assert main([*tiny_fit_args(data, run, steps=6), "--ckpt_path", "last"]) == 0
    assert "the run is complete, nothing to do" in capsys.readouterr().out
    assert tree(run) == files


@pytest.mark.parametrize("config", TRAINING_CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_config_derives_all_paths_from_default_root_dir(config, tmp_path):
    text = config.read_text()
    assert "${" not in text  # an interpolation is resolved before the command line could override it
    cfg = dict_to_namespace(yaml.safe_load(text))
    cfg.trainer.logger.init_args = dict_to_namespace({"save_dir": None, "name": "", "version": ""})
    for callback in cfg.trainer.callbacks:
        callback.init_args = callback.get("init_args") or dict_to_namespace({})
        if callback.class_path.endswith("ModelCheckpoint"):
            callback.init_args.dirpath = None  # what jsonargparse fills in for a key left out
    cfg.trainer.default_root_dir = str(tmp_path / "override")
    layout = derive_run_layout(cfg)
    assert layout.log_dir == tmp_path / "override"
    assert layout.checkpoint_dirs == [tmp_path / "override" / "checkpoints"]
    assert cfg.trainer.logger.init_args.save_dir == str(tmp_path / "override")


def test_explicit_logger_and_checkpoint_folders_are_kept(tmp_path):
    cfg = dict_to_namespace({"trainer": {
        "default_root_dir": str(tmp_path / "root"),
        "logger": {"class_path": "amlight.training.run_logger.RunLogger",
                   "init_args": {"save_dir": str(tmp_path / "logs"), "name": "", "version": ""}},
        "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                       "init_args": {"dirpath": str(tmp_path / "ckpts")}}]}})
    layout = derive_run_layout(cfg)
    assert layout.log_dir == tmp_path / "logs" and layout.checkpoint_dirs == [tmp_path / "ckpts"]
    assert cfg.trainer.logger.init_args.save_dir == str(tmp_path / "logs")


def test_failed_start_removes_only_its_own_files(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("earlier run")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"earlier")
    layout = RunLayout(run, [run / "checkpoints"])
    cleanup = FailedStartCleanup(layout)
    (run / "config.resume-1.yaml").write_text("new")
    (run / "events.out.tfevents.1").write_text("new")
    (run / "samples").mkdir()
    assert cleanup.clean(steps_done=0)
    assert tree(run) == {"config.yaml": b"earlier run", "checkpoints/last.ckpt": b"earlier"}
    assert not (run / "samples").exists()
    # A start that wrote a checkpoint (it trained) keeps everything: it can be resumed.
    cleanup = FailedStartCleanup(layout)
    (run / "checkpoints" / "epoch=0-step=2.ckpt").write_bytes(b"new")
    (run / "hparams.yaml").write_text("new")
    assert not cleanup.clean(steps_done=2)
    assert (run / "hparams.yaml").is_file() and (run / "checkpoints" / "epoch=0-step=2.ckpt").is_file()


def test_a_failed_start_into_a_new_folder_leaves_no_folder(tmp_path):
    layout = RunLayout(tmp_path / "a" / "b" / "run", [tmp_path / "a" / "b" / "run" / "checkpoints"])
    cleanup = FailedStartCleanup(layout)
    (tmp_path / "a" / "b" / "run").mkdir(parents=True)
    (tmp_path / "a" / "b" / "run" / "config.yaml").write_text("x")
    assert cleanup.clean()
    assert list(tmp_path.iterdir()) == []


def test_resumed_runs_get_numbered_config_names(tmp_path):
    assert free_config_name(str(tmp_path)) == "config.yaml"
    (tmp_path / "config.yaml").write_text("")
    assert free_config_name(str(tmp_path)) == "config.resume-1.yaml"
    (tmp_path / "config.resume-1.yaml").write_text("")
    assert free_config_name(str(tmp_path)) == "config.resume-2.yaml"


def test_validate_on_a_training_run_keeps_its_config(tmp_path):
    assert config_name(str(tmp_path), "predict") == "config.yaml"  # an output folder: predict resumes it
    (tmp_path / "config.yaml").write_text("")
    assert config_name(str(tmp_path), "predict") == "config.yaml"
    (tmp_path / "checkpoints").mkdir()  # now it is a training run's folder
    assert config_name(str(tmp_path), "validate") == "config.validate.yaml"
    assert config_name(str(tmp_path), TrainerFn.VALIDATING) == "config.validate.yaml"  # what Lightning passes
    assert config_name(str(tmp_path), "fit") == "config.resume-1.yaml"


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


@pytest.mark.parametrize("variable", ["SLURM_PROCID", "RANK", "LOCAL_RANK"])
def test_only_rank_zero_checks_and_cleans_the_run_directory(tmp_path, monkeypatch, variable):
    """Issue 17, item 8: srun starts every task itself and sets SLURM_PROCID, not LOCAL_RANK / NODE_RANK /
    GROUP_RANK; a rank other than zero must neither refuse the folder nor clean it up."""
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "config.yaml").write_text("seed_everything: 0\n")
    layout = RunLayout(tmp_path, [tmp_path / "checkpoints"])
    with pytest.raises(RunDirError, match="already holds a run"):
        check_fit_target(layout, None, 4)  # rank zero (no variable set) refuses an occupied folder
    cleanup = FailedStartCleanup(layout)
    (tmp_path / "hparams.yaml").write_text("{}\n")  # written by rank zero's start meanwhile

    monkeypatch.setenv(variable, "1")
    check_fit_target(layout, None, 4)  # before the fix, with SLURM_PROCID=1: refused like rank zero
    assert cleanup.clean() is False and (tmp_path / "hparams.yaml").exists()
    monkeypatch.setenv(variable, "0")
    assert cleanup.clean() is True and not (tmp_path / "hparams.yaml").exists()
