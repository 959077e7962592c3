"""Datasets (standard on-disk formats, loaded strictly into memory) and batched augmentation."""

from .datasets import (
    DATASETS,
    DatasetInfo,
    TensorData,
    dataset_info,
    default_data_dir,
    iterate_batches,
    load_dataset,
    split_train_val,
    synthetic_data,
)
from .errors import DataError
from .transforms import augment, random_crop, random_hflip

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "TensorData",
    "augment",
    "dataset_info",
    "default_data_dir",
    "iterate_batches",
    "load_dataset",
    "random_crop",
    "random_hflip",
    "split_train_val",
    "synthetic_data",
]
