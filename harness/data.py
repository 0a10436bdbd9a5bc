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
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from harness.errors import ConfigError, DataError

DATASETS = ("cifar10", "imagenet")
FORMATS = ("auto", "torchvision", "npz", "imagefolder")
NORMALIZATIONS = ("per_channel", "per_image")
DATA_ROOT_ENV = "PACT_DATA_ROOT"

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
)  # fmt: skip
CIFAR10_FOLDER = "cifar-10-batches-py"
_NPZ_EXPECTED = "expected an .npz with 'images' uint8 [N,H,W,3] and 'labels' integer [N]"
LAYOUTS = {
    "torchvision": f"<root>/{CIFAR10_FOLDER}/ (torchvision's CIFAR-10 python batches)",
    "npz": "<root>/train.npz + <root>/test.npz ('images' uint8 [N,H,W,3], 'labels' [N])",
    "imagefolder": "<root>/train/<class>/*.jpg|png + <root>/val/<class>/* (or test/)",
}
_ROOT_HINT = (
    f"pass --data-root PATH or set the environment variable {DATA_ROOT_ENV} "
    "(for CIFAR-10, add --download to fetch it through torchvision; `make run DOWNLOAD=1`)"
)


class BatchLoader(Protocol):
    """What the training loop needs from a loader."""

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


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


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """An in-memory split: ``images`` uint8 [N, H, W, 3], ``labels`` int64 [N], class names."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[3] != 3:
            raise ValueError(
                f"images must be uint8 [N,H,W,3], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must be int64 [{len(self.images)}], got {self.labels.dtype} "
                f"{tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of classes (the length of ``classes``)."""
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return (int(self.images.shape[1]), int(self.images.shape[2]))

    def subset(self, indices: Tensor) -> ArrayDataset:
        """The items at ``indices``, in that order (a copy)."""
        return ArrayDataset(self.images[indices], self.labels[indices], self.classes)


# ----------------------------------------------------------------------------- seeds and subsets


def derive_seed(seed: int, *keys: int) -> int:
    """A 64-bit seed determined by ``seed`` and ``keys`` only (e.g. epoch, item index)."""
    sequence = np.random.SeedSequence(seed, spawn_key=keys)
    return int(sequence.generate_state(1, dtype=np.uint64)[0])


def balanced_subset(labels: Tensor | Sequence[int], n: int, *, seed: int, field: str) -> Tensor:
    """Sorted indices of a class-balanced subset of ``n`` items, chosen by a seeded permutation.

    Each of the k classes present gets ``n // k`` items, and the first ``n % k`` classes one more.
    The choice depends on ``labels``, ``n`` and ``seed`` only. ``field`` names the setting in
    error messages.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    present = torch.unique(labels)
    total, k = len(labels), len(present)
    if isinstance(n, bool) or not isinstance(n, int) or not k <= n <= total:
        raise ConfigError(
            f"{field}={n!r} is out of range: allowed {k}..{total} (one item per class "
            f"up to the {total} items of the split), or None for all"
        )
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    per_class, extra = divmod(n, k)
    chosen = []
    for position, label in enumerate(present.tolist()):
        wanted = per_class + (1 if position < extra else 0)
        members = order[labels[order] == label]
        if len(members) < wanted:
            raise ConfigError(
                f"{field}={n} needs {wanted} items of class {label}, but the split "
                f"holds only {len(members)}: choose a smaller {field}"
            )
        chosen.append(members[:wanted])
    return torch.sort(torch.cat(chosen)).values


# ------------------------------------------------------------------------ augmentation, normalize


def random_crop_flip(images: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Standard CIFAR augmentation of a batch ``[B, H, W, C]``: zero-pad, random crop, random flip.

    Each image is padded by ``padding`` pixels of zeros on every side, cropped back to H x W at an
    offset drawn uniformly from 0..2*padding per axis, and mirrored left-right with probability 1/2.
    All draws come from ``generator``. One gather does crop and flip for the whole batch.
    """
    batch, height, width, _ = images.shape
    padded = F.pad(images, (0, 0, padding, padding, padding, padding))
    row0 = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    col0 = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    rows = row0[:, None] + torch.arange(height)
    cols = col0[:, None] + torch.arange(width)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a mirrored crop reads columns backwards
    return padded[torch.arange(batch)[:, None, None], rows[:, :, None], cols[:, None, :]]


