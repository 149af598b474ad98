import os
import sys

import pytest
import torch

from helpers.tiny_models import save_stage1_checkpoint, save_tiny_sd15

# Two cores on the reference machine: keep torch from oversubscribing them in tests.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _argv_without_pytest_flags(monkeypatch):
    """Commands under test get their argv explicitly; pytest's own flags in sys.argv would make
    LightningCLI warn that it was given both."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])


@pytest.fixture
def tiny_backbone():
    from amlight.backbone import get_backbone

    return get_backbone("tiny", options={"sample_size": 16, "block_out_channels": [16, 32], "attention_heads": 2})


@pytest.fixture
def tiny_model(tiny_backbone):
    """An ExemplarUNet on a 16x16 pixel-space UNet with 5 classes (random weights)."""
    from amlight.modules import ExemplarUNet, StructureGuidance

    torch.manual_seed(0)
    unet = tiny_backbone.new_unet()
    guidance = StructureGuidance(5, unet.config.block_out_channels[0], channels=16)
    return ExemplarUNet(unet, guidance).eval()



@pytest.fixture(scope="session")
def tiny_sd15_dir(tmp_path_factory):
    return save_tiny_sd15(tmp_path_factory.mktemp("tiny_sd15"))



@pytest.fixture(scope="session")
def stage1_ckpt(tmp_path_factory):
    return save_stage1_checkpoint(tmp_path_factory.mktemp("stage1") / "stage1.ckpt")



@pytest.fixture
def classes_yaml_error(tmp_path):
    """``error(text)``: write ``text`` as a folder dataset's classes.yaml and return the one error that
    ``load_classes_yaml`` raises for it, after checking that the message names the file."""
    from amlight.data.datasets.folder import load_classes_yaml
    from amlight.data.io import DataFileError

    def error(text: str) -> str:
        path = tmp_path / "classes.yaml"
        path.write_text(text)
        with pytest.raises(DataFileError) as info:
            load_classes_yaml(path)
        message = str(info.value)
        assert str(path) in message, message
        return message

    return error


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (restored after): tiny models gain nothing from a second one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
