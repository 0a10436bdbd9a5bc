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

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from harness.config import DATA_FORMATS as FORMATS
from harness.config import DATASETS, NORMALIZATIONS, PREPROCESSINGS, DataConfig
from harness.data.fingerprint import (
    files_fingerprint,
    indices_digest,
    root_fingerprint,
    run_fingerprint,
)
from harness.data.loaders import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
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
    LAYOUTS,
    ArrayDataset,
    _check_root,
    _load_folders,
    _matches,
    _native_size,
    detect_format,
    folder_num_classes,
    load_npz,
    load_torchvision_cifar10,
    npz_num_classes,
    resolve_data_root,
)
from harness.errors import ConfigError, DataError, check_choice

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
    "count_classes",
    "data_root_fingerprint",
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
    val_loader: BatchLoader | None = None  # data.val_subset: held out of the training set
    num_val: int = 0
    #: What the data was (:mod:`harness.data.fingerprint`): files, class count, subset hashes;
    #: ``fingerprint["fingerprint"]`` is the short form a run records as ``data.fingerprint``.
    fingerprint: dict[str, Any] | None = None


# ------------------------------------------------------------------------------- entry point


def _check_int(field: str, value: object, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or None" if optional else ""
        raise ConfigError(f"{field}={value!r} is not allowed: need an integer >= {minimum}{extra}")


def _check_arguments(dataset: str, data: DataConfig, loader: dict[str, Any]) -> None:
    check_choice("dataset", dataset, DATASETS)
    check_choice("data.format", data.format, FORMATS)
    check_choice("data.normalization", data.normalization, NORMALIZATIONS)
    check_choice("data.preprocessing", data.preprocessing, PREPROCESSINGS)
    for field in ("train_subset", "test_subset", "val_subset"):
        _check_int(f"data.{field}", getattr(data, field), 1, optional=True)
    for field in ("subset_seed", "val_seed", "num_workers", "crop_padding"):
        _check_int(f"data.{field}", getattr(data, field), 0)
    for field in ("augment", "download", "verify_checksums"):
        if not isinstance(getattr(data, field), bool):
            raise ConfigError(f"data.{field}={getattr(data, field)!r}: need True or False")
    _check_int("batch_size", loader["batch_size"], 1)
    _check_int("eval_batch_size", loader["eval_batch_size"], 1, optional=True)
    _check_int("seed", loader["seed"], 0)
    if dataset == "imagenet" and data.format == "torchvision":
        raise ConfigError(
            "data.format='torchvision' reads CIFAR-10's python batches only: for "
            "dataset='imagenet' use format 'imagefolder', 'npz' or 'auto'"
        )


def _take(dataset: Any, indices: Any) -> Any:
    if isinstance(dataset, ArrayDataset):
        return dataset.subset(indices)
    return Subset(dataset, torch.as_tensor(indices).tolist())


def _subset(dataset: Any, labels: Any, n: int | None, seed: int, field: str) -> tuple[Any, Any]:
    """(the subset, its indices into ``dataset``; None: all of it)."""
    if n is None:
        return dataset, None
    indices = balanced_subset(labels, n, seed=seed, field=field)
    return _take(dataset, indices), indices


def _carve_validation(train: Any, labels: Any, data: DataConfig) -> tuple[Any, Any, Any, Any, Any]:
    """(train without the validation images, their labels, the validation split, the indices
    of the kept training images and of the validation images; None when nothing is carved)."""
    if data.val_subset is None:
        return train, labels, None, None, None
    labels = torch.as_tensor(labels, dtype=torch.int64)
    val_indices = balanced_subset(
        labels, data.val_subset, seed=data.val_seed, field="data.val_subset"
    )
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val_indices] = False
    rest = torch.nonzero(keep).flatten()
    if len(rest) == 0:
        raise ConfigError(f"data.val_subset={data.val_subset} leaves no training images")
    return _take(train, rest), labels[rest], _take(train, val_indices), rest, val_indices


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
    val: Any = None
    fingerprint: dict[str, Any] | None = None


