"""Datasets for MARS: the embedded digits VQA demo and converters for real formats.

Every dataset is prepared once into Parquet shards with a manifest and a
content fingerprint (``prepare_dataset``), then opened split by split with
images decoded lazily (``load_split``).
"""

from mars_core.data.digits import DEMO_VOCABULARY, pretraining_captions
from mars_core.data.prepare import prepare_dataset
from mars_core.data.schema import DatasetError, DatasetInfo, VqaExample
from mars_core.data.storage import VqaSplit, load_dataset_info, load_split, validate_dataset

__all__ = [
    "DEMO_VOCABULARY",
    "DatasetError",
    "DatasetInfo",
    "VqaExample",
    "VqaSplit",
    "load_dataset_info",
    "load_split",
    "prepare_dataset",
    "pretraining_captions",
    "validate_dataset",
]
