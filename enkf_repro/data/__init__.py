"""Datasets as tensors on the training device: IDX files, notMNIST image folders, the batch stream."""

from .batches import Batches  # noqa: F401
from .datasets import DATASETS, Data, dataset_sizes, load_data  # noqa: F401
