"""Exemplar-target pairs in batches: each exemplar's banks built once, its targets drawn batch by batch.

The one place where generation is cut into :meth:`~amlight.pipeline.synthesis.AMPipeline.build_banks`
and :meth:`~amlight.pipeline.synthesis.AMPipeline.draw` calls:

- :class:`PairBatches` is the loop behind ``python -m amlight generate`` and ``predict``: jobs are
  grouped by exemplar, cut into fixed batches (:class:`BatchPlan`), every exemplar's banks are built
  once (a chunk of exemplars per call) and served to all its targets, and each image is handed to a
  :class:`PairSink` (``amlight.apps.outputs`` writes files; nothing here knows about files).
- :func:`group_banks` builds the banks of the distinct exemplars of a group of rows in one call,
  with each row's index into them: ``python -m amlight evaluate`` calls it once per chunk of pairs
  and reuses the banks for every mode and seed.
- :func:`concat_banks`, :func:`slice_banks`, :func:`distinct_rows` and :func:`fixed_batches` are the
  pieces both share.

A batch's make-up is fixed by the job list alone (never by which outputs exist), so a resumed run
makes exactly the calls of an uninterrupted one: float sums, hence the bytes of the images, can
depend on a batch's size and members.

Python (``jobs``: anything with ``name``, ``exemplar``, ``load()`` and ``bank_key(inputs)``, e.g.
:class:`amlight.apps.inputs.Job`)::

    from amlight.modules.attention_modes import AttentionSettings
    from amlight.pipeline.pair_batches import PairBatches

    class Collect:                                   # a PairSink
        def __init__(self):
            self.images = {}
        def skipped(self, job, inputs):
            pass
        def drawn(self, job, inputs, image):         # uint8 (3, H, W)
            self.images[job.name] = image

    sink = Collect()
    PairBatches(pipe, jobs, attention=AttentionSettings("adapter"), steps=20, seed=0, batch_size=8).run(sink)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Hashable, Protocol, Sequence, TypeVar

import torch

from amlight.modules.attention_modes import AttentionSettings
from amlight.pipeline.exemplar_banks import ExemplarBanks
from amlight.pipeline.synthesis import UncoveredClassWarning
from amlight.utils.visualize import to_uint8

T = TypeVar("T")


class PairInputs(Protocol):
    """The tensors of one pair, at the model's size."""

    exemplar_image: torch.Tensor  # (3, H, W) in [-1, 1]
    exemplar_labels: torch.Tensor  # (H, W)
    target_labels: torch.Tensor  # (H, W)
    exemplar_match: torch.Tensor | None  # what the categorical cost compares (one-to-one mapping), if not the labels
    target_match: torch.Tensor | None


class PairJob(Protocol):
    """One output: ``name`` (unique in a run), ``exemplar`` (jobs with equal ones share its banks),
    ``load()`` for the tensors and ``bank_key(inputs)`` (equal keys: the same banks)."""

    name: str
    exemplar: str

    def load(self) -> PairInputs: ...

    def bank_key(self, inputs: PairInputs) -> tuple: ...


class PairSink(Protocol):
    """Where :class:`PairBatches` hands every job of the run, in batch order."""

    def skipped(self, job: PairJob, inputs: PairInputs) -> None:
        """``job``'s output is there already (it is not drawn)."""

    def drawn(self, job: PairJob, inputs: PairInputs, image: torch.Tensor) -> None:
        """``job`` drawn: ``image`` uint8 (3, H, W)."""


# --- the pieces -----------------------------------------------------------------------------------


def fixed_batches(items: Sequence[T], size: int) -> list[list[T]]:
    """``items`` cut in order into batches of ``size`` (the last one shorter): item ``i`` is always in
    batch ``i // size``, whatever else the run does."""
    size = max(1, int(size))
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)]


def distinct_rows(keys: Sequence[Hashable]) -> tuple[list[int], list[int]]:
    """(the first row of each distinct key, in first-appearance order; each row's index into them)."""
    position: dict[Hashable, int] = {}
    first: list[int] = []
    index: list[int] = []
    for row, key in enumerate(keys):
        if key not in position:
            position[key] = len(first)
            first.append(row)
        index.append(position[key])
    return first, index


