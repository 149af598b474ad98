"""Datasets by name, label I/O, pairing strategies and the DataModule."""
from amlight.data.registry import (
    DatasetMetadata,
    build_dataset,
    get_dataset_entry,
    register_dataset,
    registered_datasets,
)

# The built-in datasets register themselves on import. Importing them here, after the registry,
# means any `from amlight.data... import` sees them, and the registry never imports its datasets.
from amlight.data import datasets  # noqa: E402,F401

__all__ = [
    "DatasetMetadata",
    "ExemplarPairDataModule",
    "build_dataset",
    "get_dataset_entry",
    "register_dataset",
    "registered_datasets",
]


def __getattr__(name: str):
    # The DataModule pulls in Lightning (seconds of import); data-only commands should not pay for it.
    if name == "ExemplarPairDataModule":
        from amlight.data.datamodule import ExemplarPairDataModule

        return ExemplarPairDataModule
    raise AttributeError(f"module 'amlight.data' has no attribute {name!r}")
