"""Datasets as integer levels, and the batch iterators used for training and evaluation.

Typical use::

    ds = build_dataset(cfg.data, "val")
    for batch in eval_batches(ds, cfg.data.val.batch_size, num_samples, rank, world_size):
        x = to_model_input(batch.x, ds.num_levels)
"""

from .base import ArrayImageSet, ImageSet
from .batches import BatchFileImageSet, find_batch_files, read_batch_labels
from .build import build_dataset
from .digits import open_digits
from .errors import DataError, ImageFileError
from .folder import FolderImageSet, list_image_files
from .images import downsample_square, exact_pixels, read_image
from .imagenet import open_imagenet
from .levels import from_model_input, to_model_input
from .loaders import EvalBatch, eval_batches, eval_indices, num_eval_batches, train_batches
from .scan import check_image_files
from .tiles import TiledImageSet, TilingInfo, open_folder, reassemble  # noqa: F401  (pictures larger than the model)

__all__ = [
    "ArrayImageSet",
    "BatchFileImageSet",
    "DataError",
    "ImageFileError",
    "EvalBatch",
    "FolderImageSet",
    "ImageSet",
    "build_dataset",
    "check_image_files",
    "downsample_square",
    "eval_batches",
    "eval_indices",
    "exact_pixels",
    "find_batch_files",
    "from_model_input",
    "list_image_files",
    "num_eval_batches",
    "open_digits",
    "open_imagenet",
    "read_batch_labels",
    "read_image",
    "to_model_input",
    "train_batches",
]
