"""``python -m amlight export``: checkpoints in, a diffusers pipeline folder with a model card out."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from amlight.cli.main import main

from helpers.tiny_models import save_stage1_checkpoint
from helpers.folder_datasets import NAMES, make_dataset
from helpers.tiny_models import save_adapter

REPO = Path(__file__).resolve().parents[2]


# The tiny model gains nothing from a second thread, and loses a lot when another process holds a core.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A stage-1 run folder as `fit` leaves it (checkpoints/last.ckpt + config.yaml naming the dataset),
    an exported adapter, and an evaluate report of these weights next to the run."""
    root = tmp_path_factory.mktemp("export")
    data = make_dataset(root / "data")
    stage1 = save_stage1_checkpoint(_mkdir(root / "runs/q/stage1/checkpoints") / "last.ckpt", seed=7)
    config = {"seed_everything": 0, "model": {"class_path": "amlight.stages.GenerationStage"},
              "data": {"class_path": "amlight.data.ExemplarPairDataModule",
                       "init_args": {"dataset": str(data), "root": str(data)}}}
    (root / "runs/q/stage1/config.yaml").write_text(yaml.safe_dump(config))
    adapter = save_adapter(stage1, root / "runs/q/adapter.safetensors")
    return {"root": root, "data": data, "stage1": stage1, "adapter": adapter}


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def export(*argv):
    return main(["export", *map(str, argv)])


def test_export_writes_a_pipeline_folder_with_a_model_card(run, tmp_path, capsys):
    out = tmp_path / "model"
    assert export("--stage1", run["stage1"], "--adapter", run["adapter"], "--out", out) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "MiB" in printed and str(run["stage1"]) in printed  # sizes side by side
    index = json.loads((out / "model_index.json").read_text())
    assert {"unet", "structure_guidance", "am_adapter", "scheduler", "label_space"} <= set(index)
    assert not list(out.rglob("*.ckpt")) and not list(out.rglob("*.bin"))  # safetensors only
    tensors = set()
    for path in out.rglob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            tensors |= {f"{path.parent.name}/{k}" for k in f.keys()}
    assert not any("optim" in k or "exp_avg" in k for k in tensors)  # no optimiser state
    assert any(k.startswith("am_adapter/") for k in tensors) and any(k.startswith("unet/") for k in tensors)
    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card and "license:" not in card  # the tiny preset has no licence
    assert "random" in card and "tiny" in card
    assert all(f"| {name} |" in card for name in NAMES)  # the classes, with their colours
    assert "| 0 | sky | #4682b4 |" in card
    assert "```yaml" in card and "ExemplarPairDataModule" in card  # the run's training config
    assert "training steps" in card


def test_fp16_halves_the_weights(run, tmp_path):
    full, half = tmp_path / "fp32", tmp_path / "fp16"
    assert export("--stage1", run["stage1"], "--out", full) == 0
    assert export("--stage1", run["stage1"], "--out", half, "--dtype", "fp16") == 0
    with safe_open(str(next((half / "unet").glob("*.safetensors"))), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}

    def weights(folder):
        return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))

    assert 0.45 < weights(half) / weights(full) < 0.55
    from amlight.pipeline.synthesis import AMPipeline

    pipe = AMPipeline.from_pretrained(half, dtype=torch.float32)
    assert pipe.num_classes == 5 and pipe.adapter is None


def test_out_must_be_empty_unless_overwrite(run, tmp_path, capsys):
    out = tmp_path / "model"
    assert export("--stage1", run["stage1"], "--out", out) == 0
    first = (out / "model_index.json").read_bytes()
    assert export("--stage1", run["stage1"], "--adapter", run["adapter"], "--out", out) == 1
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "model_index.json").read_bytes() == first and not (out / "am_adapter").exists()
    assert export("--stage1", run["stage1"], "--adapter", run["adapter"], "--out", out, "--overwrite") == 0
    assert (out / "am_adapter").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.export-")]  # no leftovers
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    assert export("--stage1", run["stage1"], "--out", other, "--overwrite") == 1
    assert "no pipeline folder" in capsys.readouterr().err and (other / "mine.txt").read_text() == "keep"


