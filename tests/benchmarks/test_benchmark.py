"""`benchmark train`: the JSON record of a shrunken run, and the naive reference's memory arithmetic."""
import json

from amlight.benchmarks.train_speed import GIB, SD15_SELF_ATTENTION, logits_bytes, naive_all_layers_bytes
from amlight.cli.main import main as cli_main
from amlight.cli.commands.benchmark import main

STAGES = ["stage1_structure_only", "stage1_augmented", "stage2_adapter"]


def test_train_benchmark_writes_a_record_with_positive_timings(tmp_path, capsys):
    out = tmp_path / "nested" / "b.json"
    assert main(["train", "--steps", "2", "--warmup", "1", "--skip-memory", "--tiny",
                 "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["config"]["steps"] == 2 and record["config"]["warmup"] == 1
    assert record["environment"]["torch_threads"] >= 1
    step_time = record["step_time"]
    assert sorted(step_time["stages"]) == sorted(STAGES)
    for name in STAGES:
        stage = step_time["stages"][name]
        assert len(stage["times_s"]) == 2  # warm-up steps are not timed
        assert stage["median_s"] > 0 and stage["steps_per_s"] > 0 and stage["trainable_parameters"] > 0
    # stage 2 trains the adapter only: far fewer parameters than stage 1
    assert step_time["stages"]["stage2_adapter"]["trainable_parameters"] < \
        step_time["stages"]["stage1_augmented"]["trainable_parameters"]
    assert step_time["ratio_stage2_over_stage1"] > 0
    assert isinstance(step_time["ratio_goal_met"], bool)
    assert record["memory"] is None
    assert not [p for p in out.parent.iterdir() if p != out]  # no temporary file left beside it
    table = capsys.readouterr().out
    assert "stage 2 / stage 1" in table and "torch threads" in table


def test_benchmark_rejects_bad_arguments(capsys):
    assert cli_main(["benchmark"]) == 2
    assert cli_main(["benchmark", "train", "--steps", "0"]) == 2
    assert "expected an integer >= 1" in capsys.readouterr().err


def test_one_64x64_layer_of_full_logits_is_one_gib():
    # (batch 1, 8 heads, 4096 target tokens, 4096 + 4096 key tokens) fp32
    assert logits_bytes(64 * 64, heads=8) == 8 * 4096 * 8192 * 4 == GIB
    assert naive_all_layers_bytes([(64, 1)], heads=8) == GIB


def test_naive_memory_of_all_sd15_self_attention_layers():
    assert sum(count for _, count in SD15_SELF_ATTENTION) == 16
    # each halving of the side divides a layer's logits by 16
    expected = 5 * GIB + 5 * GIB // 16 + 5 * GIB // 256 + GIB // 4096
    assert naive_all_layers_bytes() == expected
    assert naive_all_layers_bytes(batch=2) == 2 * expected


def test_benchmark_times_the_quickstart_adapter():
    from pathlib import Path

    import yaml

    from amlight.benchmarks.train_speed import QUICKSTART_ADAPTER

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs/quickstart/stage2.yaml").read_text())
    init = config["model"]["init_args"]
    assert {k: init[k] for k in QUICKSTART_ADAPTER} == QUICKSTART_ADAPTER
