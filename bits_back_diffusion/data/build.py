"""Turn a ``config/data/*.yaml`` entry into a dataset for one split."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .base import ImageSet
from .digits import open_digits
from .errors import DataError
from .folder import FolderImageSet
from .imagenet import open_imagenet
from .scan import check_image_files
from .tiles import open_folder

SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val"}
DATASET_NAMES = ("cifar", "imagenet", "digits", "folder")


def _get(cfg: Any, key: str, where: str, default: Any = None) -> Any:
    """Read ``key`` from a dict or DictConfig, turning resolution failures into DataErrors."""
    try:
        if hasattr(cfg, "get"):
            value = cfg.get(key, default)
        else:
            value = getattr(cfg, key, default)
    except Exception as e:  # e.g. an unresolvable ${model.image_size} interpolation
        raise DataError(f"config value {where}{key} could not be read: {e}") from e
    return default if value is None else value


def _cifar_hint(data_dir: Path) -> str:
    parent = data_dir.parent if str(data_dir.parent) else Path(".")
    return f"Create it with: python datasets/cifar10.py --out_dir {parent}"


def _folder_hint(split: str) -> str:
    return (
        f"Point data.{split}.data_dir at a folder of PNG images (e.g. on the command line: "
        f"data={'folder'} data.{split}.data_dir=/path/to/images)."
    )


def build_dataset(data_cfg: Mapping[str, Any], split: str) -> ImageSet:
    """Open the ``split`` ("train" or "val") of the dataset described by ``data_cfg``.

    ``data_cfg`` is the run config's ``data`` node (a config with a top-level
    ``data`` key is accepted too); relative data dirs are taken from the
    current working directory.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected 'train' or 'val'")
    split = SPLITS[split]
    if _get(data_cfg, "name", "data.") is None and _get(data_cfg, "data", "") is not None:
        data_cfg = _get(data_cfg, "data", "")  # the whole run config was passed
    name = str(_get(data_cfg, "name", "data.") or "")
    if name not in DATASET_NAMES:
        raise DataError(f"unknown dataset name data.name={name!r}; expected one of {', '.join(DATASET_NAMES)}")
    image_size = int(_get(data_cfg, "image_size", "data.", 8 if name == "digits" else None) or 0)
    channels = int(_get(data_cfg, "channels", "data.", 1 if name == "digits" else 3))
    num_levels = int(_get(data_cfg, "num_levels", "data.", 17 if name == "digits" else 256))
    resize = bool(_get(data_cfg, "resize", "data.", False))
    if image_size <= 0:
        raise DataError(f"data.image_size must be a positive integer for dataset {name!r}")

    if name == "digits":
        return open_digits(split, image_size=image_size, channels=channels, num_levels=num_levels)

    split_cfg = _get(data_cfg, split, "data.")
    data_dir = _get(split_cfg, "data_dir", f"data.{split}.") if split_cfg is not None else None
    if data_dir is None or str(data_dir) in ("", "???"):
        hint = {
            "cifar": _cifar_hint(Path("datasets/cifar10/x")),
            "imagenet": "Run `python datasets/imagenet64.py info` for how to obtain ImageNet 64x64.",
            "folder": _folder_hint(split),
        }[name]
        raise DataError(f"data.{split}.data_dir is not set for dataset {name!r}.\n{hint}")
    data_dir = Path(str(data_dir)).expanduser()
    common = dict(name=name, image_size=image_size, channels=channels, num_levels=num_levels)

    if name == "imagenet":
        dataset = open_imagenet(data_dir, split=split, resize=resize, **common)
    else:
        hint = _cifar_hint(data_dir) if name == "cifar" else _folder_hint(split)
        if name == "folder" and not resize:  # pictures of other sizes are cut into tiles; scans every file
            return open_folder(data_dir, missing_hint=hint, **common)
        dataset = FolderImageSet(data_dir, resize=resize, missing_hint=hint, **common)
    if isinstance(dataset, FolderImageSet) and (name == "folder" or not resize):
        # pictures read as they are must come back exactly: check every file before anything is coded
        check_image_files(dataset.files, channels=channels, num_levels=num_levels, root=str(data_dir),
                          image_size=None if resize else image_size)
    return dataset
