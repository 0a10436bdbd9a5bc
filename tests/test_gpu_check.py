"""``make gpu-check`` without CUDA, and ``make wheelhouse``'s listing and size limit
(tools/gpu_check.py, tools/wheelhouse.py; docs/gpu.md). No network, no GPU: the CUDA steps
run only on a lent GPU machine."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"tools.{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


wheelhouse = _load("wheelhouse")


def _no_cuda_env(tmp_path: Path) -> dict[str, str]:
    # An empty CUDA_VISIBLE_DEVICES hides any GPU: the path under test is the one without CUDA.
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path / "env-out")}


def test_gpu_check_without_cuda_says_so_in_one_line_and_writes_nothing(tmp_path: Path):
    out = tmp_path / "out"
    tic = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tools.gpu_check", "--out", str(out)],
        cwd=ROOT,
        env=_no_cuda_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    seconds = time.monotonic() - tic
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA device"), done.stdout
    assert seconds < 30
    assert not out.exists() and not (tmp_path / "env-out").exists()  # nothing written


def test_make_gpu_check_without_cuda_exits_0(tmp_path: Path):
    done = subprocess.run(
        ["make", "-s", "gpu-check", f"GPU_CHECK_OUT={tmp_path / 'out'}"],
        cwd=ROOT,
        env=_no_cuda_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [done.stdout.strip()]
    assert "no CUDA device" in done.stdout
    assert not (tmp_path / "out").exists()


def test_gpu_check_refuses_an_unknown_step(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "tools.gpu_check", "--skip", "bench,nonsense"],
        cwd=ROOT,
        env=_no_cuda_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout.strip().startswith("error: --skip nonsense: unknown; steps: install,")


def _wheel(folder: Path, name: str, size: int) -> None:
    with open(folder / name, "wb") as f:
        f.truncate(size)  # sparse: the size without the disk


def test_wheelhouse_listing_names_each_wheel_and_the_total(tmp_path: Path):
    _wheel(tmp_path, "b_pkg-1.0-py3-none-any.whl", MIB)
    _wheel(tmp_path, "a_pkg-2.0-py3-none-any.whl", MIB // 2)
    (tmp_path / "notes.txt").write_text("not a wheel")
    wheels = wheelhouse.list_wheels(tmp_path)
    assert [w.name for w in wheels] == ["a_pkg-2.0-py3-none-any.whl", "b_pkg-1.0-py3-none-any.whl"]
    assert wheelhouse.total_bytes(wheels) == MIB + MIB // 2
    lines = wheelhouse.listing(wheels)
    assert lines[0].startswith("a_pkg-2.0-py3-none-any.whl") and lines[0].endswith("0.50 MiB")
    assert lines[-1].split() == ["total", "(2", "wheels)", "1.50", "MiB", "of", "60", "MiB"]
    wheelhouse.check_size(wheels)  # under the limit: no error


def test_wheelhouse_over_60_mib_is_refused_in_one_line(tmp_path: Path, capsys):
    _wheel(tmp_path, "small-1.0-py3-none-any.whl", MIB)
    _wheel(tmp_path, "huge-1.0-cp312-cp312-manylinux_2_28_x86_64.whl", 60 * MIB)
    assert wheelhouse.main(["list", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {tmp_path}: 61.0 MiB is over the 60 MiB limit (2 wheels); the device tool "
        "carries 64 MiB in all"
    )
    with pytest.raises(wheelhouse.WheelhouseError, match="over the 1 MiB limit"):
        wheelhouse.check_size(wheelhouse.list_wheels(tmp_path), limit=MIB)


def test_wheelhouse_list_of_a_missing_folder_says_what_to_run(tmp_path: Path, capsys):
    assert wheelhouse.main(["list", str(tmp_path / "absent")]) == 2
    assert "no such folder (run `make wheelhouse` first)" in capsys.readouterr().err


def test_wheelhouse_list_prints_the_listing(tmp_path: Path, capsys):
    _wheel(tmp_path, "one-1.0-py3-none-any.whl", 1024)
    assert wheelhouse.main(["list", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("one-1.0-py3-none-any.whl") and out[-1].startswith("total (1 wheels)")
