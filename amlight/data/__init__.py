"""Datasets by name, label I/O, pairing strategies and the DataModule."""
from amlight.data.registry import (
    DatasetMetadata,
    build_dataset,
    get_dataset_entry,
    register_dataset,
    registered_datasets,
)

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
