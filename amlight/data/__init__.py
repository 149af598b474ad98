"""Datasets by name, label I/O, pairing strategies and the DataModule."""
from amlight.data.datamodule import ExemplarPairDataModule
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
