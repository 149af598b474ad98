"""``evaluate`` on a model whose structure guidance is a ControlNet (issue 20 item 5): the four modes are
the paper's baselines and are named so in the table (results.json keeps the mode keys and adds the
label); ``--controlnet-scale`` is recorded, keys the image cache, and is refused without a ControlNet."""
import json

import pytest

from amlight.cli.commands.evaluate import main
from amlight.metrics.evaluation import CONTROLNET_LABELS
from amlight.metrics.evaluation_report import results_markdown
from amlight.modules.attention_modes import ATTENTION_MODES as MODES

from helpers.folder_datasets import PAIRED_COLORS as COLORS, PAIRED_NAMES as NAMES, make_paired_dataset
from helpers.tiny_models import save_controlnet_folder

PAIRS = 2
EXPECTED = {"structure_only": "ControlNet", "augmented": "ControlNet + cross-image attention",
            "hard_mask": "ControlNet + masked attention", "adapter": "ControlNet + AM-Adapter"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_cn")
    data = make_paired_dataset(root / "data")
    folder = save_controlnet_folder(root / "folder", colors=COLORS, names=NAMES)
    return {"root": root, "data": data, "folder": folder}


def _args(setup, out, *extra):
    return ["--pipeline", str(setup["folder"]), "--data", str(setup["data"]), "--max-pairs", str(PAIRS),
            "--steps", "2", "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def evaluated(setup):
    out = setup["root"] / "run"
    assert main(_args(setup, out)) == 0
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_results_json_keeps_the_mode_keys_and_adds_the_baseline_names(evaluated):
    record, _ = evaluated
    assert CONTROLNET_LABELS == EXPECTED
    assert list(record["modes"]) == list(MODES)
    assert {mode: entry["label"] for mode, entry in record["modes"].items()} == EXPECTED
    assert record["settings"]["structure_guidance"] == "controlnet"
    assert record["settings"]["controlnet_scale"] == 1.0  # the folder's own, recorded


def test_results_md_names_the_rows_as_the_papers_baselines(evaluated):
    record, text = evaluated
    rows = [line for line in text.splitlines() if line.startswith("| ControlNet")]
    assert [row.split("|")[1].strip() for row in rows[:4]] == [f"{EXPECTED[m]} (`{m}`)" for m in MODES]
    assert all(" ± " in cell for cell in rows[0].split("|")[2:6])  # the metric cells are where they were
    assert "ControlNet scale 1" in text
    # The ΔE-per-class table names its rows the same way.
    per_class = text.split("## ΔE per class")[1]
    assert "| ControlNet + AM-Adapter (`adapter`) |" in per_class


def test_a_record_without_labels_keeps_plain_mode_rows(evaluated):
    record, _ = evaluated
    plain = json.loads(json.dumps(record))
    for entry in plain["modes"].values():
        del entry["label"]
    text = results_markdown(plain)
    assert "| `adapter` |" in text and "ControlNet +" not in text


def test_controlnet_scale_is_recorded_and_keys_the_cache(setup, evaluated):
    record, _ = evaluated
    out = setup["root"] / "weak"
    assert main(_args(setup, out, "--modes", "structure_only,augmented", "--controlnet-scale", "0.25")) == 0
    weak = json.loads((out / "results.json").read_text())
    assert weak["settings"]["controlnet_scale"] == 0.25
    assert weak["generation"]["generated"] == 2 * PAIRS and weak["generation"]["reused"] == 0
    for mode in ("structure_only", "augmented"):
        assert weak["modes"][mode]["cache_key"] != record["modes"][mode]["cache_key"]
        config = json.loads((out / "cache" / weak["modes"][mode]["cache_key"] / "config.json").read_text())
        assert config["controlnet_scale"] == 0.25
    # The folder's own scale given explicitly is the default run: its cache key, nothing redrawn.
    same = setup["root"] / "run"
    assert main(_args(setup, same, "--modes", "structure_only", "--controlnet-scale", "1")) == 0
    again = json.loads((same / "results.json").read_text())
    assert again["modes"]["structure_only"]["cache_key"] == record["modes"]["structure_only"]["cache_key"]
    assert again["generation"]["generated"] == 0


def test_controlnet_scale_is_refused_without_a_controlnet(tmp_path, stage1_ckpt, capsys):
    data = make_paired_dataset(tmp_path / "data")
    out = tmp_path / "out"
    code = main(["--stage1", str(stage1_ckpt), "--data", str(data), "--max-pairs", "1", "--steps", "2",
                 "--modes", "structure_only", "--controlnet-scale", "0.5", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "--controlnet-scale" in err[0] and "no ControlNet" in err[0]
    assert str(stage1_ckpt) in err[0]
    assert not out.exists()


def test_a_sweep_over_the_controlnet_scale_gives_one_labelled_row_per_value(setup):
    out = setup["root"] / "sweep"
    assert main(_args(setup, out, "--modes", "structure_only", "--sweep", "controlnet_scale=0.25,1")) == 0
    rows = json.loads((out / "sweeps.json").read_text())["sweeps"]["controlnet_scale"]
    assert [r["settings"]["controlnet_scale"] for r in rows] == [0.25, 1.0]
    assert rows[0]["modes"]["structure_only"]["cache_key"] != rows[1]["modes"]["structure_only"]["cache_key"]
    text = (out / "sweeps.md").read_text()
    assert "| `controlnet_scale=0.25` | ControlNet (`structure_only`) |" in text
