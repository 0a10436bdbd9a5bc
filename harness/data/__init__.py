"""Datasets and batch loaders: CIFAR-10 (torchvision's files or ``.npz``) and image folders.

One entry point, :func:`build_data`, returns a :class:`DataBundle` whose two loaders yield
``(images float32 [B, 3, H, W], labels int64 [B])`` and have ``set_epoch(epoch)``.

Accepted layouts of a data root (``fmt="auto"`` picks the first that matches, in this order):

- ``torchvision``: ``<root>/cifar-10-batches-py/`` (CIFAR-10's python batches, read by
  ``torchvision.datasets.CIFAR10``);
- ``npz``: ``<root>/train.npz`` and ``<root>/test.npz``, each with ``images`` uint8
  ``[N, H, W, 3]``, ``labels`` integer ``[N]`` and optionally ``classes`` (names);
- ``imagefolder``: ``<root>/train/<class>/*.jpg|png`` and ``<root>/val/<class>/*`` (or ``test/``).

In-memory data (the first two) are fed by :class:`ArrayLoader`, which shuffles and augments whole
batches on tensors. Its randomness comes from one generator seeded by ``(seed, epoch)``, so an
epoch's batches depend on nothing else and a run resumed at an epoch boundary sees the same ones.
Image folders go through a torch ``DataLoader`` (:class:`FolderLoader`) with the same guarantee:
the shuffle generator and every item's transform are seeded from ``(seed, epoch[, index])``.

The package's modules: :mod:`harness.data.readers` (layouts, format detection, data-root checks,
the npz / torchvision / image-folder readers, :class:`ArrayDataset`) and
:mod:`harness.data.loaders` (:class:`ArrayLoader`, :class:`FolderLoader`, seeds, balanced
subsets, augmentation, normalization). This module holds :func:`build_data`, :class:`DataBundle`
and re-exports the public names of both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Subset

from harness.data.loaders import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATIONS,
    ArrayLoader,
    BatchLoader,
    FolderLoader,
    _folder_transforms,
    balanced_subset,
    derive_seed,
    normalize,
    random_crop_flip,
)
from harness.data.readers import (
    CIFAR10_CLASSES,
    CIFAR10_FOLDER,
    DATA_ROOT_ENV,
    DATASETS,
    FORMATS,
    LAYOUTS,
    ArrayDataset,
    _check_root,
    _load_folders,
    _matches,
    _native_size,
    detect_format,
    load_npz,
    load_torchvision_cifar10,
    resolve_data_root,
)
from harness.errors import ConfigError, DataError

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_FOLDER",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "DATA_ROOT_ENV",
    "FORMATS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LAYOUTS",
    "NORMALIZATIONS",
    "ArrayDataset",
    "ArrayLoader",
    "BatchLoader",
    "DataBundle",
    "FolderLoader",
    "balanced_subset",
    "build_data",
    "derive_seed",
    "detect_format",
    "load_npz",
    "load_torchvision_cifar10",
    "normalize",
    "random_crop_flip",
    "resolve_data_root",
]


@dataclass(frozen=True)
class DataBundle:
    """The loaders of one run and what a model needs to know about the data."""

    train_loader: BatchLoader
    test_loader: BatchLoader
    num_classes: int
    image_size: tuple[int, int]
    num_train: int
    num_test: int
    format: str
    classes: tuple[str, ...] = ()


# ------------------------------------------------------------------------------- entry point


def _check_choice(field: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{field}={value!r} is not allowed: choose one of {', '.join(allowed)}")


def _check_int(field: str, value: object, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or None" if optional else ""
        raise ConfigError(f"{field}={value!r} is not allowed: need an integer >= {minimum}{extra}")


def _check_arguments(args: dict[str, Any]) -> None:
    _check_choice("dataset", args["dataset"], DATASETS)
    _check_choice("fmt", args["fmt"], FORMATS)
    _check_choice("normalization", args["normalization"], NORMALIZATIONS)
    for field in ("batch_size", "eval_batch_size", "train_subset", "test_subset"):
        _check_int(field, args[field], 1, optional=field != "batch_size")
    for field in ("seed", "subset_seed", "num_workers", "crop_padding"):
        _check_int(field, args[field], 0)
    for field in ("augment", "download", "channels_last", "verify_checksums"):
        if not isinstance(args[field], bool):
            raise ConfigError(f"{field}={args[field]!r} is not allowed: need True or False")
    if args["dataset"] == "imagenet" and args["fmt"] == "torchvision":
        raise ConfigError(
            "fmt='torchvision' reads CIFAR-10's python batches only: for "
            "dataset='imagenet' use fmt 'imagefolder', 'npz' or 'auto'"
        )


def _subset(dataset: Any, labels: Any, n: int | None, seed: int, field: str) -> Any:
    if n is None:
        return dataset
    indices = balanced_subset(labels, n, seed=seed, field=field)
    if isinstance(dataset, ArrayDataset):
        return dataset.subset(indices)
    return Subset(dataset, indices.tolist())


def _resolve_format(root: Path, dataset: str, fmt: str, download: bool) -> str:
    downloadable = download and dataset == "cifar10" and fmt in ("auto", "torchvision")
    if downloadable:
        root.mkdir(parents=True, exist_ok=True)  # torchvision downloads into it
    _check_root(root)
    if fmt == "auto":
        nothing_yet = not any(_matches(root, layout) for layout in LAYOUTS)
        fmt = "torchvision" if downloadable and nothing_yet else detect_format(root)
    if dataset == "imagenet" and fmt == "torchvision":
        raise DataError(f"{root} holds CIFAR-10's python batches but dataset='imagenet'")
    return fmt


@dataclass(frozen=True)
class _Splits:
    train: Any
    test: Any
    classes: tuple[str, ...]
    image_size: tuple[int, int]


def _load_splits(root: Path, dataset: str, fmt: str, args: dict[str, Any]) -> _Splits:
    """Both splits, subsetted; ``ArrayDataset`` for in-memory formats, torch datasets otherwise."""
    if fmt == "imagefolder":
        train, test, classes = _load_folders(root)
        train_labels, test_labels = train.targets, test.targets
    else:
        if fmt == "npz":
            train, test = load_npz(root)
        else:
            train, test = load_torchvision_cifar10(
                root, download=args["download"], verify_checksums=args["verify_checksums"]
            )
        train_labels, test_labels, classes = train.labels, test.labels, train.classes
        if dataset == "cifar10" and classes == tuple(str(i) for i in range(10)):
            classes = CIFAR10_CLASSES  # an npz without names, in CIFAR-10's label order
            train, test = (ArrayDataset(s.images, s.labels, classes) for s in (train, test))
    train = _subset(train, train_labels, args["train_subset"], args["subset_seed"], "train_subset")
    test = _subset(test, test_labels, args["test_subset"], args["subset_seed"], "test_subset")
    if isinstance(train, ArrayDataset):
        size = train.image_size
    else:
        size = (224, 224) if dataset == "imagenet" else _native_size(train)
    return _Splits(train, test, classes, size)


def build_data(
    dataset: str,
    data_root: str | os.PathLike[str],
    *,
    fmt: str = "auto",
    train_subset: int | None = None,
    test_subset: int | None = None,
    subset_seed: int = 0,
    batch_size: int = 128,
    eval_batch_size: int | None = None,
    seed: int = 0,
    augment: bool = True,
    normalization: str = "per_channel",
    download: bool = False,
    num_workers: int = 0,
    channels_last: bool = False,
    verify_checksums: bool = True,
    crop_padding: int = 4,
) -> DataBundle:
    """Load ``dataset`` ("cifar10" or "imagenet") from ``data_root`` and build its two loaders.

    ``fmt`` is the root's layout ("auto" detects it). Subsets are class balanced and chosen by
    ``subset_seed`` alone, so every training ``seed`` sees the same images. The train loader
    shuffles, augments (if ``augment``) and drops the last partial batch; the test loader keeps
    dataset order and every item. ``crop_padding`` is the pad of the CIFAR random crop (the SACT
    code padded by 2; 4 is the usual choice). ``num_workers`` applies to image folders only
    (in-memory batches are assembled in the main process). ``verify_checksums=False`` accepts
    CIFAR-10 batches that are not the official files. ``download`` fetches missing CIFAR-10
    batches through torchvision (network needed).
    """
    args = dict(locals())  # every argument, by name, for validation and the helpers
    _check_arguments(args)
    root = Path(data_root).expanduser().resolve()
    found = _resolve_format(root, dataset, fmt, download)
    splits = _load_splits(root, dataset, found, args)
    if len(splits.train) < batch_size:
        raise ConfigError(
            f"batch_size={batch_size} exceeds the {len(splits.train)} training images and the "
            "last partial batch is dropped, so an epoch would be empty: lower batch_size or "
            "enlarge train_subset"
        )
    mean, std = (
        (IMAGENET_MEAN, IMAGENET_STD) if dataset == "imagenet" else (CIFAR10_MEAN, CIFAR10_STD)
    )
    common: dict[str, Any] = dict(
        normalization=normalization, mean=mean, std=std, seed=seed, channels_last=channels_last
    )
    eval_batch_size = eval_batch_size or batch_size
    train_loader: BatchLoader
    test_loader: BatchLoader
    if found == "imagefolder":
        train_tf, eval_tf = _folder_transforms(dataset, splits.image_size, augment, crop_padding)
        workers = dict(num_workers=num_workers, **common)
        train_loader = FolderLoader(
            splits.train, train_tf, batch_size, shuffle=True, drop_last=True, **workers
        )
        test_loader = FolderLoader(
            splits.test, eval_tf, eval_batch_size, shuffle=False, drop_last=False, **workers
        )
    else:
        train_loader = ArrayLoader(
            splits.train,
            batch_size,
            shuffle=True,
            drop_last=True,
            augment=augment,
            crop_padding=crop_padding,
            **common,
        )
        test_loader = ArrayLoader(
            splits.test, eval_batch_size, shuffle=False, drop_last=False, augment=False, **common
        )
    return DataBundle(
        train_loader=train_loader,
        test_loader=test_loader,
        num_classes=len(splits.classes),
        image_size=splits.image_size,
        num_train=len(splits.train),
        num_test=len(splits.test),
        format=found,
        classes=splits.classes,
    )
