import re
import warnings

import lightning as L
import pytest
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

import amlight.callbacks.attention_maps as attention_maps_module
import amlight.apps.attention_probe as probe_module
from amlight.callbacks import AttentionMaps
from amlight.apps.attention_probe import (
    ProbeResult,
    choose_query_points,
    default_probe_layers,
    heatmap_overlay,
    probe_attention,
    short_layer_name,
)

TINY = {"sample_size": 16, "block_out_channels": [16, 32], "attention_heads": 2}


def _layouts(n=2, size=16):
    """Target: top half class 1, a block of class 2 at the bottom. Exemplar: other places, plus a class 3
    the target lacks, so every cross-class column has somewhere to pull attention to."""
    target = torch.zeros(n, size, size, dtype=torch.long)
    target[:, : size // 2] = 1
    target[:, size - 6 :, 4:12] = 2
    exemplar = torch.zeros(n, size, size, dtype=torch.long)
    exemplar[:, size // 2 :] = 1
    exemplar[:, :5, :6] = 2
    exemplar[:, :, size - 2 :] = 3
    return target, exemplar


def _batch(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    target, exemplar = _layouts(n, size)
    return {
        "image": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
        "labels": target,
        "exemplar_image": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
        "exemplar_labels": exemplar,
    }


# --------------------------------------------------------------------------- query points
@pytest.mark.parametrize("scipy", [True, False])
def test_query_points_sit_deep_inside_each_class(monkeypatch, scipy):
    if not scipy:
        monkeypatch.setattr(probe_module, "_edt", None)  # the max-pool erosion fallback
    labels = torch.zeros(32, 32, dtype=torch.long)
    labels[6:23, 5:26] = 3  # 17 x 21 rectangle, centre (14, 15)
    labels[26:29, 26:29] = 1  # 3 x 3 square, centre (27, 27)
    labels[0:2, 0:32] = 255  # ignore: never a query point
    points = choose_query_points(labels)
    assert [cls for _, _, cls in points] == [0, 1, 3]
    for r, c, cls in points:
        assert labels[r, c] == cls
    (r1, c1, _), (r3, c3, _) = points[1], points[2]
    assert (r1, c1) == (27, 27)
    assert abs(r3 - 14) <= 1 and abs(c3 - 15) <= 1
    assert choose_query_points(labels, max_points=2) == points[:2]
    assert choose_query_points(labels.numpy()) == points


# --------------------------------------------------------------------------- same-class mass
def test_known_answer_same_class_mass_and_exemplar_share():
    # One layer at size (1, 3). Target classes per position: [a, a, c]; exemplar: [a, b, b].
    cost_row_a = [True, False, False]
    cost = torch.tensor([[cost_row_a, cost_row_a, [False] * 3]] * 2)
    probs = torch.tensor([
        # Sample 0: 0.3 of 0.4 exemplar mass on class a (0.75); 0.5 of 0.5 (1.0); c is not in the exemplar.
        [[0.3, 0.1, 0.0], [0.5, 0.0, 0.0], [0.2, 0.2, 0.2]],
        # Sample 1: 0.1 of 0.4 (0.25) and 0.25 of 1.0 (0.25).
        [[0.1, 0.2, 0.1], [0.25, 0.5, 0.25], [0.0, 0.0, 0.3]],
    ])
    result = ProbeResult(probs={"l": probs}, cost={"l": cost}, size={"l": (1, 3)}, image_size=(1, 3))
    assert torch.allclose(result.same_class_mass_per_sample("l"), torch.tensor([0.875, 0.25]))
    assert result.same_class_mass("l") == pytest.approx(0.5625)
    assert torch.allclose(result.exemplar_share_per_sample(), torch.tensor([1.5 / 3, 1.7 / 3]))
    # A second layer where all exemplar mass hits the class: layer=None averages layers.
    hard = probs * cost
    result.probs["m"], result.cost["m"], result.size["m"] = hard, cost, (1, 3)
    assert result.same_class_mass("m") == pytest.approx(1.0)
    assert result.same_class_mass() == pytest.approx((0.5625 + 1.0) / 2)
    assert torch.allclose(result.attention_map("l", 0, (0, 0)), torch.tensor([[0.75, 0.25, 0.0]]))
    assert result.cost_map("l", 0, (0, 2)).tolist() == [[False, False, False]]


def test_hard_mask_keeps_all_exemplar_mass_on_the_class_and_augmented_does_not(tiny_model, tiny_backbone):
    batch = _batch()
    hard = probe_attention(tiny_model, tiny_backbone, batch, "hard_mask")
    augmented = probe_attention(tiny_model, tiny_backbone, batch, "augmented")
    assert hard.layers == augmented.layers and set(hard.layers) == set(tiny_model.self_attention_layers)
    for layer in hard.layers:
        assert hard.same_class_mass(layer) == pytest.approx(1.0, abs=1e-5)
        assert augmented.same_class_mass(layer) < 0.95
        assert hard.probs[layer].shape == (2, 64, 64) and not hard.probs[layer].requires_grad
    assert torch.allclose(hard.same_class_mass_per_sample(), torch.ones(2), atol=1e-5)
    assert 0 < augmented.exemplar_share() < 1
    # Seeded noise: a repeated probe is identical; the model is left in the mode it was in.
    again = probe_attention(tiny_model, tiny_backbone, batch, "augmented")
    assert all(torch.equal(again.probs[k], augmented.probs[k]) for k in augmented.layers)
    tiny_model.train()
    one = probe_attention(tiny_model, tiny_backbone, batch, "augmented", layers=[augmented.layers[0]])
    assert one.layers == [augmented.layers[0]] and tiny_model.training
    with pytest.raises(ValueError, match="needs an adapter"):
        probe_attention(tiny_model, tiny_backbone, batch, "adapter")
    with pytest.raises(ValueError, match="unknown self-attention layer"):
        probe_attention(tiny_model, tiny_backbone, batch, "augmented", layers=["nope.attn1"])


def test_adapter_mode_probes_through_the_adapter(tiny_model, tiny_backbone):
    from amlight.modules.adapter import AMAdapter

    batch = _batch()
    layer = tiny_model.self_attention_layers[0]
    adapter = AMAdapter(heads=2, channels=4, num_layers=2).train()
    augmented = probe_attention(tiny_model, tiny_backbone, batch, "augmented", layers=[layer])
    at_init = probe_attention(tiny_model, tiny_backbone, batch, "adapter", adapter=adapter, layers=[layer])
    # phi is zero at init: the adapter mode must show exactly the augmented attention.
    assert torch.allclose(at_init.probs[layer], augmented.probs[layer], atol=1e-6)
    assert adapter.training  # the probe's eval mode is undone
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.5)
    moved = probe_attention(tiny_model, tiny_backbone, batch, "adapter", adapter=adapter, layers=[layer])
    assert not torch.allclose(moved.probs[layer], augmented.probs[layer], atol=1e-4)


def test_default_layers_and_short_names():
    names = [
        "down_blocks.2.attentions.0.transformer_blocks.0.attn1",
        "down_blocks.1.attentions.1.transformer_blocks.0.attn1",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn1",
        "up_blocks.2.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.2.attentions.1.transformer_blocks.0.attn1",
        "mid_block.attentions.0.transformer_blocks.0.attn1",
    ]
    assert default_probe_layers(names) == [names[2], names[6], names[5]]
    assert default_probe_layers(names, groups=["up"]) == [names[5]]
    assert short_layer_name(names[2]) == "down1_a0_t0" and short_layer_name(names[6]) == "mid_a0_t0"


def test_heatmap_overlay_marks_the_hot_cell():
    image = -torch.ones(3, 16, 16)
    weights = torch.zeros(4, 4)
    weights[1, 2] = 5.0
    out = heatmap_overlay(image, weights)
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
    hot, cold = out[:, 4:8, 8:12].float().mean((1, 2)), out[:, 12:, :4].float().mean((1, 2))
    assert hot[0] > 150 and hot[1] > 150 and hot[2] < 100  # the yellow end of the ramp
    assert (cold < 60).all()  # cold cells: mostly the (black) image
    marked = heatmap_overlay(image, weights, point=(12, 2))
    assert tuple(marked[:, 12, 2].tolist()) == (255, 255, 255) and not torch.equal(marked, out)


# --------------------------------------------------------------------------- the callback
class _Samples(torch.utils.data.Dataset):
    def __init__(self, n=4):
        batch = _batch(n)
        self.items = [{k: v[i] for k, v in batch.items()} for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _stage():
    from amlight.stages import GenerationStage

    torch.manual_seed(0)
    return GenerationStage(num_classes=5, backbone_options=TINY, guidance_channels=16, exemplar_dropout=0.0)


def _fit(tmp_path, callbacks, **trainer_kw):
    loader = DataLoader(_Samples(), batch_size=2)
    trainer = L.Trainer(
        max_steps=2, limit_val_batches=1, logger=TensorBoardLogger(tmp_path), callbacks=callbacks,
        accelerator="cpu", devices=1, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=1, **trainer_kw,
    )
    stage = _stage()
    trainer.fit(stage, train_dataloaders=loader, val_dataloaders=DataLoader(_Samples(), batch_size=2))
    return trainer, stage


class _ModeSpy(L.Callback):
    """Placed around AttentionMaps: 'before' freezes a submodule in eval and snapshots every module's
    flag; 'after' records whether the callback in between left them as they were."""

    def __init__(self, role, shared):
        self.role, self.shared = role, shared

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.role == "before":
            pl_module.model.unet.conv_in.eval()
            self.shared["flags"] = {n: m.training for n, m in pl_module.named_modules()}
        else:
            now = {n: m.training for n, m in pl_module.named_modules()}
            self.shared.setdefault("restored", []).append(now == self.shared["flags"])
            self.shared.setdefault("training", []).append(pl_module.training)


def test_callback_logs_panels_and_scalars_and_restores_modes(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    shared = {}
    maps = AttentionMaps(every_n_steps=1, num_samples=2, max_points=3, upscale=1)
    trainer, stage = _fit(tmp_path, [_ModeSpy("before", shared), maps, _ModeSpy("after", shared)],
                          val_check_interval=2, num_sanity_val_steps=1)
    assert shared["restored"] == [True, True] and shared["training"] == [True, True]

    from amlight.apps.attention_panel import panel_tag, tag_layer_name

    layers = default_probe_layers(stage.model.self_attention_layers)
    sizes = maps._sizes
    assert set(sizes) == set(layers)
    pngs = sorted(p.name for p in (tmp_path / "lightning_logs" / "version_0" / "attention").glob("*.png"))
    expected = {f"step_{s:06d}_{tag_layer_name(layer)}_{sizes[layer][0]}x{sizes[layer][1]}_t500_s{i}.png"
                for s in (1, 2) for layer in layers for i in (0, 1)}
    assert set(pngs) == expected
    assert maps.last_paths and all(p.exists() for p in maps.last_paths)

    events = EventAccumulator(trainer.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    images = set(events.Tags()["images"])
    # Tags say what they show: layer, its token grid and the timestep (no bare 'up1_a1_t0').
    tags = {panel_tag(layer, sizes[layer], 500, i) for layer in layers for i in (0, 1)}
    assert tags <= images
    assert all(re.fullmatch(r"attention/(down|mid|up)\w*_\d+x\d+_t500/sample\d", t) for t in tags)
    scalars = set(events.Tags()["scalars"])
    for mode in ("augmented", "hard_mask"):
        assert {f"attention/same_class_mass/{mode}", f"attention/exemplar_share/{mode}"} <= scalars
    hard = events.Scalars("attention/same_class_mass/hard_mask")
    assert all(e.value == pytest.approx(1.0, abs=1e-5) for e in hard)
    # The panel (the notebook's rendering): 3 query points (rows) x [labels | augmented | hard_mask | cost]
    # columns under headers and a title line, so taller than the bare 2 + 3 * 18 px grid and with text.
    image = events.Images(panel_tag(layers[0], sizes[layers[0]], 500, 0))[-1]
    assert image.height > 2 + 3 * 18 and image.width >= 2 + 4 * 18
    png = maps.last_paths[0]
    from PIL import Image
    from amlight.apps.attention_panel import attention_panel  # noqa: F401  (the one renderer)
    pixels = np.asarray(Image.open(png).convert("L"))
    assert (pixels[:16] < 100).any(), "no header / title text above the panel"


def test_no_training_work_when_every_n_steps_is_zero(tmp_path, monkeypatch):
    calls = []
    real = attention_maps_module.probe_attention

    def counting(*args, **kwargs):
        calls.append(kwargs.get("timestep"))
        return real(*args, **kwargs)

    monkeypatch.setattr(attention_maps_module, "probe_attention", counting)
    seen_in_training = []

    class Count(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen_in_training.append(len(calls))

    maps = AttentionMaps(every_n_steps=0, layers=[_stage().model.self_attention_layers[0]], save_png=False)
    _fit(tmp_path, [maps, Count()], val_check_interval=2, num_sanity_val_steps=0)
    assert seen_in_training == [0, 0]
    assert len(calls) == 2  # one validation: augmented and hard_mask
    assert maps.last_paths == [] and set(maps.last_scalars) == {
        f"attention/{k}/{m}" for k in ("same_class_mass", "exemplar_share") for m in ("augmented", "hard_mask")
    }


def test_module_without_probe_parts_warns_once_and_does_nothing():
    maps = AttentionMaps()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps.run(None, torch.nn.Linear(1, 1), _batch())
        maps.run(None, torch.nn.Linear(1, 1), _batch())
    assert len([w for w in caught if "probe_parts" in str(w.message)]) == 1
    assert maps.last_paths == []
