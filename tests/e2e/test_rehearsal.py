"""The SD 1.5 rehearsal: shipped configs with CPU overrides only, its bookkeeping, and a bounded run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from amlight.benchmarks.rehearsal import (
    MARKER,
    Phase,
    RehearsalError,
    Settings,
    _run,
    fit_overrides,
    format_table,
    prepare_out,
)

REPO = Path(__file__).resolve().parents[2]
# What a CPU rehearsal may change in a shipped SD 1.5 config, and nothing else.
ALLOWED = {
    "trainer": {"accelerator", "devices", "strategy", "precision", "max_steps", "val_check_interval",
                "log_every_n_steps", "default_root_dir"},
    "model": {"backbone_path", "stage1_checkpoint", "sample_steps"},
    "data": {"batch_size", "num_workers", "max_val_samples", "resolution", "root"},
}


def _resolved(argv, capsys) -> dict:
    from amlight.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(argv + ["--print_config"])
    assert info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("dataset", ["cityscapes", "bdd100k"])
@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_rehearsal_changes_only_device_precision_steps_batch_and_paths(tmp_path, capsys, dataset, stage):
    config = str(REPO / "configs" / "sd15" / dataset / f"{stage}.yaml")
    s = Settings(dataset=dataset, out=tmp_path / "out", fixture=tmp_path / "fixture")
    extra = (["--model.init_args.backbone_path", "/x/standin"] if stage == "stage1"
             else ["--model.init_args.stage1_checkpoint", "/x/last.ckpt"])
    shipped = _resolved(["fit", "--config", config], capsys)
    rehearsed = _resolved(["fit", "--config", config, *fit_overrides(s, stage), *extra], capsys)
    for section in ("trainer", "model", "data"):
        a = shipped[section] if section == "trainer" else shipped[section]["init_args"]
        b = rehearsed[section] if section == "trainer" else rehearsed[section]["init_args"]
        changed = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
        assert changed <= ALLOWED[section], (section, changed - ALLOWED[section])
    assert rehearsed["model"]["class_path"] == shipped["model"]["class_path"]
    assert rehearsed["trainer"]["callbacks"] == shipped["trainer"]["callbacks"]
    assert rehearsed["trainer"]["accelerator"] == "cpu" and rehearsed["data"]["init_args"]["batch_size"] == 1
    assert rehearsed["data"]["init_args"]["resolution"] == [512, 512]
    assert rehearsed["trainer"]["default_root_dir"] == str((tmp_path / "out" / stage).resolve())


@pytest.mark.parametrize("dataset", ["cityscapes", "bdd100k"])
def test_controlnet_rehearsal_changes_only_device_precision_steps_batch_and_paths(tmp_path, capsys, dataset):
    config = str(REPO / "configs" / "sd15" / dataset / "stage2_controlnet.yaml")
    s = Settings(dataset=dataset, out=tmp_path / "out", fixture=tmp_path / "fixture", controlnet=True)
    shipped = _resolved(["fit", "--config", config], capsys)
    rehearsed = _resolved(["fit", "--config", config, *fit_overrides(s, "stage2"),
                           "--model.init_args.stage1_checkpoint", "/x/pipeline"], capsys)
    for section in ("trainer", "model", "data"):
        a = shipped[section] if section == "trainer" else shipped[section]["init_args"]
        b = rehearsed[section] if section == "trainer" else rehearsed[section]["init_args"]
        assert {k for k in set(a) | set(b) if a.get(k) != b.get(k)} <= ALLOWED[section]
    # the same adapter settings as the shipped stage 2 on a trained stage 1
    plain = _resolved(["fit", "--config", str(REPO / "configs" / "sd15" / dataset / "stage2.yaml")], capsys)
    differ = {k for k in plain["model"]["init_args"]
              if plain["model"]["init_args"][k] != shipped["model"]["init_args"].get(k)}
    assert differ == {"stage1_checkpoint"}


def test_controlnet_table_names_the_public_weights_path():
    record = {"settings": {"dataset": "cityscapes", "resolution": "512", "train_steps": "1", "sample_steps": "2",
                           "precision": "32-true", "controlnet": "True"},
              "phases": [{"name": "assemble", "returncode": 0, "wall_s": 1.0, "peak_rss_gib": 2.0, "note": ""}],
              "machine_before": {}}
    table = format_table(record)
    assert table.startswith("SD 1.5 + segmentation ControlNet rehearsal") and "| assemble | 1.0 | 2.00 | ok" in table


def test_stage1_config_trains_attention_with_gradient_checkpointing():
    # What the rehearsal measured as fitting in 24 GiB on the CPU (README: the rehearsal's table).
    for dataset in ("cityscapes", "bdd100k"):
        model = yaml.safe_load((REPO / f"configs/sd15/{dataset}/stage1.yaml").read_text())["model"]["init_args"]
        assert model["trainable"] == "attention" and model["gradient_checkpointing"] is True


def test_out_folder_is_emptied_only_when_it_is_a_rehearsal(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    with pytest.raises(RehearsalError, match="not a rehearsal folder"):
        prepare_out(out)
    assert (out / "precious.txt").exists()
    (out / MARKER).write_text("{}")
    prepare_out(out)
    assert out.is_dir() and not any(out.iterdir())


def test_phase_records_exit_code_wall_time_and_its_own_peak_memory(tmp_path):
    import resource

    # A child that touches 600 MiB. Linux carries the launcher's own peak into a child's ru_maxrss
    # (exec records the old address space's high-water mark): the rehearsal's launcher is a light
    # process (no torch), this test's is not, hence the bound from above.
    code = "b = bytearray(600 << 20); b[::4096] = b'x' * len(b[::4096]); print('held'); raise SystemExit(3)"
    phase = _run(Phase("probe", [sys.executable, "-c", code]), tmp_path, tmp_path, lambda m: None)
    assert phase.returncode == 3
    launcher_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
    assert 0.58 < phase.peak_rss_gib < max(launcher_gib, 0.6) + 0.1
    assert "held" in (tmp_path / "probe.log").read_text()
    record = {"settings": {"dataset": "cityscapes", "resolution": "512", "train_steps": "1", "sample_steps": "2",
                           "precision": "32-true"}, "phases": [phase.__dict__], "machine_before": {}}
    assert "| probe |" in format_table(record) and "FAILED (exit 3)" in format_table(record)


def test_rehearse_refuses_a_resolution_that_is_not_a_multiple_of_64(capsys):
    from amlight.cli.main import main

    assert main(["rehearse", "sd15", "--resolution", "500"]) == 2
    assert "not a multiple of 64" in capsys.readouterr().err


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The stand-in (3.9 GiB) and fixture folders, written by the first slow rehearsal and reused by the
    next (each is skipped when complete): the ControlNet rehearsal then only adds its ControlNet."""
    return tmp_path_factory.mktemp("rehearsal_shared")


