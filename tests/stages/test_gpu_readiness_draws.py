"""Issue 17, item 3: each rank draws its own timesteps, noise and exemplar dropout; one seed, one run.

The two-process check is tests/e2e/test_ddp.py (slow); here the rank is faked in one process.
"""
import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from amlight.stages import GenerationStage
from amlight.stages.denoising_stage import train_generator

from helpers.tiny_models import TINY_OPTIONS, make_batch


def _first_step_draws(seed: int, rank: int, monkeypatch) -> list[torch.Tensor]:
    monkeypatch.setattr(GenerationStage, "global_rank", property(lambda self: rank))
    L.seed_everything(seed, verbose=False)
    stage = GenerationStage(num_classes=5, backbone_options=TINY_OPTIONS, guidance_channels=16, exemplar_dropout=0.5)
    draws = []
    add_noise, read = stage.train_scheduler.add_noise, stage.model.forward

    def recording_add_noise(latents, noise, t):
        draws.extend([noise.clone(), t.clone()])
        return add_noise(latents, noise, t)

    def recording_forward(noisy, t, labels, prompt, read_=None):
        if read_ is not None and read_.exemplar_keep is not None:
            draws.append(read_.exemplar_keep.clone())
        return read(noisy, t, labels, prompt, read_)

    monkeypatch.setattr(stage.train_scheduler, "add_noise", recording_add_noise)
    monkeypatch.setattr(stage.model, "forward", recording_forward)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(stage, train_dataloaders=DataLoader([make_batch(n=8)], batch_size=None))
    return draws


def test_ranks_draw_differently_and_a_seed_repeats_its_draws(monkeypatch):
    rank0 = _first_step_draws(0, rank=0, monkeypatch=monkeypatch)
    assert len(rank0) == 5  # target noise and t, exemplar noise and t, dropout mask
    again = _first_step_draws(0, rank=0, monkeypatch=monkeypatch)
    assert all(torch.equal(a, b) for a, b in zip(rank0, again))
    rank1 = _first_step_draws(0, rank=1, monkeypatch=monkeypatch)
    noise, t = 0, 1
    # Before the fix every rank drew from the global generator, seeded alike on every rank.
    assert not torch.equal(rank0[noise], rank1[noise])
    assert not torch.equal(rank0[t], rank1[t])


def test_train_generator_depends_on_seed_rank_and_step():
    def draw(*args):
        return torch.rand(4, generator=train_generator(*args))

    assert torch.equal(draw(0, 0, 0), draw(0, 0, 0))
    others = [draw(0, 1, 0), draw(1, 0, 0), draw(0, 0, 10)]
    assert all(not torch.equal(draw(0, 0, 0), o) for o in others)
    assert not torch.equal(draw(1, 0, 0), draw(0, 1, 0))  # not seed + rank: seed 1 rank 0 is not seed 0 rank 1


@pytest.mark.parametrize("seed", [-1, 2**64 - 1])
def test_train_generator_takes_any_torch_seed(seed):
    train_generator(seed, 3, 7)