def concat_banks(parts: Sequence[ExemplarBanks]) -> ExemplarBanks:
    """One :class:`~amlight.pipeline.exemplar_banks.ExemplarBanks` over several exemplars' banks (same schedule)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    banks = [{layer: torch.cat([p.banks[i][layer] for p in parts]) for layer in step}
             for i, step in enumerate(first.banks)]
    return ExemplarBanks(
        timesteps=first.timesteps, banks=banks,
        exemplar_labels=torch.cat([p.exemplar_labels for p in parts]),
        latent_size=first.latent_size,
        unet_calls=sum(p.unet_calls for p in parts), unet_rows=sum(p.unet_rows for p in parts),
        meta=dict(first.meta),
    )


def slice_banks(banks: ExemplarBanks, j: int) -> ExemplarBanks:
    """Exemplar ``j`` of an :class:`~amlight.pipeline.exemplar_banks.ExemplarBanks` as banks of its own."""
    n = max(1, banks.batch)
    return ExemplarBanks(
        timesteps=banks.timesteps, banks=[{layer: t[j:j + 1] for layer, t in step.items()} for step in banks.banks],
        exemplar_labels=banks.exemplar_labels[j:j + 1], latent_size=banks.latent_size,
        unet_calls=banks.unet_calls // n, unet_rows=banks.unet_rows // n, meta=dict(banks.meta),
    )


def group_banks(pipe, exemplar_images: torch.Tensor, exemplar_labels: torch.Tensor, keys: Sequence[Hashable],
                steps: int, *, seed: int = 0, match_labels: torch.Tensor | None = None,
                controlnet_scale: float | None = None) -> tuple[ExemplarBanks, torch.Tensor]:
    """The banks of a group of rows' distinct exemplars (rows with equal ``keys`` share one), built in
    one ``pipe.build_banks`` call in first-appearance order, and each row's index into them.

    ``exemplar_images`` (N, 3, H, W), ``exemplar_labels`` (N, H, W) and ``match_labels`` (N, H, W or
    None) hold one row per key. A VAE samples its posterior with one generator per call, so an
    exemplar's banks depend on the group it is built in: callers keep their groups fixed.
    """
    first, index = distinct_rows(keys)
    picked = torch.as_tensor(first)
    banks = pipe.build_banks(exemplar_images[picked], exemplar_labels[picked], steps, seed=seed,
                             match_labels=None if match_labels is None else match_labels[picked],
                             controlnet_conditioning_scale=controlnet_scale)
    return banks, torch.as_tensor(index)


def stack_match(labels: Sequence[torch.Tensor], match: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """The match labels of a batch: each row's own, its labels where it has none; None when no row has any."""
    if all(m is None for m in match):
        return None
    return torch.stack([lab if m is None else m for lab, m in zip(labels, match)])


# --- the loop of generate and predict --------------------------------------------------------------


@dataclass
class BatchPlan:
    """The fixed cut of a job list into UNet batches, and what each batch needs from the bank cache.

    Jobs are grouped by exemplar (first-appearance order) so each exemplar's banks are built once,
    then cut into batches of ``batch_size``. A batch with anything left to draw is drawn whole (its
    finished members are not rewritten): a resumed run computes exactly the batches of an
    uninterrupted one, so its images are the same bytes (float results can depend on the batch's
    size and make-up). Exemplars are inverted in fixed chunks of ``batch_size`` (first-appearance
    order), each chunk in one batched call, for the same reason.
    """

    batches: list[list[PairJob]]
    todo: set[str]  # output names not there yet
    last_use: dict[str, int]  # exemplar -> the last batch with something to draw that reads it
    chunk_members: dict[str, list[str]]  # exemplar -> the exemplars inverted in the same call
    representative: dict[str, PairJob]  # exemplar -> its first job (whose inputs invert it for its chunk)

    @classmethod
    def of(cls, jobs: Sequence[PairJob], batch_size: int, done: Callable[[str], bool] = lambda name: False
           ) -> "BatchPlan":
        """The plan of ``jobs``; ``done(name)``: whether that output exists already (it is not drawn)."""
        first_seen: dict[str, int] = {}
        for i, job in enumerate(jobs):
            first_seen.setdefault(job.exemplar, i)
        ordered = sorted(jobs, key=lambda j: first_seen[j.exemplar])
        batches = fixed_batches(ordered, batch_size)
        todo = {job.name for job in ordered if not done(job.name)}
        last_use: dict[str, int] = {}
        for b, batch in enumerate(batches):
            if any(job.name in todo for job in batch):
                for job in batch:
                    last_use[job.exemplar] = b
        exemplar_order = list(dict.fromkeys(job.exemplar for job in ordered))
        chunk_members = {e: chunk for chunk in fixed_batches(exemplar_order, batch_size) for e in chunk}
        representative: dict[str, PairJob] = {}
        for job in ordered:
            representative.setdefault(job.exemplar, job)
        return cls(batches, todo, last_use, chunk_members, representative)


