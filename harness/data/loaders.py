"""Batch loaders and what they apply: seeds, balanced subsets, augmentation, normalization.

:class:`ArrayLoader` batches an in-memory :class:`~harness.data.readers.ArrayDataset`, shuffling
and augmenting whole batches on tensors; :class:`FolderLoader` wraps a torch ``DataLoader`` over
an image folder. Both satisfy :class:`BatchLoader`, and an epoch's order and augmentation depend
on ``(seed, epoch)`` only (:func:`derive_seed`). Also here: class-balanced subsets
(:func:`balanced_subset`), CIFAR augmentation (:func:`random_crop_flip`, and the torchvision
transforms of image folders), normalization (:func:`normalize`) and the normalization constants.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from harness.config import NORMALIZATIONS
from harness.data.readers import ArrayDataset
from harness.errors import ConfigError, DataError, check_choice

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BatchLoader(Protocol):
    """What the training loop needs from a loader."""

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


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


def crop_flip_draws(
    batch: int, generator: torch.Generator, padding: int = 4
) -> tuple[Tensor, Tensor, Tensor]:
    """The random numbers of :func:`random_crop_flip` for a batch: row and column offsets in
    0..2*padding and the flip flags, drawn from ``generator`` (on the CPU) in that order."""
    row0 = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    col0 = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    return row0, col0, flip


def apply_crop_flip(
    images: Tensor, draws: tuple[Tensor, Tensor, Tensor], padding: int = 4
) -> Tensor:
    """Pad, crop and flip a batch ``[B, H, W, C]`` as ``draws`` say, on the images' device."""
    batch, height, width, _ = images.shape
    device = images.device
    row0, col0, flip = (d.to(device, non_blocking=True) for d in draws)
    padded = F.pad(images, (0, 0, padding, padding, padding, padding))
    rows = row0[:, None] + torch.arange(height, device=device)
    cols = col0[:, None] + torch.arange(width, device=device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a mirrored crop reads columns backwards
    return padded[
        torch.arange(batch, device=device)[:, None, None], rows[:, :, None], cols[:, None, :]
    ]


def random_crop_flip(images: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Standard CIFAR augmentation of a batch ``[B, H, W, C]``: zero-pad, random crop, random flip.

    Each image is padded by ``padding`` pixels of zeros on every side, cropped back to H x W at an
    offset drawn uniformly from 0..2*padding per axis, and mirrored left-right with probability 1/2.
    All draws come from ``generator`` (:func:`crop_flip_draws`); one gather does crop and flip
    for the whole batch, on the images' device (:func:`apply_crop_flip`).
    """
    return apply_crop_flip(images, crop_flip_draws(len(images), generator, padding), padding)


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
        mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (images - mean_t) / std_t
    if mode == "per_image":
        flat = images.flatten(1)
        min_std = 1.0 / (255.0 * math.sqrt(flat.shape[1]))
        image_mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        image_std = flat.std(dim=1, correction=0).clamp_min(min_std).view(-1, 1, 1, 1)
        return (images - image_mean) / image_std
    if mode == "inception":  # Inception preprocessing: [0, 1] -> [-1, 1]
        return images * 2.0 - 1.0
    check_choice("normalization", mode, NORMALIZATIONS)
    raise AssertionError(f"normalization {mode!r} is allowed but not implemented")


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

    With ``device`` (``speed.device_data``) the images and labels are copied to that device once
    and batches are indexed, cropped, flipped and normalized there; the random numbers are still
    drawn on the CPU in the same order, so the batches equal those of the host loader.
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
        device: torch.device | str | None = None,
    ) -> None:
        self.dataset = dataset
        self.device = None if device is None else torch.device(device)
        self._images, self._labels = dataset.images, dataset.labels
        if self.device is not None:
            self._images = dataset.images.to(self.device)
            self._labels = dataset.labels.to(self.device)
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
        if self.device is not None:
            order = order.to(self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            images = self._images[index]
            if self.augment:
                draws = crop_flip_draws(len(index), generator, self.crop_padding)
                images = apply_crop_flip(images, draws, self.crop_padding)
            x = _model_input(
                images.permute(0, 3, 1, 2),
                self.normalization,
                self.mean,
                self.std,
                self.channels_last,
            )
            yield x, self._labels[index]


def _sample_path(dataset: Any, index: int) -> str:
    """The file behind item ``index`` of an image folder (or of a subset of one)."""
    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    samples = getattr(dataset, "samples", None)
    return str(samples[index][0]) if samples is not None else f"item {index}"


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
        try:
            image, label = self.base[index]
        except (OSError, ValueError, SyntaxError) as err:  # PIL's decoding errors
            raise DataError(
                f"{_sample_path(self.base, index)}: cannot be decoded as an image "
                f"({type(err).__name__}: {err})"
            ) from None
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
        try:
            for images, labels in self._loader:
                x = _model_input(
                    images, self.normalization, self.mean, self.std, self.channels_last
                )
                yield x, labels
        except DataError as err:  # from a worker, the message is its whole traceback
            last = str(err).strip().splitlines()[-1]
            raise DataError(last.split("DataError: ", 1)[-1]) from None


# ------------------------------------------------------------------------ folder transforms


#: Inception preprocessing of the SACT ImageNet code (inception_preprocessing.py, fast_mode
#: False): distorted bounding-box crop covering 5-100% of the image at aspect 3/4..4/3, flip,
#: colour distortion (brightness 32/255, saturation and contrast 0.5-1.5, hue 0.2); evaluation:
#: the central 87.5% of the image resized to 224. (The code draws the crop around the dataset's
#: bounding boxes, with min_object_covered 0.1; image folders carry no boxes, so the whole image
#: is the box.)
INCEPTION_CROP_AREA = (0.05, 1.0)
INCEPTION_EVAL_FRACTION = 0.875


def _central_crop(image, fraction: float = INCEPTION_EVAL_FRACTION):
    """The central ``fraction`` of each side of a PIL image (TF ``central_crop``)."""
    width, height = image.size
    w, h = round(width * fraction), round(height * fraction)
    left, top = (width - w) // 2, (height - h) // 2
    return image.crop((left, top, left + w, top + h))


def _folder_transforms(
    dataset: str,
    image_size: tuple[int, int],
    augment: bool,
    crop_padding: int,
    preprocessing: str = "standard",
) -> tuple[Any, Any]:
    """(train, eval) transforms yielding uint8 CHW tensors."""
    from torchvision import transforms as T

    to_tensor = T.PILToTensor()
    if preprocessing == "inception":
        evaluation = T.Compose([T.Lambda(_central_crop), T.Resize((224, 224)), to_tensor])
        train = T.Compose(
            [
                T.RandomResizedCrop(224, scale=INCEPTION_CROP_AREA, ratio=(3 / 4, 4 / 3)),
                T.RandomHorizontalFlip(),
                T.ColorJitter(brightness=32 / 255, contrast=0.5, saturation=0.5, hue=0.2),
                to_tensor,
            ]
        )
    elif dataset == "imagenet":
        evaluation = T.Compose([T.Resize(256), T.CenterCrop(224), to_tensor])
        train = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), to_tensor])
    else:  # CIFAR-sized images stored as files: keep their size, CIFAR augmentation
        evaluation = to_tensor
        train = T.Compose(
            [T.RandomCrop(image_size, padding=crop_padding), T.RandomHorizontalFlip(), to_tensor]
        )
    return (train if augment else evaluation), evaluation
