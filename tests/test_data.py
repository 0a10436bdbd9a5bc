"""Tests of harness.data on tiny datasets written in the real on-disk formats (no network)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.config import DataConfig
from harness.data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    ArrayDataset,
    ArrayLoader,
    balanced_subset,
    normalize,
    random_crop_flip,
    resolve_data_root,
)
from harness.data import (
    build_data as build_data_from_config,
)
from harness.errors import ConfigError, DataError

LOADER_ARGUMENTS = ("batch_size", "eval_batch_size", "seed", "channels_last")


def build_data(dataset, root, **kwargs):
    """``build_data`` with DataConfig fields as keywords (``fmt`` is ``data.format``)."""
    loader = {k: kwargs.pop(k) for k in LOADER_ARGUMENTS if k in kwargs}
    if "fmt" in kwargs:
        kwargs["format"] = kwargs.pop("fmt")
    return build_data_from_config(dataset, DataConfig(root=str(root), **kwargs), **loader)


MEAN = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Undo per-channel normalization: back to 0..255 values, NHWC like the stored arrays."""
    return (x * STD + MEAN).mul(255).permute(0, 2, 3, 1)


def collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


# ------------------------------------------------------------------------------ dataset writers


@pytest.fixture
def tiny_cifar(tmp_path: Path) -> dict:
    """CIFAR-10 in torchvision's own format: 5 train batches of 10 images and a test batch of 10."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    out: dict = {"root": tmp_path, "train_images": [], "train_labels": []}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        hwc = rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
        labels = rng.permutation(10).tolist()
        chw_rows = hwc.transpose(0, 3, 1, 2).reshape(10, 3072)  # 1024 R, then G, then B
        batch = {"batch_label": name, "labels": labels, "data": chw_rows, "filenames": [""] * 10}
        (folder / name).write_bytes(pickle.dumps(batch))
        if name == "test_batch":
            out["test_images"], out["test_labels"] = hwc, labels
        else:
            out["train_images"].append(hwc)
            out["train_labels"] += labels
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))
    out["train_images"] = np.concatenate(out["train_images"])
    return out


def write_npz(path: Path, n: int, size: int = 8, num_classes: int = 10, seed: int = 0, **extra):
    rng = np.random.default_rng(seed)
    arrays = {
        "images": rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8),
        "labels": np.arange(n) % num_classes,
    }
    arrays.update(extra)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


@pytest.fixture
def npz_root(tmp_path: Path) -> Path:
    """200 train / 50 test images of 8x8, labels cycling through 10 classes."""
    write_npz(tmp_path / "train.npz", 200, seed=1)
    write_npz(tmp_path / "test.npz", 50, seed=2)
    return tmp_path


def write_folder(root: Path, split: str, classes: list[str], per_class: int, size=(30, 40)):
    rng = np.random.default_rng(len(split))
    for name in classes:
        (root / split / name).mkdir(parents=True)
        for i in range(per_class):
            array = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(array).save(root / split / name / f"{i}.png")


# ------------------------------------------------------------------------------ torchvision format


def test_torchvision_format_round_trips_pixels_exactly(tiny_cifar):
    bundle = build_data("cifar10", tiny_cifar["root"], verify_checksums=False, batch_size=10)
    assert bundle.format == "torchvision"
    assert (bundle.num_train, bundle.num_test, bundle.num_classes) == (50, 10, 10)
    assert bundle.image_size == (32, 32) and bundle.classes == CIFAR10_CLASSES
    stored = bundle.train_loader.dataset
    assert torch.equal(stored.images, torch.from_numpy(tiny_cifar["train_images"]))
    assert stored.labels.tolist() == tiny_cifar["train_labels"]
    images, labels = collect(bundle.test_loader)
    assert labels.tolist() == tiny_cifar["test_labels"]
    expected = torch.from_numpy(tiny_cifar["test_images"]).float()
    assert torch.allclose(pixels(images), expected, atol=1e-3)


def test_torchvision_format_rejects_unofficial_files_by_default(tiny_cifar):
    with pytest.raises(DataError, match="data_batch_1: md5 .* differs from the official") as err:
        build_data("cifar10", tiny_cifar["root"], batch_size=10)
    assert "verify_checksums" not in str(err.value)  # no advice to switch the check off


def test_torchvision_format_names_missing_batch(tiny_cifar):
    (tiny_cifar["root"] / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3.*download=True"):
        build_data("cifar10", tiny_cifar["root"], verify_checksums=False, batch_size=10)


def test_torchvision_format_reports_corrupt_pickle(tiny_cifar):
    (tiny_cifar["root"] / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_2: cannot read the CIFAR-10 batch"):
        build_data("cifar10", tiny_cifar["root"], verify_checksums=False, batch_size=10)


# -------------------------------------------------------------------------------------- npz format


def test_npz_round_trip_and_class_count(tmp_path):
    train = write_npz(tmp_path / "train.npz", 60, size=6, num_classes=3, seed=1)
    test = write_npz(tmp_path / "test.npz", 9, size=6, num_classes=3, seed=2)
    bundle = build_data("cifar10", tmp_path, batch_size=20, augment=False)
    assert bundle.format == "npz"
    assert (bundle.num_classes, bundle.classes, bundle.image_size) == (3, ("0", "1", "2"), (6, 6))
    assert torch.equal(bundle.train_loader.dataset.images, torch.from_numpy(train["images"]))
    assert bundle.train_loader.dataset.labels.dtype == torch.int64
    images, labels = collect(bundle.test_loader)
    assert labels.tolist() == test["labels"].tolist()
    assert torch.allclose(pixels(images), torch.from_numpy(test["images"]).float(), atol=1e-3)


def test_npz_uses_stored_class_names(tmp_path):
    names = np.array(["cat", "dog", "emu", "owl"])
    write_npz(tmp_path / "train.npz", 8, num_classes=2, classes=names)
    write_npz(tmp_path / "test.npz", 4, num_classes=2, classes=names)
    bundle = build_data("imagenet", tmp_path, batch_size=4)
    assert bundle.num_classes == 4 and bundle.classes == ("cat", "dog", "emu", "owl")


def test_npz_without_names_gets_cifar10_names_for_cifar10(npz_root):
    assert build_data("cifar10", npz_root, batch_size=8).classes == CIFAR10_CLASSES


def test_npz_corrupt_file_names_the_file(npz_root):
    (npz_root / "test.npz").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(DataError, match=r"test\.npz: cannot be read.*expected an \.npz"):
        build_data("cifar10", npz_root, batch_size=8)


def test_npz_truncated_file_names_the_file(npz_root):
    blob = (npz_root / "train.npz").read_bytes()
    (npz_root / "train.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"train\.npz: cannot be read"):
        build_data("cifar10", npz_root, batch_size=8)


def test_npy_instead_of_npz_is_named(npz_root):
    with open(npz_root / "test.npz", "wb") as handle:
        np.save(handle, np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"test\.npz: is a single \.npy array"):
        build_data("cifar10", npz_root, batch_size=8)


@pytest.mark.parametrize(
    ("arrays", "problem"),
    [
        ({"images": np.zeros((4, 8, 8, 3), np.float32)}, "'images' has dtype float32"),
        ({"images": np.zeros((4, 8, 8), np.uint8)}, r"'images' has shape \(4, 8, 8\)"),
        ({"images": np.zeros((4, 8, 8, 1), np.uint8)}, r"'images' has shape \(4, 8, 8, 1\)"),
        ({"labels": None}, r"missing key\(s\) \['labels'\]"),
        ({"labels": np.arange(3)}, "'labels' has 3 entries for 4 images"),
        ({"labels": np.array([0, 1, -1, 2])}, "'labels' holds a negative label"),
        ({"labels": np.array([0.0, 1, 2, 3])}, "'labels' is float64"),
        ({"classes": np.array(["a", "b"])}, "label 3 is out of range for 2 classes"),
    ],
)
def test_npz_bad_contents_are_named(npz_root, arrays, problem):
    write_npz(npz_root / "train.npz", 4, num_classes=4, **arrays)
    with pytest.raises(DataError, match=rf"train\.npz: {problem}.*expected an \.npz"):
        build_data("cifar10", npz_root, batch_size=2)


# ------------------------------------------------------------------------------------------ subsets


def test_balanced_subset_spreads_remainder_over_first_classes():
    labels = torch.arange(100) % 10
    indices = balanced_subset(labels, 23, seed=0, field="train_subset")
    counts = torch.bincount(labels[indices], minlength=10).tolist()
    assert counts == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert torch.equal(indices, torch.sort(indices).values) and len(set(indices.tolist())) == 23
    assert torch.equal(indices, balanced_subset(labels, 23, seed=0, field="train_subset"))
    assert not torch.equal(indices, balanced_subset(labels, 23, seed=1, field="train_subset"))


def test_subsets_are_balanced_and_independent_of_training_seed(npz_root):
    a = build_data("cifar10", npz_root, train_subset=50, test_subset=20, batch_size=10, seed=0)
    b = build_data("cifar10", npz_root, train_subset=50, test_subset=20, batch_size=10, seed=7)
    assert (a.num_train, a.num_test) == (50, 20)
    assert torch.bincount(a.train_loader.dataset.labels).tolist() == [5] * 10
    assert torch.bincount(a.test_loader.dataset.labels).tolist() == [2] * 10
    for name in ("train_loader", "test_loader"):
        da, db = getattr(a, name).dataset, getattr(b, name).dataset
        assert torch.equal(da.images, db.images) and torch.equal(da.labels, db.labels)
    c = build_data("cifar10", npz_root, train_subset=50, subset_seed=1, batch_size=10)
    assert not torch.equal(c.train_loader.dataset.images, a.train_loader.dataset.images)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_subset": 201}, r"train_subset=201 is out of range: allowed 10\.\.200"),
        ({"test_subset": 9}, r"test_subset=9 is out of range: allowed 10\.\.50"),
    ],
)
def test_subset_out_of_range_is_a_config_error(npz_root, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_data("cifar10", npz_root, batch_size=8, **kwargs)


def test_unbalanced_class_cannot_fill_its_share():
    labels = torch.tensor([0] * 10 + [1] * 2)
    with pytest.raises(ConfigError, match="test_subset=8 needs 4 items of class 1.*only 2"):
        balanced_subset(labels, 8, seed=0, field="test_subset")


# ---------------------------------------------------------------------------------- ArrayLoader


def make_loader(n=40, batch_size=8, **kwargs) -> ArrayLoader:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 4, 4, 3).contiguous()
    dataset = ArrayDataset(images, torch.arange(n) % 4, ("a", "b", "c", "d"))
    options = {"shuffle": True, "drop_last": True, "augment": False} | kwargs
    return ArrayLoader(dataset, batch_size, **options)


def epoch_batches(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True)
    )


def test_order_depends_on_seed_and_epoch_only():
    first = make_loader(seed=3)
    history = [epoch_batches(first, epoch) for epoch in range(3)]
    resumed = make_loader(seed=3)  # a fresh loader, as after a restart at the start of epoch 2
    assert same(epoch_batches(resumed, 2), history[2])
    assert same(epoch_batches(first, 0), history[0])
    assert not same(history[0], history[1])
    assert not same(epoch_batches(make_loader(seed=4), 0), history[0])
    # each epoch is a permutation: every item once (40 items, batches of 8, nothing dropped)
    seen = torch.cat([y for _, y in history[1]])
    values = torch.cat([pixels(x)[:, 0, 0, 0] for x, _ in history[1]]).round().long()
    assert len(first) == 5 and sorted(values.tolist()) == list(range(40))
    assert torch.equal(seen, values % 4)


def test_augmentation_is_deterministic_given_seed_and_epoch():
    a, b = make_loader(augment=True, seed=1), make_loader(augment=True, seed=1)
    assert same(epoch_batches(a, 4), epoch_batches(b, 4))
    assert not same(epoch_batches(a, 4), epoch_batches(a, 5))


def test_drop_last_and_eval_order():
    train = make_loader(n=42, batch_size=8)
    assert len(train) == 5 and sum(len(y) for _, y in train) == 40
    evaluation = make_loader(n=42, batch_size=8, shuffle=False, drop_last=False)
    images, labels = collect(evaluation)
    assert len(evaluation) == 6 and labels.tolist() == (torch.arange(42) % 4).tolist()
    assert pixels(images)[:, 0, 0, 0].round().long().tolist() == list(range(42))


def test_random_crop_flip_gives_shifted_and_mirrored_windows_of_padded_image():
    images = torch.randint(
        0, 256, (64, 6, 5, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    out = random_crop_flip(images, torch.Generator().manual_seed(1), padding=2)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (0, 0, 2, 2, 2, 2))
    found = []
    for i in range(len(images)):
        matches = [
            (dy, dx, flip)
            for dy in range(5)
            for dx in range(5)
            for flip in (False, True)
            if torch.equal(
                out[i],
                padded[i, dy : dy + 6, dx : dx + 5].flip(1)
                if flip
                else padded[i, dy : dy + 6, dx : dx + 5],
            )
        ]
        assert len(matches) == 1, f"image {i} is not a unique window of its padded copy"
        found.append(matches[0])
    assert {flip for *_, flip in found} == {False, True}
    assert {dy for dy, _, _ in found} == set(range(5)) and {dx for _, dx, _ in found} == set(
        range(5)
    )
    again = random_crop_flip(images, torch.Generator().manual_seed(1), padding=2)
    assert torch.equal(out, again)


def test_per_image_normalization_standardizes_each_image(npz_root):
    images = torch.rand(6, 3, 5, 5)
    images[0] = 0.5  # a constant image: std 0, clamped like TF's per_image_standardization
    out = normalize(images, "per_image")
    assert torch.allclose(out.mean(dim=(1, 2, 3)), torch.zeros(6), atol=1e-5)
    assert torch.allclose(out[1:].std(dim=(1, 2, 3), correction=0), torch.ones(5), atol=1e-4)
    assert torch.equal(out[0], torch.zeros(3, 5, 5))
    bundle = build_data("cifar10", npz_root, batch_size=8, normalization="per_image")
    x, _ = next(iter(bundle.train_loader))
    assert torch.allclose(x.mean(dim=(1, 2, 3)), torch.zeros(8), atol=1e-5)


def test_per_channel_normalization_and_channels_last(npz_root):
    bundle = build_data("cifar10", npz_root, batch_size=8, augment=False, channels_last=True)
    x, _ = next(iter(bundle.test_loader))
    raw = bundle.test_loader.dataset.images[:8].permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(x, (raw - MEAN) / STD, atol=1e-6)
    assert x.is_contiguous(memory_format=torch.channels_last)
    y, _ = next(iter(build_data("cifar10", npz_root, batch_size=8).test_loader))
    assert y.is_contiguous() and y.dtype == torch.float32 and y.shape == (8, 3, 8, 8)


# ---------------------------------------------------------------------------------- image folders


def test_imagefolder_imagenet_recipe(tmp_path):
    write_folder(tmp_path, "train", ["n01", "n02", "n03"], per_class=4)
    write_folder(tmp_path, "val", ["n01", "n02", "n03"], per_class=2)
    bundle = build_data("imagenet", tmp_path, batch_size=4, eval_batch_size=3, seed=5)
    assert (bundle.format, bundle.num_classes, bundle.classes) == (
        "imagefolder",
        3,
        ("n01", "n02", "n03"),
    )
    assert (bundle.image_size, bundle.num_train, bundle.num_test) == ((224, 224), 12, 6)
    assert len(bundle.train_loader) == 3 and len(bundle.test_loader) == 2
    x, y = next(iter(bundle.train_loader))
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
    _, labels = collect(bundle.test_loader)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    # order and random crops are fixed by (seed, epoch)
    assert same(epoch_batches(bundle.train_loader, 1), epoch_batches(bundle.train_loader, 1))
    assert not same(epoch_batches(bundle.train_loader, 1), epoch_batches(bundle.train_loader, 2))


def test_imagefolder_augmentation_varies_by_item_and_epoch(tmp_path):
    write_folder(tmp_path, "train", ["a", "b"], per_class=1)  # a dataset needs two classes
    write_folder(tmp_path, "val", ["a", "b"], per_class=1)
    (tmp_path / "train" / "a" / "1.png").write_bytes(
        (tmp_path / "train" / "a" / "0.png").read_bytes()
    )
    loader = build_data("imagenet", tmp_path, batch_size=3).train_loader
    (x1, y1), (x2, y2) = epoch_batches(loader, 1)[0], epoch_batches(loader, 2)[0]
    x1, x2 = x1[y1 == 0], x2[y2 == 0]  # the two copies of a/0.png
    assert not torch.equal(x1[0], x1[1])  # the same picture, cropped differently per item
    assert not torch.equal(x1.sum(0), x2.sum(0))  # and differently per epoch
    again, labels = epoch_batches(loader, 1)[0]
    assert torch.equal(x1, again[labels == 0])


def test_imagefolder_batches_do_not_depend_on_worker_count(tmp_path):
    write_folder(tmp_path, "train", ["a", "b"], per_class=4)
    write_folder(tmp_path, "val", ["a", "b"], per_class=1)
    in_process = build_data("imagenet", tmp_path, batch_size=4, seed=2)
    one_worker = build_data("imagenet", tmp_path, batch_size=4, seed=2, num_workers=1)
    assert same(
        epoch_batches(in_process.train_loader, 3), epoch_batches(one_worker.train_loader, 3)
    )


def test_imagefolder_cifar_sized_images_keep_their_size(tmp_path):
    write_folder(tmp_path, "train", ["cat", "dog"], per_class=3, size=(32, 32))
    write_folder(tmp_path, "test", ["cat", "dog"], per_class=2, size=(32, 32))
    bundle = build_data("cifar10", tmp_path, batch_size=2, train_subset=4)
    assert bundle.image_size == (32, 32) and (bundle.num_train, bundle.num_test) == (4, 4)
    x, _ = next(iter(bundle.train_loader))
    assert x.shape == (2, 3, 32, 32)
    expected = np.asarray(Image.open(tmp_path / "test" / "cat" / "0.png"), dtype=np.float32)
    images, _ = collect(bundle.test_loader)
    assert torch.allclose(pixels(images)[0], torch.from_numpy(expected), atol=1e-3)


def test_imagefolder_mismatched_classes(tmp_path):
    write_folder(tmp_path, "train", ["a", "b"], per_class=1)
    write_folder(tmp_path, "val", ["a", "c"], per_class=1)
    with pytest.raises(DataError, match="same class folders"):
        build_data("imagenet", tmp_path, batch_size=1)


# ------------------------------------------------------------------------------------ real copy


def real_cifar10_root() -> Path:
    return Path(os.environ.get("PACT_DATA_ROOT_CIFAR10", "/work/shared/data/cifar10"))


@pytest.mark.skipif(
    not (real_cifar10_root() / "train.npz").is_file(),
    reason=f"no real CIFAR-10 npz copy at {real_cifar10_root()} (set PACT_DATA_ROOT_CIFAR10)",
)
def test_real_cifar10_copy_subset():
    bundle = build_data("cifar10", real_cifar10_root(), train_subset=1000, test_subset=500)
    assert (bundle.format, bundle.num_classes, bundle.image_size) == ("npz", 10, (32, 32))
    assert (bundle.num_train, bundle.num_test) == (1000, 500)
    assert torch.bincount(bundle.train_loader.dataset.labels).tolist() == [100] * 10
    images, labels = collect(bundle.test_loader)
    assert images.shape == (500, 3, 32, 32) and torch.bincount(labels).tolist() == [50] * 10
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    assert ((images >= low - 1e-5) & (images <= high + 1e-5)).all()
    assert images.mean(dim=(0, 2, 3)).abs().max() < 0.15
    assert ((images.std(dim=(0, 2, 3)) - 1).abs() < 0.15).all()
    x, y = next(iter(bundle.train_loader))
    assert x.shape == (128, 3, 32, 32) and len(bundle.train_loader) == 1000 // 128


# ------------------------------------------------------------------------------- roots and args


def test_missing_root_names_path_and_how_to_pass_it(tmp_path):
    with pytest.raises(DataError, match=r"nowhere does not exist.*--data-root.*PACT_DATA_ROOT"):
        build_data("cifar10", tmp_path / "nowhere")


def test_unknown_layout_lists_accepted_layouts(tmp_path):
    (tmp_path / "stuff.txt").write_text("hello")
    with pytest.raises(DataError, match=r"no known dataset layout") as info:
        build_data("cifar10", tmp_path)
    for layout in ("torchvision:", "cifar-10-batches-py", "npz:", "train.npz", "imagefolder:"):
        assert layout in str(info.value)


def test_explicit_format_that_does_not_match(npz_root):
    with pytest.raises(DataError, match=r"cifar-10-batches-py lacks data_batch_1"):
        build_data("cifar10", npz_root, fmt="torchvision")


def test_imagenet_refuses_cifar_batches(tiny_cifar):
    with pytest.raises(DataError, match="dataset='imagenet'"):
        build_data("imagenet", tiny_cifar["root"], verify_checksums=False)


def test_resolve_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("PACT_DATA_ROOT", str(tmp_path / "env"))
    assert resolve_data_root(str(tmp_path / "cli")) == tmp_path / "cli"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("PACT_DATA_ROOT")
    with pytest.raises(
        DataError, match="--data-root PATH or set the environment variable PACT_DATA_ROOT"
    ):
        resolve_data_root(None)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dataset": "mnist"}, "dataset='mnist'.*cifar10, imagenet"),
        ({"fmt": "hdf5"}, "format='hdf5'.*auto, torchvision, npz, imagefolder"),
        ({"normalization": "zca"}, "normalization='zca'.*per_channel, per_image"),
        ({"batch_size": 0}, "batch_size=0.*>= 1"),
        ({"eval_batch_size": 0}, "eval_batch_size=0.*>= 1 or None"),
        ({"train_subset": 2.5}, "train_subset=2.5"),
        ({"num_workers": -1}, "num_workers=-1.*>= 0"),
        ({"augment": "yes"}, "augment='yes'.*True or False"),
        ({"dataset": "imagenet", "fmt": "torchvision"}, "format='torchvision'.*imagenet"),
        ({"batch_size": 256}, "batch_size=256 exceeds the 200 training images"),
    ],
)
def test_bad_arguments_name_the_field(npz_root, kwargs, field):
    arguments = {"dataset": "cifar10"} | kwargs
    with pytest.raises(ConfigError, match=field):
        build_data(arguments.pop("dataset"), npz_root, **arguments)


def _image_keys(loader) -> set[bytes]:
    return {image.numpy().tobytes() for images, _ in loader for image in images}


def test_validation_split_is_balanced_disjoint_and_chosen_by_its_own_seed(npz_root):
    bundle = build_data("cifar10", npz_root, batch_size=10, augment=False, val_subset=30)
    val_labels = torch.cat([labels for _, labels in bundle.val_loader])
    assert bundle.num_val == 30 and bundle.num_train == 170
    assert torch.bincount(val_labels, minlength=10).tolist() == [3] * 10  # class-balanced
    train_keys = _image_keys(
        build_data("cifar10", npz_root, batch_size=170, augment=False, val_subset=30).train_loader
    )
    assert not train_keys & _image_keys(bundle.val_loader)  # never trained on
    # train_subset picks from what is left, and other subset seeds never move the val split
    other = build_data(
        "cifar10", npz_root, batch_size=10, val_subset=30, train_subset=50, subset_seed=3
    )
    assert other.num_train == 50
    assert _image_keys(other.val_loader) == _image_keys(bundle.val_loader)
    moved = build_data("cifar10", npz_root, batch_size=10, val_subset=30, val_seed=1)
    assert _image_keys(moved.val_loader) != _image_keys(bundle.val_loader)
    assert build_data("cifar10", npz_root, batch_size=10).val_loader is None


def test_validation_split_too_large_names_the_field(npz_root):
    with pytest.raises(ConfigError, match="data.val_subset=500 is out of range"):
        build_data("cifar10", npz_root, batch_size=10, val_subset=500)
