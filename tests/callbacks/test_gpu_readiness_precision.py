"""Issue 17, item 6: the image callbacks run in the trainer's precision (autocast under bf16-mixed),
not in fp32 outside it, and what they make under autocast is still a valid image."""
import lightning as L
import pytest
import torch

import amlight.callbacks.attention_maps as attention_maps
from amlight.callbacks import AttentionMaps, SampleGrid
from amlight.stages import GenerationStage

from helpers.tiny_models import TINY_OPTIONS, make_batch


def _trainer(precision: str) -> L.Trainer:
    return L.Trainer(accelerator="cpu", precision=precision, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)


def _autocast() -> tuple[bool, torch.dtype | None]:
    on = torch.is_autocast_enabled("cpu")
    return on, torch.get_autocast_dtype("cpu") if on else None


@pytest.fixture(scope="module")
def stage():
    return GenerationStage(num_classes=5, backbone_options=TINY_OPTIONS, guidance_channels=16, sample_steps=2).eval()


@pytest.mark.parametrize("precision, expected", [("bf16-mixed", (True, torch.bfloat16)), ("32-true", (False, None))])
def test_sample_grid_generates_in_the_trainers_precision(stage, monkeypatch, precision, expected):
    seen = []
    generate = stage.generate

    def recording(batch, **kw):
        seen.append(_autocast())
        return generate(batch, **kw)

    monkeypatch.setattr(stage, "generate", recording)
    batch = make_batch()
    grid = SampleGrid(num_samples=2, upscale=1).render(_trainer(precision), stage, batch)
    assert seen == [expected]
    assert grid.dtype == torch.uint8 and grid.shape[0] == 3


@pytest.mark.parametrize("precision, expected", [("bf16-mixed", (True, torch.bfloat16)), ("32-true", (False, None))])
def test_attention_maps_probe_in_the_trainers_precision(stage, monkeypatch, precision, expected):
    seen = []
    probe = attention_maps.probe_attention

    def recording(*args, **kw):
        seen.append(_autocast())
        return probe(*args, **kw)

    monkeypatch.setattr(attention_maps, "probe_attention", recording)
    callback = AttentionMaps(save_png=False, num_samples=2)
    callback.run(_trainer(precision), stage, callback._take(make_batch()))
    assert seen and all(s == expected for s in seen)
    assert callback.last_scalars and all(v == v for v in callback.last_scalars.values())  # logged, not NaN
