"""A callback for the DDP test: each rank writes what it ended with (imported by the spawned ranks)."""
import os

import lightning as L
import torch


class RankDump(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_train_start(self, trainer, pl_module):
        wrapped = trainer.strategy.model  # DistributedDataParallel around the LightningModule while training
        self.wrapper = type(wrapped).__name__
        self.synced = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
        # The first training step's draws: add_noise(latents, noise, timesteps), exemplar then target.
        self.first_draws = []
        scheduler = pl_module.train_scheduler
        add_noise = scheduler.add_noise

        def recording(latents, noise, timesteps):
            if len(self.first_draws) < 2:
                self.first_draws.append({"noise": noise.detach().cpu().clone(), "t": timesteps.detach().cpu().clone()})
            return add_noise(latents, noise, timesteps)

        scheduler.add_noise = recording

    def on_fit_end(self, trainer, pl_module):
        torch.save(
            {
                "rank": trainer.global_rank,
                "world_size": trainer.world_size,
                "adapter": {k: v.detach().cpu() for k, v in pl_module.adapter.state_dict().items()},
                "synced_params": self.synced,
                "adapter_params": sum(p.numel() for p in pl_module.adapter.parameters()),
                "wrapper": self.wrapper,
                "first_draws": self.first_draws,
            },
            os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"),
        )