def test_label_space_from_data_when_the_run_has_no_config(run, tmp_path, capsys):
    lone = tmp_path / "sent" / "stage1.ckpt"
    lone.parent.mkdir()
    shutil.copy(run["stage1"], lone)
    assert export("--stage1", lone, "--out", tmp_path / "a") == 1
    err = capsys.readouterr().err
    assert "--data" in err and "Traceback" not in err
    assert export("--stage1", lone, "--out", tmp_path / "a", "--data", run["data"]) == 0
    card = (tmp_path / "a" / "README.md").read_text()
    assert "| 4 | building |" in card and "Training config" not in card


def test_measured_results_of_these_weights_go_into_the_card(run, tmp_path):
    report = run["root"] / "runs/q/evaluate"
    assert main(["evaluate", "--stage1", str(run["stage1"]), "--adapter", str(run["adapter"]), "--data", str(run["data"]),
                 "--modes", "adapter", "--steps", "1", "--max-pairs", "2", "--batch-size", "2", "--quiet",
                 "--device", "cpu", "--out", str(report)]) == 0
    results = report / "results.json"
    from amlight.metrics.evaluation_report import format_cell

    psnr = format_cell(json.loads(results.read_text())["modes"]["adapter"]["metrics"]["psnr"], "psnr")
    try:
        assert export("--stage1", run["stage1"], "--adapter", run["adapter"], "--out", tmp_path / "m") == 0
        card = (tmp_path / "m" / "README.md").read_text()
        assert str(results) in card and "| `adapter` |" in card and psnr in card
        # the scores of another adapter are not these weights' scores
        record = json.loads(results.read_text())
        record["settings"]["adapter_sha256"] = "0" * 64
        results.write_text(json.dumps(record))
        assert export("--stage1", run["stage1"], "--adapter", run["adapter"], "--out", tmp_path / "n") == 0
        card = (tmp_path / "n" / "README.md").read_text()
        assert "| `adapter` |" not in card and "No `python -m amlight evaluate` report" in card
    finally:
        shutil.rmtree(report)


def test_export_command_line_help_and_registration():
    result = subprocess.run([sys.executable, "-m", "amlight"], capture_output=True, text=True, cwd=REPO)
    assert "export " in result.stdout and "pipeline folder" in result.stdout
    result = subprocess.run([sys.executable, "-m", "amlight", "export", "--help"], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 0 and "--dtype" in result.stdout and "--base" in result.stdout


@pytest.mark.parametrize("with_adapter", [True, False])
def test_the_model_cards_snippet_runs(run, tmp_path, monkeypatch, with_adapter):
    out = tmp_path / "model"
    assert export("--stage1", run["stage1"], *(["--adapter", run["adapter"]] if with_adapter else []), "--out", out) == 0
    card = (out / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0].replace("THIS_FOLDER", str(out))
    val = run["data"] / "val"
    shutil.copy(val / "labels/s1.png", tmp_path / "target_labels.png")
    shutil.copy(val / "images/s0.png", tmp_path / "exemplar.png")
    shutil.copy(val / "labels/s0.png", tmp_path / "exemplar_labels.png")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(snippet, scope)  # as a reader would paste it
    assert scope["image"].size == (16, 16)


def test_bad_checkpoints_are_one_line_errors(run, tmp_path, capsys):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    for stage1, expected in ((text, "truncated or not a PyTorch checkpoint"), (tmp_path / "nowhere.ckpt", "does not exist"),
                             (run["data"], "without model_index.json")):
        assert export("--stage1", stage1, "--out", tmp_path / "m") == 1
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not (tmp_path / "m").exists()
