"""Datasets and deterministic nested de-duplicated subsets."""

from memorize.data.datasets import Dataset, DatasetError, GaussianMixture, load_dataset
from memorize.data.subsets import Split, load_split, make_split, save_split, unique_indices

__all__ = ["Dataset", "DatasetError", "GaussianMixture", "Split", "load_dataset", "load_split", "make_split",
           "save_split", "unique_indices"]
