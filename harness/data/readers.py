"""Reading datasets from a data root: layouts, format detection and the split readers.

Holds the accepted layouts (:data:`LAYOUTS`) and their detection (:func:`detect_format`), the
data-root resolution and checks (:func:`resolve_data_root`), the in-memory split
:class:`ArrayDataset`, and the readers: ``.npz`` files (:func:`load_npz`), torchvision's CIFAR-10
python batches (:func:`load_torchvision_cifar10`) and image-folder trees (torchvision
``ImageFolder``).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import pickle
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from harness.errors import DataError

DATA_ROOT_ENV = "PACT_DATA_ROOT"

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


def _read_npz(
    path: Path, wanted: tuple[str, ...] = ("images", "labels", "classes")
) -> dict[str, np.ndarray]:
    """The ``wanted`` arrays of an npz file that has at least 'images' and 'labels' (only the
    members asked for are decompressed)."""

    def fail(problem: str) -> DataError:
        return DataError(f"{path}: {problem}; {_NPZ_EXPECTED}")

    problem = _npz_header_problem(path, wanted)
    if problem:
        raise fail(problem)
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
                return {key: archive[key] for key in archive.files if key in wanted}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise fail(f"cannot be read as .npz ({type(err).__name__}: {err})") from err


#: numpy's own limit on an ``.npy`` header (larger ones need ``allow_pickle``-level trust).
_NPY_MAX_HEADER = 10000


def _npz_header_problem(path: Path, wanted: tuple[str, ...]) -> str | None:
    """Check the header of each wanted member of an npz before numpy allocates its array: the
    shape and dtype it declares must fit the member's size, so a forged header (claiming
    terabytes) is refused in one line instead of failing to allocate. None: all fit (or the
    file is not a zip: np.load's own error names that)."""
    from numpy.lib import format as npy

    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    with archive:
        for info in archive.infolist():
            key = info.filename.removesuffix(".npy")
            if key not in wanted or not info.filename.endswith(".npy"):
                continue
            try:
                with archive.open(info) as member:
                    version = npy.read_magic(member)
                    if version == (1, 0):
                        header = npy.read_array_header_1_0(member, _NPY_MAX_HEADER)
                    elif version == (2, 0):
                        header = npy.read_array_header_2_0(member, _NPY_MAX_HEADER)
                    else:
                        return f"'{key}' has .npy format version {version}, not 1.0 or 2.0"
                    offset = member.tell()
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                first = str(err).split(".")[0].splitlines()[0][:120]
                return f"'{key}' has an unreadable .npy header ({first})"
            shape, _, dtype = header
            if dtype.hasobject:
                return f"'{key}' holds Python objects (dtype {dtype}), not numbers"
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if declared != info.file_size - offset:
                return (
                    f"'{key}' declares shape {tuple(shape)} of {dtype} ({declared} bytes) but "
                    f"holds {info.file_size - offset} bytes"
                )
    return None


#: Where decompressed ``.npz`` arrays are cached: a folder, or ``off``. Default:
#: ``$XDG_CACHE_HOME/pact-harness/npz`` (``~/.cache/pact-harness/npz``).
NPZ_CACHE_ENV = "PACT_NPZ_CACHE"
_CACHE_VERSION = 1


def _npz_cache_root() -> Path | None:
    value = os.environ.get(NPZ_CACHE_ENV)
    if value == "off":
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pact-harness" / "npz"


def _crc32(array: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1))