class PairBatches:
    """Draws the jobs of one run batch by batch (see :class:`BatchPlan`), with a cache of exemplar
    banks that keeps each exemplar's only while a batch still to be drawn reads it.

    ``attention``: how every pair reads its exemplar; ``seed``: the initial noise of every target;
    ``controlnet_scale``: a ControlNet's conditioning scale for every bank and image (None: the
    model's own); ``done(name)``: whether an output exists already. ``bank_unet_calls`` counts the
    UNet calls spent on banks so far.
    """

    def __init__(self, pipe, jobs: Sequence[PairJob], *, attention: AttentionSettings, steps: int,
                 guidance_scale: float = 3.0, seed: int = 0, batch_size: int = 8,
                 done: Callable[[str], bool] = lambda name: False, controlnet_scale: float | None = None):
        self.pipe, self.attention = pipe, attention
        self.steps, self.guidance_scale, self.seed = steps, guidance_scale, seed
        self.controlnet_scale = controlnet_scale
        self.plan = BatchPlan.of(jobs, batch_size, done)
        self.banks: dict[tuple, ExemplarBanks] = {}  # PairJob.bank_key -> that exemplar's banks
        self.bank_unet_calls = 0

    def run(self, sink: PairSink) -> None:
        """Every batch in order: its finished jobs to ``sink.skipped``, then (when any is left) the whole
        batch drawn in one pipeline call and its unfinished jobs to ``sink.drawn``."""
        plan = self.plan
        for b, batch in enumerate(plan.batches):
            loaded = [(job, job.load()) for job in batch]
            for job, inputs in loaded:
                if job.name not in plan.todo:
                    sink.skipped(job, inputs)
            if any(job.name in plan.todo for job in batch):
                for (job, inputs), image in zip(loaded, self.draw(loaded, b)):
                    if job.name in plan.todo:
                        sink.drawn(job, inputs, image)
            for exemplar in [e for e, last in plan.last_use.items() if last == b]:
                self.forget(exemplar)

    def forget(self, exemplar: str) -> None:
        """Drop every cached bank of ``exemplar`` (nothing left to draw reads it)."""
        for key in [k for k in self.banks if k[0] == exemplar]:
            del self.banks[key]

    def build(self, members: list[tuple[PairJob, PairInputs]]) -> None:
        """Invert ``members``' exemplars in one batched call and cache each one's banks."""
        inputs = [i for _, i in members]
        keys = [job.bank_key(i) for job, i in members]
        banks, index = group_banks(
            self.pipe, torch.stack([i.exemplar_image for i in inputs]), torch.stack([i.exemplar_labels for i in inputs]),
            keys, self.steps, seed=self.seed,
            match_labels=stack_match([i.exemplar_labels for i in inputs], [i.exemplar_match for i in inputs]),
            controlnet_scale=self.controlnet_scale)
        self.bank_unet_calls += banks.unet_calls
        for key, j in zip(keys, index.tolist()):
            self.banks[key] = slice_banks(banks, j)

    def ensure_banks(self, job: PairJob, inputs: PairInputs, b: int) -> tuple:
        """The cache key of ``job``'s banks, building its exemplar's chunk first if needed (in batch ``b``)."""
        key = job.bank_key(inputs)
        if key in self.banks:
            return key
        plan = self.plan
        chunk = plan.chunk_members[job.exemplar]
        members = [(job, inputs) if e == job.exemplar else (plan.representative[e], plan.representative[e].load())
                   for e in chunk]
        self.build(members)
        for e in chunk:  # exemplars of the chunk with nothing left to draw
            if plan.last_use.get(e, -1) < b:
                self.forget(e)
        if key not in self.banks:  # this job links other regions of its exemplar than the chunk's representative
            self.build([(job, inputs)])
        return key

    def draw(self, batch: list[tuple[PairJob, PairInputs]], b: int) -> torch.Tensor:
        """Every member of batch ``b`` in one pipeline call: uint8 (N, 3, H, W)."""
        banks = index = None
        if self.attention.reads_exemplar:
            keys = [self.ensure_banks(job, inputs, b) for job, inputs in batch]
            first, rows = distinct_rows(keys)
            banks = concat_banks([self.banks[keys[i]] for i in first])
            index = torch.tensor(rows)
        targets = torch.stack([inputs.target_labels for _, inputs in batch])
        match = stack_match([inputs.target_labels for _, inputs in batch], [inputs.target_match for _, inputs in batch])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UncoveredClassWarning)  # the sink reports them per pair, with names
            images = self.pipe.draw(targets, banks, index, attention=self.attention, guidance_scale=self.guidance_scale,
                                    seed=[self.seed] * len(batch), steps=self.steps, target_match_labels=match,
                                    controlnet_conditioning_scale=self.controlnet_scale)
        return to_uint8(images)