def _check_labels(
    dataset: str, labels: tuple[Any, Any], num_classes: int, sources: tuple[str, str]
) -> None:
    """Before any subset is taken: CIFAR-10 labels lie in 0..9, the training split holds at
    least two classes, and every test label is one of the training split's classes. Errors
    name the file (or folder) and the offending label."""
    train, test = (torch.as_tensor(x, dtype=torch.int64) for x in labels)
    for split, source in zip((train, test), sources, strict=True):
        if len(split) and split.min() < 0:
            raise DataError(f"{source}: label {split.min().item()} is negative")
        if dataset == "cifar10" and len(split) and split.max() > 9:
            raise DataError(
                f"{source}: label {split.max().item()} is outside CIFAR-10's classes 0..9 "
                "(dataset='cifar10'); relabel the data or use dataset='imagenet' for other sets"
            )
    present = torch.unique(train)
    if len(present) < 2:
        shown = present.tolist()[0] if len(present) else "none"
        raise DataError(
            f"{sources[0]}: every training label is {shown}; a classifier needs at least two "
            "classes"
        )
    if len(test) and test.max() >= num_classes:
        raise DataError(
            f"{sources[1]}: label {test.max().item()} is out of range for the {num_classes} "
            f"classes of {sources[0]}"
        )
    unseen = torch.unique(test[~torch.isin(test, present)]) if len(test) else test
    if len(unseen):
        shown = ", ".join(str(v) for v in unseen.tolist()[:5])
        more = f" and {len(unseen) - 5} more" if len(unseen) > 5 else ""
        trained = ", ".join(str(v) for v in present.tolist()[:12])
        raise DataError(
            f"{sources[1]}: test label(s) {shown}{more} never occur in the training split "
            f"{sources[0]} (its classes: {trained}); a model cannot learn a class it never "
            "sees: add its training images or drop those test images"
        )


def _check_images(dataset: Any, size: tuple[int, int] | None, threads: int = 8) -> None:
    """Open and verify every image a folder split will read (PIL's ``verify``: the whole file's
    structure and checksums, no decoding), with PIL's decompression-bomb limit kept, so that an
    undecodable, truncated or oversized file fails now, before anything is written, rather than
    in the middle of training. ``size`` (H, W): what every image must measure (CIFAR-sized
    folders, which are not resized; None: any size)."""
    from PIL import Image, UnidentifiedImageError

    def sample_paths(split: Any) -> list[str]:
        if isinstance(split, Subset):
            inner = sample_paths(split.dataset)
            return [inner[i] for i in split.indices]
        return [path for path, _ in split.samples]

    paths = sample_paths(dataset)

    def problem(path: str) -> str | None:
        try:
            with Image.open(path) as image:
                found = (image.height, image.width)
                image.verify()
        except Image.DecompressionBombError as err:
            return (
                f"{path}: refused as a decompression bomb ({err}); the images of a data root "
                "must stay within PIL's limit (Image.MAX_IMAGE_PIXELS)"
            )
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as err:
            reason = str(err).splitlines()[0] if str(err).strip() else "no detail"
            return f"{path}: cannot be decoded as an image ({type(err).__name__}: {reason})"
        except Exception as err:  # noqa: BLE001 - any other decoder failure: an unusable file
            return f"{path}: cannot be decoded as an image ({type(err).__name__}: {err})"
        if size is not None and found != size:
            return (
                f"{path}: is {found[1]}x{found[0]} but the images of this data root are "
                f"{size[1]}x{size[0]} (CIFAR-sized folders are not resized); resize it or "
                "remove it"
            )
        return None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for message in pool.map(problem, paths):
            if message is not None:
                raise DataError(message)