def normalize(
    images: Tensor,
    mode: str,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> Tensor:
    """Normalize float images ``[B, 3, H, W]`` with values in [0, 1].

    ``"per_channel"`` subtracts ``mean`` and divides by ``std`` per channel. ``"per_image"`` is
    TensorFlow's ``per_image_standardization`` (used by the SACT code): each image minus its mean,
    divided by max(its std, 1/sqrt(H*W*C)). TF 1.x (the SACT code's) applies it to 0..255 values;
    the clamp is scaled by 1/255 here so the result equals TF's on the same image.
    """
    if mode == "per_channel":
        mean_t = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
        return (images - mean_t) / std_t
    if mode == "per_image":
        flat = images.flatten(1)
        min_std = 1.0 / (255.0 * math.sqrt(flat.shape[1]))
        image_mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        image_std = flat.std(dim=1, correction=0).clamp_min(min_std).view(-1, 1, 1, 1)
        return (images - image_mean) / image_std
    raise ConfigError(f"normalization={mode!r} is not allowed: choose one of {NORMALIZATIONS}")


def _model_input(
    images: Tensor,
    normalization: str,
    mean: Sequence[float],
    std: Sequence[float],
    channels_last: bool,
) -> Tensor:
    """uint8 [B, 3, H, W] (any strides) -> normalized float32 in the requested memory format."""
    x = normalize(images.float().div_(255.0), normalization, mean, std)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=memory_format)


# ------------------------------------------------------------------------------------- loaders


class ArrayLoader:
    """Batches of an :class:`ArrayDataset`, shuffled and augmented on tensors.

    The order and augmentation of epoch e come from one ``torch.Generator`` seeded by
    ``derive_seed(seed, e)``: call :meth:`set_epoch` before each epoch. ``len()`` is the number of
    batches. Without ``shuffle`` the items come in dataset order.
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        augment: bool,
        normalization: str = "per_channel",
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        seed: int = 0,
        channels_last: bool = False,
        crop_padding: int = 4,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.normalization = normalization
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = seed
        self.channels_last = channels_last
        self.crop_padding = crop_padding
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration uses."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.dataset) // self.batch_size
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        count = len(self.dataset)
        order = torch.randperm(count, generator=generator) if self.shuffle else torch.arange(count)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            images = self.dataset.images[index]
            if self.augment:
                images = random_crop_flip(images, generator, self.crop_padding)
            x = _model_input(
                images.permute(0, 3, 1, 2),
                self.normalization,
                self.mean,
                self.std,
                self.channels_last,
            )
            yield x, self.dataset.labels[index]


class _SeededItems(Dataset):
    """Applies ``transform`` to each item of ``base`` under a seed fixed by (seed, epoch, index).

    torchvision transforms draw from torch's global generator; forking it per item makes the
    augmentation independent of the number of workers and of what ran before.
    """

    def __init__(self, base: Dataset, transform: Any, seed: int) -> None:
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.base[index]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(derive_seed(self.seed, self.epoch, index))
            return self.transform(image), label


class FolderLoader:
    """A torch ``DataLoader`` over an image folder, seeded per epoch, normalizing whole batches.

    The transform yields uint8 tensors (4x less to move between worker processes); conversion to
    float and normalization happen per batch, as in :class:`ArrayLoader`.
    """

    def __init__(
        self,
        dataset: Dataset,
        transform: Any,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        normalization: str,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int = 0,
        num_workers: int = 0,
        channels_last: bool = False,
    ) -> None:
        self.dataset = dataset
        self.normalization = normalization
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = seed
        self.channels_last = channels_last
        self.epoch = 0
        self._items = _SeededItems(dataset, transform, seed)
        self._generator = torch.Generator()
        self._loader = DataLoader(
            self._items,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=num_workers,
            generator=self._generator,
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration uses."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self._generator.manual_seed(derive_seed(self.seed, self.epoch))
        self._items.epoch = self.epoch  # workers receive a copy when the iterator starts
        for images, labels in self._loader:
            x = _model_input(images, self.normalization, self.mean, self.std, self.channels_last)
            yield x, labels


# ------------------------------------------------------------------------------------- roots


def resolve_data_root(cli_value: str | None) -> Path:
    """The data root: ``cli_value`` if given, else ``$PACT_DATA_ROOT``, as an absolute path."""
    value = cli_value or os.environ.get(DATA_ROOT_ENV)
    if not value:
        raise DataError(f"no data root given: {_ROOT_HINT}")
    return Path(value).expanduser().resolve()


def _check_root(root: Path) -> None:
    if not root.exists():
        raise DataError(f"data root {root} does not exist: {_ROOT_HINT}")
    if not root.is_dir():
        raise DataError(f"data root {root} is not a directory: {_ROOT_HINT}")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"data root {root} is not readable (check its permissions)")


def _eval_folder(root: Path) -> Path | None:
    return next((root / name for name in ("val", "test") if (root / name).is_dir()), None)


def _matches(root: Path, fmt: str) -> bool:
    if fmt == "torchvision":
        return (root / CIFAR10_FOLDER).is_dir()
    if fmt == "npz":
        return (root / "train.npz").is_file() and (root / "test.npz").is_file()
    return (root / "train").is_dir() and _eval_folder(root) is not None


def detect_format(root: Path) -> str:
    """The format of ``root``'s layout: ``"torchvision"``, ``"npz"`` or ``"imagefolder"``."""
    _check_root(root)
    for fmt in ("torchvision", "npz", "imagefolder"):
        if _matches(root, fmt):
            return fmt
    accepted = "; ".join(f"{fmt}: {layout}" for fmt, layout in LAYOUTS.items())
    raise DataError(
        f"data root {root} holds no known dataset layout; accepted layouts are {accepted}"
    )


