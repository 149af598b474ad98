"""A first `fit` (issue 18, items 9 and 10): a run shorter than its validation interval still validates
and draws its samples at its end, and a CPU run chooses torch's threads as generate and predict do,
saying so at the start."""
import sys
from pathlib import Path

import pytest
import torch

import amlight.cli.lightning_cli  # noqa: F401 - Lightning's log handler must not bind to a test's captured stderr
from amlight.cli.main import main

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--data.init_args.batch_size", "2", "--data.init_args.max_val_samples", "2",
    "--data.init_args.resolution", "16",
    "--data.init_args.synthetic", "{num_train: 8, num_val_groups: 1, height: 32, width: 32}",
    "--model.init_args.backbone_options", "{block_out_channels: [16, 32], attention_heads: 2}",
    "--model.init_args.guidance_channels", "16", "--model.init_args.sample_steps", "2",
]


def fit(tmp_path, *extra: str) -> tuple[Path, str, str]:
    """A quickstart stage-1 fit, shrunk but with the config's val_check_interval (250) unless overridden."""
    run = tmp_path / "run"
    argv = ["fit", "--config", str(REPO / "configs/quickstart/stage1.yaml"), *TINY,
            "--data.init_args.root", str(tmp_path / "syn"), "--trainer.default_root_dir", str(run), *extra]
    assert main(argv) == 0
    return run, *_captured[0].readouterr()


_captured: list = [None]


@pytest.fixture(autouse=True)
def _capture(capsys):
    _captured[0] = capsys
    assert not sys.stdout.isatty()  # ProgressLog prints its lines
    yield


def test_a_run_shorter_than_its_validation_interval_validates_and_draws_at_its_end(tmp_path, monkeypatch):
    import amlight.utils.cpu_threads

    monkeypatch.chdir(tmp_path)
    threads_before = torch.get_num_threads()
    monkeypatch.setattr(amlight.utils.cpu_threads, "default_threads", lambda: (1, 0.6))  # a busy machine
    run, out, err = fit(tmp_path, "--trainer.max_steps", "3")
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step_000003.png"]
    assert any(line.startswith("[fit] validation done") and "val/loss" in line for line in out.splitlines()), out
    assert "max_steps 3 ends before the first validation (val_check_interval 250): validating at step 3" in err
    # item 10: the CPU run used the threads other processes leave free, said so, and put torch back after
    assert "amlight fit: on the CPU with 1 torch thread(s) (0.6 of" in err and "--threads N sets it" in err, err
    assert torch.get_num_threads() == threads_before


def test_the_last_step_validates_once_when_the_interval_does_not_reach_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run, out, err = fit(tmp_path, "--trainer.max_steps", "3", "--trainer.val_check_interval", "2", "--threads", "1")
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step_000002.png", "step_000003.png"]
    assert [line.split()[4] for line in out.splitlines() if line.startswith("[fit] validation at step")] == ["2", "3"]
    assert "ends before the first validation" not in err
    assert "amlight fit: on the CPU with 1 torch thread(s) (--threads;" in err, err
