"""amlight.pipeline.pair_batches: which build_banks / draw calls a job list makes (a recording stand-in
for the pipeline, no model), and the bank pieces generate, predict and evaluate share."""
from dataclasses import dataclass, field

import pytest
import torch

from amlight.modules.attention_modes import AttentionSettings
from amlight.pipeline.exemplar_banks import ExemplarBanks
from amlight.pipeline.pair_batches import (
    BatchPlan,
    PairBatches,
    concat_banks,
    distinct_rows,
    fixed_batches,
    group_banks,
    slice_banks,
)

SIZE = 4


def banks_of(labels: torch.Tensor, steps: int = 2) -> ExemplarBanks:
    """Banks whose every tensor is the exemplars' label value: slicing and concatenating stay checkable."""
    value = labels[:, :1, 0].float()  # (B, 1)
    return ExemplarBanks(timesteps=torch.arange(steps, 0, -1), exemplar_labels=labels, latent_size=(SIZE, SIZE),
                         banks=[{"layer": value[:, :, None].expand(-1, 3, 2).clone()} for _ in range(steps)],
                         unet_calls=2 * steps, unet_rows=2 * steps * labels.shape[0])


class RecordingPipe:
    """build_banks / draw that record what they were given; draw paints each target with its exemplar's value."""

    def __init__(self):
        self.calls = []

    def build_banks(self, images, labels, steps=20, seed=0, match_labels=None, controlnet_conditioning_scale=None):
        self.calls.append(("build", labels[:, 0, 0].tolist(), seed))
        return banks_of(labels, steps)

    def draw(self, targets, banks, index, *, attention, guidance_scale, seed, steps, target_match_labels,
             controlnet_conditioning_scale):
        self.calls.append(("draw", targets[:, 0, 0].tolist(), None if index is None else index.tolist(), seed))
        value = torch.zeros(len(targets)) if banks is None else banks.banks[0]["layer"][index, 0, 0]
        return (value / 10).reshape(-1, 1, 1, 1).expand(-1, 3, SIZE, SIZE)


@dataclass
class Inputs:
    exemplar_image: torch.Tensor
    exemplar_labels: torch.Tensor
    target_labels: torch.Tensor
    exemplar_match: torch.Tensor | None = None
    target_match: torch.Tensor | None = None


@dataclass
class Job:
    name: str
    exemplar: str
    target: int = 0
    loads: list = field(default_factory=list)

    def load(self) -> Inputs:
        self.loads.append(self.name)
        e = int(self.exemplar[1:])
        return Inputs(torch.zeros(3, SIZE, SIZE), torch.full((SIZE, SIZE), e), torch.full((SIZE, SIZE), self.target))

    def bank_key(self, inputs) -> tuple:
        return (self.exemplar,)


@dataclass
class Sink:
    events: list = field(default_factory=list)

    def skipped(self, job, inputs):
        self.events.append(("skipped", job.name))

    def drawn(self, job, inputs, image):
        self.events.append(("drawn", job.name, int(image[0, 0, 0])))


def jobs_of(spec: str) -> list[Job]:
    """'e1:t5 e2:t6' -> jobs named e1-t5, ... (exemplar value 1, target value 5)."""
    out = []
    for item in spec.split():
        e, t = item.split(":")
        out.append(Job(f"{e}-{t}", e, int(t[1:])))
    return out