# ---------------------------------------------------------------------------------- npz files


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    def fail(problem: str) -> DataError:
        return DataError(f"{path}: {problem}; {_NPZ_EXPECTED}")

    try:
        # Open the file here: np.load leaks its own handle when a zip turns out to be corrupt.
        with open(path, "rb") as handle:
            loaded = np.load(handle, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise fail("is a single .npy array, not an .npz archive")
            with loaded as archive:
                missing = sorted({"images", "labels"} - set(archive.files))
                if missing:
                    raise fail(f"missing key(s) {missing} (found {sorted(archive.files)})")
                wanted = ("images", "labels", "classes")
                return {key: archive[key] for key in archive.files if key in wanted}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise fail(f"cannot be read as .npz ({type(err).__name__}: {err})") from err


def _check_npz_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    images, labels = arrays["images"], arrays["labels"]
    problem = None
    if images.dtype != np.uint8:
        problem = f"'images' has dtype {images.dtype}"
    elif images.ndim != 4 or images.shape[3] != 3:
        problem = f"'images' has shape {images.shape}"
    elif len(images) == 0:
        problem = "'images' holds no image"
    elif labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        problem = f"'labels' is {labels.dtype} with shape {labels.shape}"
    elif len(labels) != len(images):
        problem = f"'labels' has {len(labels)} entries for {len(images)} images"
    elif labels.min() < 0:
        problem = f"'labels' holds a negative label ({labels.min()})"
    elif "classes" in arrays and arrays["classes"].ndim != 1:
        problem = f"'classes' has shape {arrays['classes'].shape}, expected [num_classes]"
    elif "classes" in arrays and labels.max() >= len(arrays["classes"]):
        problem = f"label {labels.max()} is out of range for {len(arrays['classes'])} classes"
    if problem:
        raise DataError(f"{path}: {problem}; {_NPZ_EXPECTED}")


def load_npz(root: Path) -> tuple[ArrayDataset, ArrayDataset]:
    """Train and test splits from ``root/train.npz`` and ``root/test.npz``.

    The class names are the ``classes`` array of train.npz if it has one, else "0".."max label".
    """
    paths = (root / "train.npz", root / "test.npz")
    arrays = []
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path} not found; npz layout is {LAYOUTS['npz']}")
        arrays.append(_read_npz(path))
        _check_npz_arrays(path, arrays[-1])
    train, test = arrays
    if "classes" in train:
        classes = tuple(str(name) for name in train["classes"])
    else:
        classes = tuple(str(i) for i in range(int(max(a["labels"].max() for a in arrays)) + 1))
    if test["labels"].max() >= len(classes):
        raise DataError(
            f"{paths[1]}: label {test['labels'].max()} is out of range for the "
            f"{len(classes)} classes of {paths[0]}"
        )
    if train["images"].shape[1:] != test["images"].shape[1:]:
        raise DataError(
            f"{root}: train images are {train['images'].shape[1:]} but test images "
            f"are {test['images'].shape[1:]}; both splits need one image size"
        )
    splits = (
        ArrayDataset(
            torch.from_numpy(a["images"]), torch.from_numpy(a["labels"].astype(np.int64)), classes
        )
        for a in arrays
    )
    return next(splits), next(splits)


# ------------------------------------------------------------------------- torchvision CIFAR-10


def _cifar10_files() -> list[str]:
    from torchvision.datasets import CIFAR10

    names = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list]
    return [*names, CIFAR10.meta["filename"]]


