"""FID between the set of outputs and a set of real images (torchmetrics' FrechetInceptionDistance).

With the standard network, features are Inception-v3 pool3 (2048-d) of torch-fidelity's port of
the TensorFlow FID Inception, the weights read from a file the user gives
(``weights-inception-2015-12-05-6726825d.pth``, the file torch-fidelity would otherwise download):
``pip install torch-fidelity`` is then needed. Any ``nn.Module`` mapping images to (N, d) features can
stand in for it (tests use a tiny random one); those numbers are only comparable with each other.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from amlight.metrics.images import check_images
from amlight.metrics.pretrained import MetricWeightsError, MissingDependencyError, resolve_device

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
_EXPECTED = (f"the FID Inception-v3 weights file of torch-fidelity ({INCEPTION_WEIGHTS_FILE}, a PyTorch state "
             "dict), downloaded once by hand and passed by path; nothing is downloaded for you")


class FIDMetric:
    """Fréchet distance between Gaussians fitted to the features of real and of generated images.

    Give either ``feature_extractor`` (an ``nn.Module``: float (N, 3, H, W) images in [0, 1] at their
    own size -> (N, d) features; its ``num_features`` attribute, if any, gives d, else it is run once
    on a random image of ``input_size``), or ``weights_path`` to the standard Inception weights
    (needs torch-fidelity; images are resized to 299x299 by torchmetrics, as for published FIDs).
    :meth:`update` takes float (N, 3, H, W) in [-1, 1]; :meth:`compute` needs at least two images per side.
    """

    def __init__(self, feature_extractor: nn.Module | None = None, weights_path: str | Path | None = None, *,
                 input_size: tuple[int, int, int] = (3, 299, 299), device: str | torch.device | None = None,
                 reset_real_features: bool = True):
        from torchmetrics.image.fid import FrechetInceptionDistance

        if feature_extractor is not None and weights_path is not None:
            raise ValueError("give either feature_extractor or weights_path, not both")
        self.device = resolve_device(device)
        if feature_extractor is not None:
            wrapped = _Features(feature_extractor.eval().to(self.device), tuple(input_size), self.device)
            self.metric = FrechetInceptionDistance(feature=wrapped, normalize=True,
                                                   reset_real_features=reset_real_features)
            self.standard = False
        else:
            path = _check_inception_file(weights_path)
            if not torch_fidelity_available():
                raise MissingDependencyError(
                    "FID with the standard Inception network needs torch-fidelity: `pip install torch-fidelity`, "
                    f"then pass the weights file ({INCEPTION_WEIGHTS_FILE}) with weights_path / --inception")
            try:
                self.metric = FrechetInceptionDistance(feature=2048, normalize=True,
                                                       feature_extractor_weights_path=str(path),
                                                       reset_real_features=reset_real_features)
            except Exception as exc:  # torch.load of an arbitrary file fails in many ways (pickle, zip, keys)
                first_line = str(exc).splitlines()[0] if str(exc) else ""
                raise MetricWeightsError(path, f"could not be loaded as the FID Inception network "
                                               f"({type(exc).__name__}: {first_line})", _EXPECTED) from exc
            self.standard = True
        self.metric = self.metric.to(self.device)

    @torch.no_grad()
    def update(self, images: torch.Tensor, real: bool) -> None:
        """Add float (N, 3, H, W) images in [-1, 1] to the real (``real=True``) or the generated set."""
        images = check_images(images)
        unit = (images.to(self.device, torch.float32).clamp(-1, 1) + 1) / 2
        self.metric.update(unit, real=real)

    def compute(self) -> float:
        """The FID of everything added since the last :meth:`reset` (lower is better)."""
        real = int(self.metric.real_features_num_samples)
        fake = int(self.metric.fake_features_num_samples)
        if real < 2 or fake < 2:
            raise ValueError(f"FID needs at least 2 real and 2 generated images, got {real} real and {fake} generated")
        return float(self.metric.compute())

    def reset(self) -> None:
        self.metric.reset()


class _Features(nn.Module):
    """A user's feature network with the ``num_features`` torchmetrics asks for, found by one dummy
    forward on the network's own device (torchmetrics would make its dummy on the CPU)."""

    def __init__(self, net: nn.Module, input_size: tuple[int, int, int], device: torch.device):
        super().__init__()
        self.net = net
        declared = getattr(net, "num_features", None)
        if isinstance(declared, (int, torch.Tensor)):
            self.num_features = int(declared)
        else:
            with torch.no_grad():
                out = net(torch.rand(1, *input_size, device=device))
            if out.ndim != 2:
                raise ValueError(f"the FID feature extractor must return (N, d) features, got shape {tuple(out.shape)}")
            self.num_features = int(out.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def fid_score(pred: torch.Tensor, real: torch.Tensor, feature_extractor: nn.Module | None = None,
              weights_path: str | Path | None = None, batch_size: int = 32, **kwargs) -> float:
    """FID of the generated set ``pred`` against the real set ``real`` (both float (N, 3, H, W) in [-1, 1])."""
    metric = FIDMetric(feature_extractor, weights_path, **kwargs)
    for images, is_real in ((real, True), (pred, False)):
        for start in range(0, len(images), batch_size):
            metric.update(images[start:start + batch_size], real=is_real)
    return metric.compute()


def torch_fidelity_available() -> bool:
    return importlib.util.find_spec("torch_fidelity") is not None


def _check_inception_file(weights_path) -> Path:
    if weights_path is None or str(weights_path) == "":
        raise MetricWeightsError(None, "FID needs a feature network: no Inception weights path "
                                       "(weights_path / --inception) and no feature_extractor given", _EXPECTED)
    path = Path(weights_path).expanduser()
    if not path.exists():
        raise MetricWeightsError(path, "does not exist (needed for FID)", _EXPECTED)
    if not path.is_file():
        raise MetricWeightsError(path, "is a folder, not the Inception weights file (needed for FID)", _EXPECTED)
    return path