def _load_splits(root: Path, dataset: str, fmt: str, data: DataConfig) -> _Splits:
    """Both splits, subsetted; ``ArrayDataset`` for in-memory formats, torch datasets otherwise.

    Labels are checked (:func:`_check_labels`) before any subset, so that a bad label is named
    as such rather than as a subset that cannot be filled; image files of the splits in use are
    checked for a readable header."""
    if fmt == "imagefolder":
        train, test, classes = _load_folders(root)
        train_labels, test_labels = train.targets, test.targets
        sources = (str(root / "train"), str(Path(test.root)))
    else:
        if fmt == "npz":
            train, test = load_npz(root)
            sources = (str(root / "train.npz"), str(root / "test.npz"))
        else:
            folder = root / CIFAR10_FOLDER
            sources = (f"{folder}/data_batch_*", str(folder / "test_batch"))
            train, test = load_torchvision_cifar10(
                root, download=data.download, verify_checksums=data.verify_checksums
            )
        train_labels, test_labels, classes = train.labels, test.labels, train.classes
        if dataset == "cifar10" and classes == tuple(str(i) for i in range(10)):
            classes = CIFAR10_CLASSES  # an npz without names, in CIFAR-10's label order
            train, test = (ArrayDataset(s.images, s.labels, classes) for s in (train, test))
    _check_labels(dataset, (train_labels, test_labels), len(classes), sources)
    folder_samples = (
        {"train": train.samples, "test": test.samples} if fmt == "imagefolder" else None
    )
    files = files_fingerprint(root, fmt, folder_samples)
    train, train_labels, val, kept, val_indices = _carve_validation(train, train_labels, data)
    seed = data.subset_seed
    train, train_indices = _subset(
        train, train_labels, data.train_subset, seed, "data.train_subset"
    )
    test, test_indices = _subset(test, test_labels, data.test_subset, seed, "data.test_subset")
    if kept is not None:  # indices into the whole training split
        train_indices = kept if train_indices is None else kept[train_indices]
    subsets = {
        "train": indices_digest(train_indices),
        "val": indices_digest(val_indices),
        "test": indices_digest(test_indices),
    }
    fingerprint = run_fingerprint(files, len(classes), subsets)
    if isinstance(train, ArrayDataset):
        size = train.image_size
    else:
        size = (224, 224) if dataset == "imagenet" else _native_size(train)
    if fmt == "imagefolder":
        for split in (train, test, val):
            if split is not None:
                _check_images(split, None if dataset == "imagenet" else size)
    return _Splits(train, test, classes, size, val, fingerprint)


def count_classes(dataset: str, data: DataConfig) -> int:
    """The number of classes :func:`build_data` finds in ``data.root`` (its ``num_classes``),
    read without loading images: an image-folder tree's class folders, an npz's ``classes`` or
    largest label, CIFAR-10's python batches' ten classes. For checks made before training
    (a study's pre-check of ``init_from`` against the model the trials will build)."""
    if data.root is None:
        raise ConfigError("data.root is not set: give --data-root DIR or set $PACT_DATA_ROOT")
    root = Path(data.root).expanduser().resolve()
    found = _resolve_format(root, dataset, data.format, download=False)
    if found == "imagefolder":
        return folder_num_classes(root)
    if found == "npz":
        return npz_num_classes(root)
    return len(CIFAR10_CLASSES)


def data_root_fingerprint(dataset: str, data: DataConfig) -> str:
    """The short fingerprint of the data in ``data.root`` (its files and class count, no
    subsets): ``npz:3f2a9c01b2de/10c``, the first two parts of the ``data.fingerprint`` of every
    run on it (:mod:`harness.data.fingerprint`). For a study's record of its data."""
    if data.root is None:
        raise ConfigError("data.root is not set: give --data-root DIR or set $PACT_DATA_ROOT")
    root = Path(data.root).expanduser().resolve()
    found = _resolve_format(root, dataset, data.format, download=False)
    return root_fingerprint(files_fingerprint(root, found), count_classes(dataset, data))