def _cifar10_trusting(folder: Path) -> type:
    """``CIFAR10`` with md5 sums taken from the files in ``folder``, for files made elsewhere."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import calculate_md5

    def entries(listing: list[list[str]]) -> list[list[str]]:
        return [[name, calculate_md5(str(folder / name))] for name, _ in listing]

    train_list, test_list = entries(CIFAR10.train_list), entries(CIFAR10.test_list)
    meta = {**CIFAR10.meta, "md5": calculate_md5(str(folder / CIFAR10.meta["filename"]))}

    class LocalCIFAR10(CIFAR10):
        pass

    LocalCIFAR10.train_list, LocalCIFAR10.test_list, LocalCIFAR10.meta = train_list, test_list, meta
    return LocalCIFAR10


def load_torchvision_cifar10(
    root: Path, *, download: bool = False, verify_checksums: bool = True
) -> tuple[ArrayDataset, ArrayDataset]:
    """Train and test splits read by ``torchvision.datasets.CIFAR10`` from ``root``.

    With ``download``, missing files are fetched first (network needed). With
    ``verify_checksums=False``, files that differ from the official ones (e.g. a test's tiny
    batches in the same format) are accepted.
    """
    from torchvision.datasets import CIFAR10

    folder = root / CIFAR10_FOLDER
    missing = [name for name in _cifar10_files() if not (folder / name).is_file()]
    if missing and download:
        try:
            CIFAR10(str(root), train=True, download=True)
        except (OSError, RuntimeError) as err:
            raise DataError(f"downloading CIFAR-10 into {root} failed: {err}") from err
        missing = [name for name in _cifar10_files() if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"{folder} lacks {', '.join(missing)}; pass download=True (--download) "
            "on a connected machine, or point the data root at a complete copy"
        )
    loader = CIFAR10 if verify_checksums else _cifar10_trusting(folder)
    try:
        splits = [loader(str(root), train=train) for train in (True, False)]
    except RuntimeError as err:
        raise DataError(
            f"{folder}: files failed torchvision's md5 check, so they are not the "
            "official CIFAR-10 batches; to load them anyway pass "
            "verify_checksums=False"
        ) from err
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, OSError) as err:
        raise DataError(
            f"{folder}: cannot read the CIFAR-10 batches ({type(err).__name__}: "
            f"{err}); expected torchvision's python pickle format"
        ) from err
    return tuple(  # type: ignore[return-value]
        ArrayDataset(
            torch.from_numpy(np.ascontiguousarray(s.data)),
            torch.tensor(s.targets, dtype=torch.int64),
            tuple(s.classes),
        )
        for s in splits
    )


# ---------------------------------------------------------------------------------- folders


def _folder_transforms(
    dataset: str, image_size: tuple[int, int], augment: bool, crop_padding: int
) -> tuple[Any, Any]:
    """(train, eval) transforms yielding uint8 CHW tensors."""
    from torchvision import transforms as T

    to_tensor = T.PILToTensor()
    if dataset == "imagenet":
        evaluation = T.Compose([T.Resize(256), T.CenterCrop(224), to_tensor])
        train = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), to_tensor])
    else:  # CIFAR-sized images stored as files: keep their size, CIFAR augmentation
        evaluation = to_tensor
        train = T.Compose(
            [T.RandomCrop(image_size, padding=crop_padding), T.RandomHorizontalFlip(), to_tensor]
        )
    return (train if augment else evaluation), evaluation


def _load_folders(root: Path) -> tuple[Dataset, Dataset, tuple[str, ...]]:
    from torchvision.datasets import ImageFolder

    eval_root = _eval_folder(root)
    if not (root / "train").is_dir() or eval_root is None:
        raise DataError(f"{root} is not an image folder tree; expected {LAYOUTS['imagefolder']}")
    try:
        train, test = ImageFolder(str(root / "train")), ImageFolder(str(eval_root))
    except (FileNotFoundError, OSError) as err:
        raise DataError(f"{root}: {err}; expected {LAYOUTS['imagefolder']}") from err
    if train.classes != test.classes:
        raise DataError(
            f"{root}: train/ has classes {train.classes} but {eval_root.name}/ has "
            f"{test.classes}; both need the same class folders"
        )
    return train, test, tuple(train.classes)


def _native_size(dataset: Dataset) -> tuple[int, int]:
    from PIL import Image

    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    with Image.open(base.samples[0][0]) as image:  # type: ignore[attr-defined]
        return (image.height, image.width)


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
