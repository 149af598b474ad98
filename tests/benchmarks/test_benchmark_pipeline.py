"""`benchmark pipeline`: UNet evaluations and time per pair, the pipeline against the reference schedule."""
import json
import types

import pytest
import torch

from amlight.benchmarks.pipeline_speed import (
    SD15_SCHEDULER_CONFIG,
    TEST_PRESET,
    UNetCounter,
    build_models,
    expected_rows,
    pipeline_schedule,
    reference_schedule,
    synthetic_inputs,
)
from amlight.cli.commands.benchmark import main
from amlight.pipeline.synthesis import AMPipeline

STEPS = 2
TARGETS = 8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Many tiny ops: on a busy 2-core machine two OpenMP threads wait at every op's barrier for a
    # time slice (50 s instead of 3 s for the counting test); one thread does not.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def models():
    return build_models(TEST_PRESET)


@pytest.fixture(scope="module")
def data():
    return synthetic_inputs(TARGETS, TEST_PRESET.resolution, TEST_PRESET.num_classes, seed=0)


def _trained_like(adapter, seed=1):
    """A copy of the zero-init adapter with random weights, so that it changes the attention."""
    import copy

    adapter = copy.deepcopy(adapter)
    g = torch.Generator().manual_seed(seed)
    for p in adapter.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return adapter


def test_evaluation_counts_follow_the_schedules(models, data):
    pipe = AMPipeline.from_model(models.model, models.backbone, adapter=models.adapter)
    ex, ex_labels, targets = data["exemplar_image"], data["exemplar_labels"], data["target_labels"]
    with UNetCounter(models.model) as seen_pipe:
        _, counters = pipeline_schedule(pipe, ex, ex_labels, targets, STEPS)
    with UNetCounter(models.model) as seen_ref:
        reference_schedule(models.model, models.backbone, ex, ex_labels, targets, STEPS, adapter=models.adapter)

    # Reference, per pair: inversion (steps x 1 row), appearance on both CFG halves (steps x 2 rows),
    # generation [uncond ; cond] (steps x 2 rows); nothing shared between pairs.
    ref_per_pair = STEPS * 1 + STEPS * 2 + STEPS * 2
    assert seen_ref.rows == TARGETS * ref_per_pair
    assert seen_ref.calls == TARGETS * 3 * STEPS
    # Pipeline: inversion + bank writing once (2 x steps calls over the one exemplar), then one call
    # per step over 2 x targets rows.
    pipe_per_pair = (2 * STEPS) / TARGETS + 2 * STEPS
    assert seen_pipe.rows / TARGETS == pytest.approx(pipe_per_pair)
    assert seen_pipe.calls == 2 * STEPS + STEPS
    # The pipeline's own counters agree with the hook.
    assert counters["bank_rows"] + counters["sample_rows"] == seen_pipe.rows
    assert counters["bank_calls"] + counters["sample_calls"] == seen_pipe.calls

    ratio = seen_pipe.rows / seen_ref.rows
    assert ratio == pytest.approx(pipe_per_pair / ref_per_pair)
    assert ratio <= 0.5
    expected = expected_rows(STEPS, TARGETS)
    assert expected["reference_per_pair"] == ref_per_pair
    assert expected["pipeline_per_pair"] == pytest.approx(pipe_per_pair)


@pytest.mark.parametrize("mode", ["adapter", "augmented"])
def test_reference_draws_the_pipelines_image_for_one_pair(models, data, mode):
    adapter = _trained_like(models.adapter)
    pipe = AMPipeline.from_model(models.model, models.backbone, adapter=adapter)
    ex, ex_labels, target = data["exemplar_image"], data["exemplar_labels"], data["target_labels"][:1]
    ours, _ = pipeline_schedule(pipe, ex, ex_labels, target, STEPS, mode=mode, seed=5)
    ref = reference_schedule(models.model, models.backbone, ex, ex_labels, target, STEPS, adapter=adapter,
                             mode=mode, seed=5)
    assert ref.shape == ours.shape == (1, 3, TEST_PRESET.resolution, TEST_PRESET.resolution)
    torch.testing.assert_close(ref, ours, atol=1e-4, rtol=1e-4)
    other = reference_schedule(models.model, models.backbone, ex, ex_labels, target, STEPS, adapter=adapter,
                               mode=mode, seed=6)
    assert (other - ref).abs().max() > 1e-3  # the seed matters: the match is not trivial


