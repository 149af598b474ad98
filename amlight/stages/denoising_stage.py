"""What both stages share: the loop around their ``denoising_loss`` and the warm-up optimiser."""
from __future__ import annotations

import lightning as L
import numpy as np
import torch


class DenoisingStage(L.LightningModule):
    """Subclasses define ``denoising_loss(batch, generator=None)`` and save ``lr``, ``weight_decay``
    and ``warmup_steps`` as hyper-parameters; every trainable parameter is optimised. Subclasses with
    frozen parts (plain attributes, not submodules) put them in place in ``place_frozen()``.

    Both stages' optimiser arguments, described once here (jsonargparse reads base classes' docstrings
    for ``fit --model.help``):

    Args:
        lr, weight_decay: AdamW's learning rate and weight decay, for the trainable parameters.
        warmup_steps: linear learning-rate warm-up over this many steps (from lr / warmup_steps to lr).
    """

    _train_generator: torch.Generator | None = None

    def place_frozen(self) -> None:
        """Put the frozen parts on ``self.device`` as normal (not inference) tensors; cheap when they are."""

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        # Frozen parts follow the module where Lightning moves it (outside inference mode), not on first
        # use, which may be the sanity check or trainer.validate(), both under torch.inference_mode.
        self.place_frozen()
        return module

    def on_train_start(self) -> None:
        # Ranks are seeded alike: drawing timesteps, noise and dropout from the global generator would
        # give every rank the same draws. global_step: a resumed run does not replay the first draws.
        self._train_generator = train_generator(torch.initial_seed(), self.global_rank, self.global_step)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.denoising_loss(batch, generator=self._train_generator)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # Fixed noise and timesteps per batch: the validation loss is comparable across epochs.
        loss = self.denoising_loss(batch, generator=torch.Generator().manual_seed(1000 + batch_idx))
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0], sync_dist=True)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        warmup = max(1, hp.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def train_generator(seed: int, rank: int, step: int = 0) -> torch.Generator:
    """A CPU generator of the training draws for one rank: same (seed, rank, step), same draws."""
    state = np.random.SeedSequence([seed % 2**63, rank, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def randn_like(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Noise shaped like ``like``; drawn on the CPU from ``generator`` when given (reproducible anywhere)."""
    if generator is None:
        return torch.randn_like(like)
    return torch.randn(like.shape, generator=generator).to(like)


def random_timesteps(high: int, n: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.randint(0, high, (n,), device=device)
    return torch.randint(0, high, (n,), generator=generator).to(device)


def random_uniform(n: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.rand(n, device=device)
    return torch.rand(n, generator=generator).to(device)