def test_fixed_batches_and_distinct_rows():
    assert fixed_batches(range(7), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert fixed_batches([], 3) == [] and fixed_batches("ab", 0) == [["a"], ["b"]]
    assert distinct_rows(["a", "b", "a", "c", "b"]) == ([0, 1, 3], [0, 1, 0, 2, 1])


def test_concat_and_slice_are_inverse():
    banks = banks_of(torch.stack([torch.full((SIZE, SIZE), v) for v in (3, 5, 7)]))
    parts = [slice_banks(banks, j) for j in range(3)]
    assert [p.batch for p in parts] == [1, 1, 1] and parts[1].unet_calls == banks.unet_calls // 3
    again = concat_banks(parts)
    assert torch.equal(again.exemplar_labels, banks.exemplar_labels)
    assert all(torch.equal(a["layer"], b["layer"]) for a, b in zip(again.banks, banks.banks))
    assert concat_banks(parts[:1]) is parts[0]


def test_group_banks_builds_each_distinct_exemplar_once():
    pipe = RecordingPipe()
    labels = torch.stack([torch.full((SIZE, SIZE), v) for v in (3, 5, 3, 7)])
    banks, index = group_banks(pipe, torch.zeros(4, 3, SIZE, SIZE), labels, ["x", "y", "x", "z"], 2, seed=4)
    assert pipe.calls == [("build", [3, 5, 7], 4)]
    assert index.tolist() == [0, 1, 0, 2] and banks.batch == 3


def test_plan_groups_by_exemplar_and_keeps_its_batches_when_resumed():
    jobs = jobs_of("e1:t1 e2:t2 e1:t3 e3:t4 e2:t5")
    plan = BatchPlan.of(jobs, 2)
    assert [[j.name for j in b] for b in plan.batches] == [["e1-t1", "e1-t3"], ["e2-t2", "e2-t5"], ["e3-t4"]]
    assert plan.chunk_members == {"e1": ["e1", "e2"], "e2": ["e1", "e2"], "e3": ["e3"]}
    resumed = BatchPlan.of(jobs, 2, done=lambda name: name != "e2-t5")
    assert resumed.batches == plan.batches and resumed.todo == {"e2-t5"}
    assert resumed.last_use == {"e2": 1}


def test_each_exemplar_is_inverted_once_and_batches_are_drawn_whole():
    pipe, sink = RecordingPipe(), Sink()
    jobs = jobs_of("e1:t1 e2:t2 e1:t3 e3:t4 e2:t5")
    run = PairBatches(pipe, jobs, attention=AttentionSettings("augmented"), steps=2, seed=9, batch_size=2)
    run.run(sink)
    assert pipe.calls == [
        ("build", [1, 2], 9),  # the first chunk of exemplars, in one call
        ("draw", [1, 3], [0, 0], [9, 9]),
        ("draw", [2, 5], [0, 0], [9, 9]),
        ("build", [3], 9),
        ("draw", [4], [0], [9]),
    ]
    assert [e[:2] for e in sink.events] == [("drawn", n) for n in ("e1-t1", "e1-t3", "e2-t2", "e2-t5", "e3-t4")]
    assert [e[2] for e in sink.events] == [140, 140, 153, 153, 166]  # each drawn from its own exemplar's banks
    assert run.banks == {} and run.bank_unet_calls == 8  # nothing kept after its last batch

    # Resumed with only e2-t5 missing: its batch is drawn whole, from the same chunk of exemplars.
    pipe2, sink2 = RecordingPipe(), Sink()
    run2 = PairBatches(pipe2, jobs, attention=AttentionSettings("augmented"), steps=2, seed=9, batch_size=2,
                       done=lambda name: name != "e2-t5")
    run2.run(sink2)
    assert pipe2.calls == [pipe.calls[0], pipe.calls[2]]
    assert sink2.events == [("skipped", "e1-t1"), ("skipped", "e1-t3"), ("skipped", "e2-t2"),
                            ("drawn", "e2-t5", 153), ("skipped", "e3-t4")]


def test_structure_only_builds_no_banks():
    pipe, sink = RecordingPipe(), Sink()
    PairBatches(pipe, jobs_of("e1:t1 e2:t2 e1:t3"), attention=AttentionSettings("structure_only"), steps=2,
                batch_size=8).run(sink)
    assert pipe.calls == [("draw", [1, 3, 2], None, [0, 0, 0])]


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_every_job_reaches_the_sink_once(batch_size):
    jobs = jobs_of("e1:t1 e2:t2 e1:t3 e3:t4 e2:t5 e4:t6")
    sink = Sink()
    PairBatches(RecordingPipe(), jobs, attention=AttentionSettings("hard_mask"), steps=2,
                batch_size=batch_size).run(sink)
    assert sorted(e[1] for e in sink.events) == sorted(j.name for j in jobs)
