"""`fit` prints plain progress lines when its output is not a terminal (ProgressLog), and stays quiet
on a terminal, where the progress bar draws."""
import io
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from amlight.callbacks import ProgressLog
from amlight.callbacks.progress_log import _format_duration

REPO = Path(__file__).resolve().parents[2]


def test_fit_with_piped_output_prints_progress_lines(tmp_path, monkeypatch, capsys):
    """A real quickstart fit (shrunk) with stdout captured, i.e. not a terminal, as in a pipe or a log."""
    from amlight.cli.main import main

    monkeypatch.chdir(tmp_path)
    args = [
        "fit", "--config", str(REPO / "configs/quickstart/stage1.yaml"),
        "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
        "--data.init_args.root", str(tmp_path / "syn"), "--data.init_args.batch_size", "2",
        "--data.init_args.max_val_samples", "2", "--data.init_args.resolution", "16",
        "--data.init_args.synthetic", "{num_train: 8, num_val_groups: 1, height: 32, width: 32}",
        "--model.init_args.backbone_options", "{block_out_channels: [16, 32], attention_heads: 2}",
        "--model.init_args.guidance_channels", "16", "--model.init_args.sample_steps", "2",
    ]
    assert not sys.stdout.isatty()
    assert main(args) == 0
    stdout = capsys.readouterr().out
    lines = [line for line in stdout.splitlines() if line.startswith("[fit] ")]
    steps = [line for line in lines if line.startswith("[fit] step ")]
    assert [line.split()[2] for line in steps] == ["1/4", "2/4", "3/4", "4/4"]
    for line in steps:
        assert " loss " in line and " it/s" in line and " ETA " in line
    assert any("validation at step 2" in line for line in lines)
    assert any(line.startswith("[fit] validation done in") and "val/loss" in line for line in lines)
    assert lines[-1].startswith("[fit] training done: step 4")
    assert "\r" not in stdout  # the redrawing bar is off when the output is not a terminal


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _trainer(bar=None):
    return SimpleNamespace(is_global_zero=True, progress_bar_callback=bar, callbacks=[])


def test_quiet_on_a_terminal_and_active_in_a_pipe(monkeypatch):
    disabled = []
    bar = SimpleNamespace(disable=lambda: disabled.append(True))
    log = ProgressLog()
    monkeypatch.setattr(sys, "stdout", _Terminal())
    log.setup(_trainer(bar), None, "fit")
    assert not log.active and not disabled
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    log.setup(_trainer(bar), None, "fit")
    assert log.active and disabled == [True]
    log.setup(_trainer(), None, "validate")  # fit only
    assert not log.active
    monkeypatch.setattr(sys, "stdout", _Terminal())
    always = ProgressLog(when="always")
    always.setup(_trainer(), None, "fit")
    assert always.active


def test_add_to_does_not_duplicate_a_configured_one():
    trainer = _trainer()
    ProgressLog.add_to(trainer)
    ProgressLog.add_to(trainer)
    assert len(trainer.callbacks) == 1


def test_bad_arguments_and_durations():
    with pytest.raises(ValueError, match="when must be"):
        ProgressLog(when="sometimes")
    with pytest.raises(ValueError, match="every_n_steps"):
        ProgressLog(every_n_steps=0)
    assert _format_duration(65) == "01:05" and _format_duration(3725) == "1:02:05"