def _read_cached(folder: Path, source: dict) -> dict[str, np.ndarray] | None:
    """The cached arrays, memory-mapped (copy-on-write), if the manifest matches the source
    file and every array's CRC-32; else None."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("version") != _CACHE_VERSION or manifest.get("source") != source:
        return None
    arrays = {}
    try:
        for name, info in manifest["arrays"].items():
            array = np.load(folder / f"{name}.npy", mmap_mode="c", allow_pickle=False)
            if _crc32(array) != info["crc32"] or list(array.shape) != info["shape"]:
                return None
            arrays[name] = array
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return arrays


def _write_cache(folder: Path, source: dict, arrays: dict[str, np.ndarray]) -> None:
    """Each array as ``.npy``, then the manifest (last, atomically): a reader never sees a
    manifest whose arrays are incomplete. Failures only cost the cache."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tag = f".{os.getpid()}.tmp"
        info = {}
        for name, array in arrays.items():
            tmp = folder / f"{name}.npy{tag}"
            with open(tmp, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
            os.replace(tmp, folder / f"{name}.npy")
            info[name] = {"crc32": _crc32(array), "shape": list(array.shape)}
        manifest = {"version": _CACHE_VERSION, "source": source, "arrays": info}
        tmp = folder / f"manifest.json{tag}"
        tmp.write_text(json.dumps(manifest))
        os.replace(tmp, folder / "manifest.json")
    except (OSError, ValueError):
        pass


def read_npz_cached(path: Path) -> dict[str, np.ndarray]:
    """The arrays of ``path`` (as :func:`_read_npz`), decompressed once and cached.

    The cache (:data:`NPZ_CACHE_ENV`) holds each array as an uncompressed ``.npy`` that later
    reads memory-map instead of decompressing the whole archive (about 3 s for CIFAR-10's
    train.npz, even for a 200-image subset). An entry is keyed by the file's absolute path,
    size and modification time, and every array is verified against the CRC-32 recorded when
    it was written; a mismatch (or an unwritable cache) falls back to reading the archive.
    """
    root = _npz_cache_root()
    if root is None:
        return _read_npz(path)
    stat = path.stat()
    source = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    key = hashlib.sha1(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
    folder = root / f"{path.stem}-{key}"
    cached = _read_cached(folder, source)
    if cached is not None:
        return cached
    arrays = _read_npz(path)
    _write_cache(folder, source, arrays)
    return arrays


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


def _npz_class_names(train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray]) -> tuple:
    """train.npz's ``classes`` if it has them, else "0".."largest label of either split"."""
    if "classes" in train:
        return tuple(str(name) for name in train["classes"])
    return tuple(str(i) for i in range(int(max(a["labels"].max() for a in (train, test))) + 1))


def npz_num_classes(root: Path) -> int:
    """The number of classes :func:`load_npz` finds, read from the labels alone (no images)."""
    arrays = []
    for path in (root / "train.npz", root / "test.npz"):
        if not path.is_file():
            raise DataError(f"{path} not found; npz layout is {LAYOUTS['npz']}")
        arrays.append(_read_npz(path, ("labels", "classes")))
        if not arrays[-1]["labels"].size:
            raise DataError(f"{path}: 'labels' is empty; {_NPZ_EXPECTED}")
    return len(_npz_class_names(*arrays))


def folder_num_classes(root: Path) -> int:
    """The number of classes of an image-folder tree (its class folders under ``train/``)."""
    from torchvision.datasets.folder import find_classes

    try:
        return len(find_classes(str(root / "train"))[0])
    except (FileNotFoundError, OSError) as err:
        raise DataError(f"{root}: {err}; expected {LAYOUTS['imagefolder']}") from err


def load_npz(root: Path) -> tuple[ArrayDataset, ArrayDataset]:
    """Train and test splits from ``root/train.npz`` and ``root/test.npz``.

    The class names are the ``classes`` array of train.npz if it has one, else "0".."max label".
    The decompressed arrays are cached and memory-mapped (:func:`read_npz_cached`).
    """
    paths = (root / "train.npz", root / "test.npz")
    arrays = []
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path} not found; npz layout is {LAYOUTS['npz']}")
        arrays.append(read_npz_cached(path))
        _check_npz_arrays(path, arrays[-1])
    train, test = arrays
    classes = _npz_class_names(train, test)
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


def _cifar10_lists() -> tuple[list[list[str]], list[list[str]], dict[str, str]]:
    from torchvision.datasets import CIFAR10

    return CIFAR10.train_list, CIFAR10.test_list, CIFAR10.meta


