"""Datasets (one registry entry each, standard on-disk formats loaded strictly into memory) and batched augmentation.

``info.py`` holds the facts of a dataset (:class:`DatasetInfo`), which the registry and the
parsers both read; ``datasets.py`` the registry (:data:`DATASETS`) and loading by name; ``formats/``
the file parsers, one module per format; ``tensordata.py`` the in-memory container and batching;
``synthetic.py`` the generated toy dataset; ``transforms.py`` augmentation.
"""

from .datasets import DATASETS, dataset_info, default_data_dir, load_dataset
from .errors import DataError
from .formats import FORMATS, FileFormat
from .info import DatasetFiles, DatasetInfo
from .synthetic import synthetic_data
from .tensordata import TensorData, iterate_batches, split_train_val
from .transforms import augment, random_crop, random_hflip

__all__ = [
    "DATASETS",
    "FORMATS",
    "DataError",
    "DatasetFiles",
    "DatasetInfo",
    "FileFormat",
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
