"""Can this torch build run on this machine's NVIDIA driver? The versions, and a one-line answer.

A torch wheel carries its own CUDA runtime (``torch.version.cuda``); the driver supports runtimes up
to its own CUDA version. When the driver is older, ``torch.cuda.is_available()`` is just False (with a
warning few people read) and every CUDA command fails later with an unrelated-looking message.
:func:`cuda_problem` turns that into one sentence naming the install that fixes it.

The driver's version comes from ``cuDriverGetVersion`` in libcuda (no pynvml, no CUDA context), or
failing that from torch's "driver ... too old (found version N)" warning.
"""
from __future__ import annotations

import ctypes
import re
import warnings
from dataclasses import dataclass

# CUDA versions of PyTorch's wheel indexes (https://download.pytorch.org/whl/cuXYZ), oldest first.
# Which of them carries a given torch release is on https://pytorch.org/get-started/locally/.
WHEEL_CUDA = ((11, 8), (12, 1), (12, 4), (12, 6), (12, 8), (12, 9), (13, 0))
INSTALL_HELP = "https://pytorch.org/get-started/locally/"


@dataclass(frozen=True)
class CudaVersions:
    torch: str
    runtime: tuple[int, int] | None  # None: a CPU-only build of torch
    driver: tuple[int, int] | None  # the newest CUDA the driver runs; None: no NVIDIA driver found
    available: bool  # torch.cuda.is_available()

    def line(self) -> str:
        return (f"torch {self.torch}, CUDA runtime {_dotted(self.runtime) or 'none (CPU-only build)'}, "
                f"driver supports CUDA {_dotted(self.driver) or 'unknown (no NVIDIA driver found)'}, "
                f"torch.cuda.is_available() {self.available}")


def _dotted(version: tuple[int, int] | None) -> str | None:
    return None if version is None else f"{version[0]}.{version[1]}"


def parse_runtime(text: str | None) -> tuple[int, int] | None:
    """``torch.version.cuda`` ("12.4") -> (12, 4)."""
    if not text:
        return None
    major, minor = (text.split(".") + ["0"])[:2]
    return int(major), int(minor)


def parse_driver(number: int | None) -> tuple[int, int] | None:
    """The driver API's integer (12040) -> (12, 4)."""
    if not number:
        return None
    return number // 1000, (number % 1000) // 10


def _libcuda_driver_version() -> int | None:
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll", "libcuda.dylib"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value > 0:
            return version.value
    return None


def detect() -> CudaVersions:
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    driver = _libcuda_driver_version()
    if driver is None:
        # torch: "The NVIDIA driver on your system is too old (found version 11040)."
        found = [re.search(r"found version (\d+)", str(w.message)) for w in caught]
        driver = next((int(m.group(1)) for m in found if m), None)
    return CudaVersions(torch.__version__, parse_runtime(torch.version.cuda), parse_driver(driver), available)


def _wheel_for(driver: tuple[int, int] | None) -> str:
    """The install line of the newest wheel index whose CUDA the driver runs."""
    fitting = [v for v in WHEEL_CUDA if driver is None or v <= driver]
    if not fitting:
        return f"no current torch build runs on it: update the NVIDIA driver (see {INSTALL_HELP})"
    major, minor = fitting[-1]
    return (f"install a torch build for CUDA {major}.{minor} or older: pip install torch torchvision "
            f"--index-url https://download.pytorch.org/whl/cu{major}{minor} (builds per torch release: "
            f"{INSTALL_HELP})")


def cuda_problem(v: CudaVersions) -> str | None:
    """One line when this torch cannot use the GPU because of how it was built; None otherwise
    (CUDA available, or no driver at all, which the caller reports as "no CUDA device")."""
    if v.available or v.driver is None:
        return None
    if v.runtime is None:
        return (f"torch {v.torch} is a CPU-only build, but this machine has an NVIDIA driver (CUDA "
                f"{_dotted(v.driver)}): {_wheel_for(v.driver)}")
    # Within one major version a newer runtime can still run on an older driver (CUDA's minor version
    # compatibility), so a minor mismatch is the cause only because torch.cuda is unavailable here.
    if v.runtime > v.driver:
        fix = _wheel_for(v.driver)
        if not fix.startswith("no current"):
            fix += ", or update the NVIDIA driver"
        return (f"torch {v.torch} is built for CUDA {_dotted(v.runtime)}, but the NVIDIA driver supports "
                f"CUDA up to {_dotted(v.driver)}: {fix}")
    return None
