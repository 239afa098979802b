"""The dataset pipeline: scanning, checking, bucketing and loading training images and captions.

``DatasetError`` and the torch-free helpers import without torch; the torch-backed names
(``TrainDataset``, ``build_train_dataset``, ``epoch_batches``, ``collate_batch``) load on first use,
so the UI process (which must never import torch) can ``from trainer.data import DatasetError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainer.data.buckets import BucketTable
from trainer.data.errors import DatasetError
from trainer.data.scan import ImageRecord

if TYPE_CHECKING:
    from trainer.data.dataset import TrainDataset, build_train_dataset, collate_batch, epoch_batches

_TORCH_NAMES = ("TrainDataset", "build_train_dataset", "collate_batch", "epoch_batches")

__all__ = [
    "BucketTable",
    "DatasetError",
    "ImageRecord",
    "TrainDataset",
    "build_train_dataset",
    "collate_batch",
    "epoch_batches",
]


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from trainer.data import dataset  # noqa: PLC0415 - deferred so importing DatasetError needs no torch

        return getattr(dataset, name)
    raise AttributeError(f"module 'trainer.data' has no attribute {name!r}")