def test_adapter_changes_the_reference_image(models, data):
    # The single-pair match above covers the adapter's path only if the adapter changes the image.
    ex, ex_labels, target = data["exemplar_image"], data["exemplar_labels"], data["target_labels"][:1]
    kw = dict(mode="adapter", seed=5)
    plain = reference_schedule(models.model, models.backbone, ex, ex_labels, target, STEPS, adapter=models.adapter, **kw)
    refined = reference_schedule(models.model, models.backbone, ex, ex_labels, target, STEPS,
                                 adapter=_trained_like(models.adapter), **kw)
    assert (plain - refined).abs().max() > 1e-4


def test_synthetic_exemplar_covers_every_class():
    data = synthetic_inputs(4, 32, 10, seed=3)
    assert set(data["exemplar_labels"].unique().tolist()) == set(range(10))
    assert data["target_labels"].shape == (4, 32, 32)
    assert data["exemplar_image"].min() >= -1 and data["exemplar_image"].max() <= 1


def test_sd15_schedule_can_be_inverted():
    from diffusers import DDIMScheduler

    from amlight.pipeline.inversion import inverse_scheduler, sampling_timesteps

    config = dict(SD15_SCHEDULER_CONFIG)  # what the sd15-random backbone uses
    backbone = types.SimpleNamespace(scheduler_config=config, sample_scheduler=lambda: DDIMScheduler.from_config(config))
    for steps in (1, 4, 20):
        forward = sampling_timesteps(backbone, steps)
        assert torch.equal(inverse_scheduler(backbone, steps).timesteps.flip(0), forward)
    assert sampling_timesteps(backbone, 4).tolist() == [751, 501, 251, 1]


def test_cli_writes_the_record_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "nested" / "pipeline.json"
    assert main(["pipeline", "--tiny", "--steps", "2", "--threads", "1", "--no-warmup", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "pipeline"
    cfg = record["config"]
    assert cfg["preset"] == "tiny-test" and cfg["steps"] == 2 and cfg["targets"] == 8 and cfg["mode"] == "adapter"
    env = record["environment"]
    assert env["torch_threads"] == 1 and env["cpu_count"] >= 1 and env["torch"] == torch.__version__
    evals, timing = record["evals"], record["time"]
    assert evals["reference_per_pair"] == 2 + 2 * 2 + 2 * 2
    assert evals["pipeline_per_pair"] == pytest.approx(2 * 2 / 8 + 2 * 2)
    assert evals["ratio"] == pytest.approx(evals["pipeline_per_pair"] / evals["reference_per_pair"])
    assert evals["goal"] == 0.5 and evals["goal_met"] is True and evals["match_formula"] is True
    assert timing["goal"] == 2.0 and isinstance(timing["goal_met"], bool)
    assert timing["pipeline_s_per_pair"] > 0 and timing["reference_s_per_pair"] > 0
    assert timing["speedup"] == pytest.approx(timing["reference_s_per_pair"] / timing["pipeline_s_per_pair"])
    for name in ("pipeline", "reference"):
        schedule = record["schedules"][name]
        assert len(schedule["runs"]) == 1 and schedule["runs"][0]["total_s"] > 0
    assert len(record["schedules"]["reference"]["runs"][0]["pair_s"]) == 8
    assert record["schedules"]["pipeline"]["counters_agree"] is True
    assert record["agreement"]["match"] is True
    assert not [p for p in out.parent.iterdir() if p != out]  # written atomically
    table = capsys.readouterr().out
    assert "UNet evals/pair" in table and "speedup" in table and "tiny-test" in table and str(out) in table


def test_batch_size_splits_the_sampling_calls_not_the_work(tmp_path, capsys):
    out = tmp_path / "pipeline.json"
    assert main(["pipeline", "--tiny", "--steps", "2", "--targets", "3", "--batch-size", "2", "--threads", "1",
                 "--no-warmup", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["config"]["batch_size"] == 2
    counters = record["schedules"]["pipeline"]["runs"][0]["pipeline_counters"]
    assert counters["sample_calls"] == 2 * 2  # 2 steps x (targets 1-2, target 3)
    assert counters["sample_rows"] == 2 * 2 * 3  # [uncond ; cond] rows of all 3 targets each step
    assert record["agreement"]["match"] is True
    assert "--batch-size 2" in capsys.readouterr().out
    assert main(["pipeline", "--tiny", "--batch-size", "0"]) == 2


def test_cli_rejects_bad_arguments(capsys):
    assert main(["pipeline", "--preset", "sd15-random", "--tiny"]) == 2
    assert main(["pipeline", "--guidance-scale", "1"]) == 2
    assert main(["pipeline", "--steps", "0"]) == 2
    assert main(["pipeline", "--preset", "sd21"]) == 2
    err = capsys.readouterr().err
    assert "--tiny shrinks the tiny preset only" in err and "expected an integer >= 1" in err