def build_data(
    dataset: str,
    data: DataConfig,
    *,
    batch_size: int = 128,
    eval_batch_size: int | None = None,
    seed: int = 0,
    channels_last: bool = False,
    device: torch.device | str | None = None,
) -> DataBundle:
    """Load ``dataset`` ("cifar10" or "imagenet") as ``data`` describes and build its loaders.

    ``data.root`` must be set (see :func:`resolve_data_root`); ``data.format`` is the root's
    layout ("auto" detects it). Subsets are class balanced and chosen by ``data.subset_seed``
    alone, so every training ``seed`` sees the same images. The train loader shuffles (by
    ``seed`` and epoch), augments (if ``data.augment``) and drops the last partial batch; the
    test loader keeps dataset order and every item. ``data.crop_padding`` is the pad of the CIFAR
    random crop (the SACT code pads by 2). ``data.num_workers`` applies to image folders only
    (in-memory batches are assembled in the main process). ``data.download`` fetches missing
    CIFAR-10 batches through torchvision (network needed). ``device`` keeps in-memory splits
    on that device (batches are assembled there; image folders ignore it).
    """
    _check_arguments(
        dataset, data, {"batch_size": batch_size, "eval_batch_size": eval_batch_size, "seed": seed}
    )
    if data.root is None:
        raise ConfigError("data.root is not set: give --data-root DIR or set $PACT_DATA_ROOT")
    root = Path(data.root).expanduser().resolve()
    found = _resolve_format(root, dataset, data.format, data.download)
    splits = _load_splits(root, dataset, found, data)
    if data.preprocessing != "standard" and found != "imagefolder":
        raise ConfigError(
            f"data.preprocessing={data.preprocessing!r} applies to image folders (ImageNet); "
            f"this data root holds the {found!r} format: use 'standard'"
        )
    padded = data.augment and not (found == "imagefolder" and dataset == "imagenet")
    if padded and data.crop_padding > min(splits.image_size) // 2:
        height, width = splits.image_size
        raise ConfigError(
            f"data.crop_padding={data.crop_padding} must be at most half the {height}x{width} "
            f"images of {root} ({min(splits.image_size) // 2})"
        )
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
        normalization=data.normalization,
        mean=mean,
        std=std,
        seed=seed,
        channels_last=channels_last,
    )
    eval_batch_size = eval_batch_size or batch_size
    train_loader: BatchLoader
    test_loader: BatchLoader
    if found == "imagefolder":
        train_tf, eval_tf = _folder_transforms(
            dataset, splits.image_size, data.augment, data.crop_padding, data.preprocessing
        )
        workers = dict(num_workers=data.num_workers, **common)
        train_loader = FolderLoader(
            splits.train, train_tf, batch_size, shuffle=True, drop_last=True, **workers
        )
        test_loader = FolderLoader(
            splits.test, eval_tf, eval_batch_size, shuffle=False, drop_last=False, **workers
        )
        val_loader = None
        if splits.val is not None:
            val_loader = FolderLoader(
                splits.val, eval_tf, eval_batch_size, shuffle=False, drop_last=False, **workers
            )
    else:
        train_loader = ArrayLoader(
            splits.train,
            batch_size,
            shuffle=True,
            drop_last=True,
            augment=data.augment,
            crop_padding=data.crop_padding,
            device=device,
            **common,
        )
        on_device = dict(device=device, **common)
        test_loader = ArrayLoader(
            splits.test, eval_batch_size, shuffle=False, drop_last=False, augment=False, **on_device
        )
        val_loader = None
        if splits.val is not None:
            val_loader = ArrayLoader(
                splits.val,
                eval_batch_size,
                shuffle=False,
                drop_last=False,
                augment=False,
                **on_device,
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
        val_loader=val_loader,
        num_val=0 if splits.val is None else len(splits.val),
        fingerprint=splits.fingerprint,
    )