@pytest.mark.slow
def test_bounded_rehearsal_runs_every_phase(tmp_path, shared):
    """The rehearsal's own code path on the shipped configs at SD 1.5's real architecture, bounded:
    64 px, one step per stage, one sampling step, one pair in two modes (a few minutes on 2 cores)."""
    out = tmp_path / "rehearsal"
    cmd = [sys.executable, "-m", "amlight", "rehearse", "sd15", "--out", str(out),
           "--standin", str(shared / "standin"), "--fixture", str(shared / "fixture"),
           "--resolution", "64", "--steps", "1", "--sample-steps", "1", "--eval-pairs", "1",
           "--eval-modes", "augmented,adapter"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "rehearsal.json").read_text())
    assert record["ok"] is True
    assert [p["name"] for p in record["phases"]] == ["standin", "fixture", "stage1", "stage2", "generate", "evaluate"]
    assert all(p["returncode"] == 0 and p["peak_rss_gib"] > 0 for p in record["phases"])
    assert "| stage1 |" in (out / "rehearsal.md").read_text()
    assert (out / "evaluate" / "results.json").is_file()


@pytest.mark.slow
def test_bounded_controlnet_rehearsal_runs_every_phase(tmp_path, shared):
    """`rehearse sd15 --controlnet` bounded: SD 1.5's and its segmentation ControlNet's real architecture,
    64 px, one stage-2 step, one sampling step; the stand-in and fixture of the test before are reused
    (its wall time is on the benchmarks page, docs/benchmarks.md#controlnet-rehearsal)."""
    out = tmp_path / "rehearsal"
    cmd = [sys.executable, "-m", "amlight", "rehearse", "sd15", "--controlnet", "--out", str(out),
           "--standin", str(shared / "standin"), "--fixture", str(shared / "fixture"),
           "--resolution", "64", "--steps", "1", "--sample-steps", "1", "--eval-pairs", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "rehearsal.json").read_text())
    assert record["ok"] is True
    assert [p["name"] for p in record["phases"]] == ["standin", "fixture", "assemble", "stage2", "generate"]
    assert all(p["returncode"] == 0 and p["peak_rss_gib"] > 0 for p in record["phases"])
    assert (out / "pipeline" / "structure_guidance" / "config.json").is_file()
    assert list((out / "generate").glob("*__*.png"))


def test_a_failing_phase_stops_the_rehearsal_loudly(tmp_path, capsys):
    from amlight.cli.main import main

    standin = tmp_path / "not_a_standin"
    standin.mkdir()
    (standin / "notes.txt").write_text("mine")
    out = tmp_path / "out"
    assert main(["rehearse", "sd15", "--out", str(out), "--standin", str(standin),
                 "--fixture", str(tmp_path / "fixture")]) == 1
    err = capsys.readouterr().err
    assert "FAILED: phase standin failed (exit 1)" in err and "is not an amlight SD 1.5 stand-in" in err
    record = json.loads((out / "rehearsal.json").read_text())
    assert record["ok"] is False and [p["name"] for p in record["phases"]] == ["standin"]
    assert "FAILED (exit 1)" in (out / "rehearsal.md").read_text()
    assert (standin / "notes.txt").read_text() == "mine"
