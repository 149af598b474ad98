"""Log where target regions attend in the exemplar, per attention mode, while a stage trains.

Panel per sample and layer (amlight.apps.attention_panel, the notebook's and the app's rendering): one
row per query point (one per target class, deep inside its region, labelled with the class); columns,
each with its header: target labels with the point | the exemplar attention of that point, one column
per mode | the exemplar pixels of the point's class (what a perfect match would light up); a title with
the layer, its token grid and the timestep. Tag: ``attention/<layer>_<h>x<w>_t<timestep>/sample<i>``. Scalars: the share of
exemplar attention that lands on the same class, and the share of all attention spent on the exemplar.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from amlight.modules.attention_modes import BLOCK_GROUPS, AttentionSettings
from amlight.apps.attention_probe import (
    PROBE_MODES,
    choose_query_points,
    default_probe_layers,
    draw_marker,
    eval_mode,
    heatmap_overlay,
    probe_attention,
    short_layer_name,
)
from amlight.apps.attention_panel import attention_panel, panel_tag, panel_title, tag_layer_name, to_chw
from amlight.utils.visualize import colorize, save_png
from amlight.callbacks.precision import trainer_precision
from amlight.callbacks.run_dir import run_dir


class AttentionMaps(L.Callback):
    """Args:
        every_n_steps: also probe every N optimizer steps during training (0: only at validation end).
        num_samples: samples taken from the first validation batch (the same ones every time).
        layers: self-attention layer names; None: the highest-resolution down layer, the mid layer and
            the highest-resolution up layer among those that read the bank.
        modes: attention modes compared side by side; None: augmented and adapter when the module has
            an adapter, else augmented and hard_mask.
        timestep: noise level of the probe (0..T-1; the attention pattern changes a lot with it).
        max_points: query points (classes) per sample.
        upscale: nearest-neighbour zoom of the panels.
        save_png: also write ``<log_dir>/attention/step_XXXXXX_<layer>_<h>x<w>_t<timestep>_s<i>.png``.

    Scalars (over the probed layers and samples): ``attention/same_class_mass/<mode>`` and
    ``attention/exemplar_share/<mode>``.
    """

    def __init__(
        self,
        every_n_steps: int = 250,
        num_samples: int = 2,
        layers: list[str] | None = None,
        modes: list[str] | None = None,
        timestep: int = 500,
        max_points: int = 4,
        upscale: int = 4,
        save_png: bool = True,
    ):
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0, got {every_n_steps}")
        if modes is not None:
            unknown = [m for m in modes if m not in PROBE_MODES]
            if unknown or not modes:
                raise ValueError(f"unknown probe mode(s) {unknown}; choose from {', '.join(PROBE_MODES)}")
        self.every_n_steps, self.num_samples = every_n_steps, num_samples
        self.layers, self.modes = (list(layers) if layers else None), (list(modes) if modes else None)
        self.timestep, self.max_points, self.upscale, self.save = timestep, max_points, upscale, save_png
        self._batch: dict | None = None
        self._last_train_step = -1
        self._warned: set[str] = set()
        self._sizes: dict[str, tuple[int, int]] = {}
        self.last_paths: list[Path] = []
        self.last_scalars: dict[str, float] = {}

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=2)

    def _take(self, batch: dict) -> dict:
        n = self.num_samples
        return {k: batch[k][:n].detach().cpu() for k in ("image", "labels", "exemplar_image", "exemplar_labels")}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and dataloader_idx == 0 and self._batch is None:
            self._batch = self._take(batch)

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or self._batch is None or not trainer.is_global_zero:
            return
        self.run(trainer, pl_module, self._batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.every_n_steps <= 0:
            return
        step = trainer.global_step
        # Several micro-batches share one global step under gradient accumulation: probe once.
        if step == self._last_train_step or step % self.every_n_steps != 0:
            return
        self._last_train_step = step
        if not trainer.is_global_zero:
            return
        self.run(trainer, pl_module, self._batch if self._batch is not None else self._take(batch))

    def run(self, trainer, pl_module, batch: dict) -> None:
        """Probe ``batch``, log panels and scalars at the trainer's global step, write PNGs."""
        if not hasattr(pl_module, "probe_parts"):
            name = type(pl_module).__name__
            self._warn_once("parts", f"AttentionMaps: {name} has no probe_parts(); no attention maps")
            return
        metadata = getattr(trainer.datamodule, "metadata", None) if trainer.datamodule is not None else None
        # The whole module goes to eval (not only the probed parts) and every submodule's flag comes back.
        with eval_mode(pl_module), torch.no_grad(), trainer_precision(trainer):
            panels, scalars = self.render(pl_module, batch, metadata)
        step = trainer.global_step
        self.last_scalars = scalars
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for (layer, i), panel in panels.items():
                    logger.experiment.add_image(panel_tag(layer, self._sizes[layer], self.timestep, i), panel, step)
            if scalars:
                # The logger's own API: pl_module.log is not allowed in every hook this runs from.
                logger.log_metrics(scalars, step)
        self.last_paths = []
        if self.save and run_dir(trainer) is not None:
            folder = run_dir(trainer) / "attention"
            for (layer, i), panel in panels.items():
                h, w = self._sizes[layer]
                name = f"step_{step:06d}_{tag_layer_name(layer)}_{h}x{w}_t{self.timestep}_s{i}.png"
                self.last_paths.append(save_png(panel, folder / name))

    def _modes(self, adapter) -> list[str]:
        if self.modes is None:
            return ["augmented", "adapter"] if adapter is not None else ["augmented", "hard_mask"]
        usable = [m for m in self.modes if adapter is not None or not AttentionSettings(m).uses_adapter]
        if len(usable) < len(self.modes):
            self._warn_once("adapter", "AttentionMaps: mode 'adapter' skipped: the module has no adapter")
        return usable

    def render(self, pl_module, batch: dict, metadata=None):
        """({(layer, sample): uint8 (3, H', W') panel}, {tag: float}) for ``batch``."""
        model, backbone, adapter = pl_module.probe_parts()
        hparams = getattr(pl_module, "hparams", {})
        groups = tuple(hparams.get("attention_blocks", BLOCK_GROUPS)) if hasattr(hparams, "get") else BLOCK_GROUPS
        layers = self.layers or default_probe_layers(model.self_attention_layers, groups)
        modes = self._modes(adapter)
        if not modes or not layers:
            return {}, {}
        results = {
            mode: probe_attention(model, backbone, batch, mode, adapter=adapter, timestep=self.timestep,
                                  layers=layers, groups=groups)
            for mode in modes
        }
        scalars = {}
        for mode, result in results.items():
            if result.layers:
                scalars[f"attention/same_class_mass/{mode}"] = result.same_class_mass()
                scalars[f"attention/exemplar_share/{mode}"] = result.exemplar_share()
        recorded = [layer for layer in layers if all(layer in r.probs for r in results.values())]
        if len(recorded) < len(layers):
            self._warn_once("layers", f"AttentionMaps: layers {sorted(set(layers) - set(recorded))} do not read the "
                                      "exemplar bank (attention_blocks) and are not shown")
        panels = {}
        self._sizes = {layer: results[modes[0]].size[layer] for layer in recorded}
        names = metadata.class_names if metadata is not None else None
        target_colours = colorize(batch["labels"], metadata)
        for i in range(batch["labels"].shape[0]):
            points = choose_query_points(batch["labels"][i], model.ignore_index, max_points=self.max_points)
            if not points:
                continue
            exemplar = batch["exemplar_image"][i]
            rows = [names[c] if names is not None and 0 <= c < len(names) else f"class {c}" for _, _, c in points]
            target = torch.stack([draw_marker(target_colours[i], (r, c)) for r, c, _ in points])
            for layer in recorded:
                heat = {mode: torch.stack([
                    heatmap_overlay(exemplar, results[mode].attention_map(layer, i, (r, c))) for r, c, _ in points
                ]) for mode in modes}
                any_result = results[modes[0]]
                same = torch.stack([
                    heatmap_overlay(exemplar, any_result.cost_map(layer, i, (r, c)).float()) for r, c, _ in points
                ])
                picture = attention_panel(target, heat, same, row_labels=rows, upscale=self.upscale,
                                          title=panel_title(layer, self._sizes[layer], self.timestep))
                panels[(layer, i)] = to_chw(picture)
        return panels, scalars
