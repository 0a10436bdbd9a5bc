"""Shared fixtures: a tiny learnable dataset in the npz format, the real CIFAR-10 copy, CLI runs.

The runs here are kept to a few seconds on two shared CPU cores: ResNet-8, 64 training images,
batch 32, one epoch, CPU. A session-scoped finished run (made once, through the console script in
a subprocess) serves every test that only reads a finished run or needs one to exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

# Tiny nets on a small shared machine: one intra-op thread is faster than two competing ones
# (ResNet-14, batch 32: 0.2 s against 0.5 s a step under load). OMP_NUM_THREADS overrides.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)

REAL_DATA_ENV = "PACT_DATA_ROOT_CIFAR10"
REAL_DATA_DEFAULT = "/work/shared/data/cifar10"

#: Per-class mean colours of the tiny dataset: far apart, so a small net learns them quickly.
CLASS_COLOURS = np.array(
    [[(37 + 83 * c) % 256, (190 + 61 * c) % 256, (101 + 149 * c) % 256] for c in range(10)],
    dtype=np.float64,
)

#: Options shared by every tiny CLI run: small subsets and batches, CPU, no progress bars.
TINY_RUN = [
    "--train-subset",
    "64",
    "--test-subset",
    "20",
    "--batch-size",
    "32",
    "--device",
    "cpu",
    "--progress",
    "off",
]


def make_images(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images, labels ``0..9`` in turn; each image is its class colour plus pixel noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    noisy = CLASS_COLOURS[labels][:, None, None, :] + rng.normal(0, 25, (n, size, size, 3))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_tiny_npz(root: Path, n_train: int = 200, n_test: int = 100) -> Path:
    """Write ``root/train.npz`` and ``root/test.npz`` (32x32 RGB, 10 classes); returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = make_images(n, seed)
        np.savez(root / f"{name}.npz", images=images, labels=labels)
    return root


def write_zero_npz(root: Path, n_train: int = 200, n_test: int = 100) -> Path:
    """The tiny dataset's shapes and labels with every image all zero (other data, same form)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = make_images(n, seed)
        np.savez(root / f"{name}.npz", images=np.zeros_like(images), labels=labels)
    return root


@pytest.fixture(scope="session")
def tiny_npz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 200-train / 100-test CIFAR-like dataset in the npz format (read-only for tests)."""
    return write_tiny_npz(tmp_path_factory.mktemp("tiny_npz"))


@pytest.fixture(scope="session")
def real_cifar10_root() -> Path:
    """The real CIFAR-10 copy in npz format; the test is skipped when it is absent."""
    root = Path(os.environ.get(REAL_DATA_ENV, REAL_DATA_DEFAULT))
    if not ((root / "train.npz").is_file() and (root / "test.npz").is_file()):
        pytest.skip(
            f"real CIFAR-10 not found: {root} lacks train.npz/test.npz "
            f"(set {REAL_DATA_ENV} to a folder holding them)"
        )
    return root


@pytest.fixture
def no_data_root_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sure no ``$PACT_DATA_ROOT`` leaks in from the environment."""
    monkeypatch.delenv("PACT_DATA_ROOT", raising=False)


def tiny_train_args(out: Path, data_root: Path, *extra: str, method: str = "resnet") -> list[str]:
    """``train`` arguments of a tiny run (ResNet-8 unless ``extra`` says otherwise)."""
    args = ["train", "--method", method, "--depth", "8", "--data-root", str(data_root)]
    return [*args, "--epochs", "1", *TINY_RUN, *extra, "--out", str(out)]


@pytest.fixture
def tiny_args(tiny_npz_root: Path) -> Callable[..., list[str]]:
    """``tiny_args(out, *extra, method=...)``: arguments of a tiny run on the tiny dataset."""

    def make(out: Path, *extra: str, method: str = "resnet") -> list[str]:
        return tiny_train_args(out, tiny_npz_root, *extra, method=method)

    return make


def console_script() -> list[str]:
    """The installed ``pact-harness`` command (beside this interpreter), else ``-m harness.cli``."""
    script = Path(sys.executable).with_name("pact-harness")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "harness.cli"]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_npz_root: Path) -> dict:
    """A finished 1-epoch ResNet-8 run made by the console script: ``{"dir", "argv", "proc"}``.

    Treat it as read-only; copy it before changing anything.
    """
    out = tmp_path_factory.mktemp("finished") / "resnet_d8"
    argv = [*console_script(), *tiny_train_args(out, tiny_npz_root)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert proc.returncode == 0, f"training run failed:\n{proc.stdout}\n{proc.stderr}"
    return {"dir": out, "argv": argv, "proc": proc}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def snapshot() -> Callable[[Path], dict[str, bytes]]:
    """``snapshot(folder)``: every file under it (relative name -> bytes), hidden ones included."""
    return _snapshot