def _cifar10_files() -> list[str]:
    train_list, test_list, meta = _cifar10_lists()
    return [name for name, _ in train_list + test_list] + [meta["filename"]]


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The callables numpy arrays pickle through (numpy 1 and 2 module names)."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles what CIFAR-10 batches hold (dicts, lists, str/bytes, ints, numpy arrays) and
    refuses every other global, so a crafted batch cannot run code when it is read."""

    ALLOWED = _numpy_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


def _read_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            entry = _CifarUnpickler(handle, encoding="latin1").load()
    except _ForbiddenGlobal as err:
        raise DataError(
            f"{path} was refused: its pickle calls {err}, which no CIFAR-10 batch holds (it "
            "could run code when loaded); replace the folder with the official batches"
        ) from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise DataError(
            f"{path}: cannot read the CIFAR-10 batch ({type(err).__name__}: {err}); expected "
            "torchvision's python pickle format"
        ) from None
    if not isinstance(entry, dict):
        raise DataError(f"{path}: holds a {type(entry).__name__}, not a CIFAR-10 batch dict")
    return entry


def _read_cifar_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 32, 32, 3], labels int64 [N]) of one batch file, checked."""
    entry = _read_cifar_pickle(path)
    data, labels = entry.get("data"), entry.get("labels", entry.get("fine_labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: 'data' is not a uint8 [N, 3072] array")
    if data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' rows hold {data.shape[1]} values, not 3072 (3x32x32)")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        labels = None
    if labels is None or labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path}: 'labels' is not a list of {len(data)} integer labels")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise DataError(
            f"{path}: label {bad[0]} is outside the {num_classes} classes 0..{num_classes - 1}"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _check_md5(folder: Path, listing: list[list[str]]) -> None:
    for name, expected in listing:
        digest = hashlib.md5(usedforsecurity=False)
        with open(folder / name, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != expected:
            raise DataError(
                f"{folder / name}: md5 {digest.hexdigest()} differs from the official CIFAR-10 "
                f"file's ({expected}), so the folder is not an intact CIFAR-10 copy; download "
                "it again (--download into an empty data root)"
            )


def load_torchvision_cifar10(
    root: Path, *, download: bool = False, verify_checksums: bool = True
) -> tuple[ArrayDataset, ArrayDataset]:
    """Train and test splits from torchvision's CIFAR-10 python batches in ``root``.

    With ``download``, missing files are fetched first through torchvision (network needed).
    The batches are pickles: they are read with an unpickler that allows only what CIFAR-10
    holds (no pickle can run code, checksums or not). ``verify_checksums=False`` accepts files
    that differ from the official ones (e.g. a test's tiny batches in the same format).
    """
    folder = root / CIFAR10_FOLDER
    missing = [name for name in _cifar10_files() if not (folder / name).is_file()]
    if missing and download:
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import download_and_extract_archive

        try:  # the md5-checked archive only: its batches are read below, not by torchvision
            download_and_extract_archive(
                CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5
            )
        except (OSError, RuntimeError) as err:
            raise DataError(f"downloading CIFAR-10 into {root} failed: {err}") from err
        missing = [name for name in _cifar10_files() if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"{folder} lacks {', '.join(missing)}; pass download=True (--download) "
            "on a connected machine, or point the data root at a complete copy"
        )
    train_list, test_list, meta = _cifar10_lists()
    if verify_checksums:
        _check_md5(folder, [*train_list, *test_list, [meta["filename"], meta["md5"]]])
    names = _read_cifar_pickle(folder / meta["filename"]).get(meta["key"])
    if not isinstance(names, list) or len(names) < 2:
        raise DataError(f"{folder / meta['filename']}: '{meta['key']}' lists no class names")
    classes = tuple(str(name) for name in names)
    splits = []
    for listing in (train_list, test_list):
        batches = [_read_cifar_batch(folder / name, len(classes)) for name, _ in listing]
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        splits.append(ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), classes))
    return splits[0], splits[1]


# ---------------------------------------------------------------------------------- folders


def _check_no_loops(folder: Path) -> None:
    """ImageFolder follows symlinks: a link back to a folder it already walked (``c0/loop ->
    ..``) would file the same images again, under the wrong class. Refused, naming the link."""
    seen: set[str] = set()
    for dirpath, _, _ in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            raise DataError(
                f"{dirpath} leads back to {real}, which is already read (a symlink loop or a "
                "second link to one folder): its images would be filed again, under the wrong "
                "class; remove the link"
            )
        seen.add(real)


def _load_folders(root: Path) -> tuple[Dataset, Dataset, tuple[str, ...]]:
    from torchvision.datasets import ImageFolder

    eval_root = _eval_folder(root)
    if not (root / "train").is_dir() or eval_root is None:
        raise DataError(f"{root} is not an image folder tree; expected {LAYOUTS['imagefolder']}")
    for split in (root / "train", eval_root):
        _check_no_loops(split)
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
    path = base.samples[0][0]  # type: ignore[attr-defined]
    try:
        with Image.open(path) as image:
            return (image.height, image.width)
    except Exception as err:  # noqa: BLE001 - an unreadable first image (a bomb included)
        raise DataError(
            f"{path}: cannot be decoded as an image ({type(err).__name__}: {err})"
        ) from None
