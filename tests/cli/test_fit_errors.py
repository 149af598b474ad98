"""`fit` speaks like `generate` (issue 13, item 2): a bad checkpoint, stage, dataset, --ckpt_path or
config key is one line naming the file and the fix, exit 1, no traceback, nothing in the run folder."""
from pathlib import Path

import pytest

from amlight.cli.main import main

from helpers.tiny_models import save_stage1_checkpoint, save_stage2_checkpoint

REPO = Path(__file__).resolve().parents[2]
CONFIG = {s: str(REPO / f"configs/quickstart/{s}.yaml") for s in ("stage1", "stage2")}
TINY = ["--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
        "--data.init_args.batch_size", "2", "--data.init_args.resolution", "16",
        "--data.init_args.synthetic", "{num_train: 4, num_val_groups: 1, height: 32, width: 32}"]
TINY_STAGE1 = ["--model.init_args.backbone_options", "{block_out_channels: [16, 32], attention_heads: 2}",
               "--model.init_args.guidance_channels", "16"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit_errors")
    stage1 = save_stage1_checkpoint(root / "stage1.ckpt", num_classes=10)
    stage2 = save_stage2_checkpoint(stage1, root / "stage2.ckpt")
    (root / "text.ckpt").write_text("not a checkpoint\n")
    (root / "trunc.ckpt").write_bytes(stage1.read_bytes()[:4096])
    (root / "empty_dataset").mkdir()
    (root / "extra.yaml").write_text("trainer:\n  max_stepz: 3\n")
    return {"root": root, "stage1": stage1, "stage2": stage2, "text": root / "text.ckpt",
            "trunc": root / "trunc.ckpt", "empty": root / "empty_dataset", "extra": root / "extra.yaml",
            "data": root / "data"}


def case_args(case: str, f: dict) -> tuple[list[str], str]:
    """argv after `fit`, and the start of what the message must say."""
    s1 = ["--config", CONFIG["stage1"], *TINY, *TINY_STAGE1, "--data.init_args.root", str(f["data"])]
    s2 = ["--config", CONFIG["stage2"], *TINY, "--data.init_args.root", str(f["data"])]
    return {
        "stage2_as_stage1_checkpoint": ([*s2, "--model.init_args.stage1_checkpoint", str(f["stage2"])],
                                        f"{f['stage2']} is a stage-2 (adapter) checkpoint, but a stage-1"),
        "text_stage1_checkpoint": ([*s2, "--model.init_args.stage1_checkpoint", str(f["text"])],
                                   f"{f['text']} is truncated or not a PyTorch checkpoint (17 bytes of text"),
        "truncated_stage1_checkpoint": ([*s2, "--model.init_args.stage1_checkpoint", str(f["trunc"])],
                                        f"{f['trunc']} is truncated or not a PyTorch checkpoint (a zip archive without"),
        "unknown_dataset": ([*s1, "--data.init_args.dataset", "nosuchds"], "unknown dataset 'nosuchds'"),
        "empty_folder_dataset": ([*s1, "--data.init_args.dataset", str(f["empty"]), "--data.init_args.root", str(f["empty"])],
                                 f"{f['empty']}/classes.yaml"),
        "text_ckpt_path": ([*s1, "--ckpt_path", str(f["text"])], f"{f['text']} is truncated or not a PyTorch checkpoint"),
        "missing_ckpt_path": ([*s1, "--ckpt_path", str(f["root"] / "nope.ckpt")],
                              f"--ckpt_path {f['root'] / 'nope.ckpt'} does not exist"),
        "wrong_stage_ckpt_path": ([*s1, "--ckpt_path", str(f["stage2"])],
                                  f"--ckpt_path {f['stage2']} is a stage-2 (adapter) checkpoint, but this config trains stage-1"),
        "unknown_key_flag": ([*s1, "--model.init_args.warmup_step", "1"],
                             "unknown key model.init_args.warmup_step on the command line (--model.init_args.warmup_step); "
                             "did you mean model.init_args.warmup_steps?"),
        "unknown_key_file": ([*s1, "--config", str(f["extra"])],
                             f"unknown key trainer.max_stepz in {f['extra']}; did you mean trainer.max_steps?"),
        "unknown_trainer_flag": ([*s1, "--trainer.max_stepz", "3"],
                                 "unknown key trainer.max_stepz on the command line (--trainer.max_stepz); "
                                 "did you mean trainer.max_steps?"),
        "fewer_pairs_than_batch_size": ([*s1, "--data.init_args.batch_size", "100"], f"{f['data']}"),
        # a plain ValueError raised by a stage (amlight/stages/), not by the command line's own package
        "adapter_attention_in_stage1": ([*s1, "--model.init_args.attention", "adapter"],
                                        "stage 1 trains without the adapter"),
        "logger_of_an_older_config": ([*s1, "--trainer.logger.class_path", "amlight.run_logger.RunLogger"],
                                      "No module named 'amlight.run_logger' (it moved: write "
                                      "amlight.training.run_logger in the config)"),
    }[case]


CASES = ["stage2_as_stage1_checkpoint", "text_stage1_checkpoint", "truncated_stage1_checkpoint", "unknown_dataset",
         "empty_folder_dataset", "text_ckpt_path", "missing_ckpt_path", "wrong_stage_ckpt_path", "unknown_key_flag",
         "unknown_key_file", "unknown_trainer_flag", "fewer_pairs_than_batch_size", "adapter_attention_in_stage1",
         "logger_of_an_older_config"]


def assert_one_line_error(err: str, expected: str) -> None:
    assert "Traceback" not in err and "usage:" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, err[-3000:]
    assert errors[0].startswith("amlight fit: error: ") and expected in errors[0], errors[0]
    assert err.strip().splitlines()[-1] == errors[0]


@pytest.mark.parametrize("case", CASES)
def test_fit_error_is_one_line_and_leaves_no_run_folder(files, case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv, expected = case_args(case, files)
    run = tmp_path / "out" / "run"
    assert main(["fit", *argv, "--trainer.default_root_dir", str(run)]) == 1
    assert_one_line_error(capsys.readouterr().err, expected)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "data") == []  # not even tmp/out


def test_a_failed_resume_leaves_the_earlier_run_as_it_was(files, tmp_path, monkeypatch, capsys):
    """Fails after the trainer started (logger and data set up): its event file goes, the run stays."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("the earlier run\n")
    (run / "events.out.tfevents.0.earlier").write_bytes(b"events")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    argv, expected = case_args("fewer_pairs_than_batch_size", files)
    assert main(["fit", *argv, "--trainer.default_root_dir", str(run), "--ckpt_path", "last"]) == 1
    assert_one_line_error(capsys.readouterr().err, expected)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "events.out.tfevents.0.earlier"]
