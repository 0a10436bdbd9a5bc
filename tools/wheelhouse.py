"""``make wheelhouse``: the wheels a GPU machine without a package registry lacks to run the
project, in one folder of at most 60 MiB (the device tool carries 64 MiB in all).

The GPU machine (docs/gpu.md) has Python 3.12, torch, torchvision, numpy, pandas, scipy,
matplotlib, seaborn, pyyaml, tqdm, tabulate, jinja2, portalocker and pytest; it lacks
:data:`REQUIRED` (fvcore and the parts of its dependencies it does not have). fvcore and iopath
are published as source only: they are pure Python, so ``pip wheel`` builds a
``py3-none-any`` wheel of each here. The others are downloaded as wheels for the GPU machine's
Python (``pip download --only-binary=:all:``). :data:`OPTIONAL` (Ray) is added only if the
folder still fits under the limit; it does not (Ray's wheel alone is larger), so
``make gpu-check`` runs its study through the plain trial loop and says so.

Usage::

    python -m tools.wheelhouse build [--out wheelhouse] [--python-version 3.12]
    python -m tools.wheelhouse list [FOLDER]     # what is packed, with sizes; 2 if over 60 MiB
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
#: What the device tool carries is 64 MiB in all (tree included): the wheels get 60.
LIMIT_BYTES = 60 * MIB
DEFAULT_FOLDER = "wheelhouse"
#: The GPU machine's Python (/work/.library/device/KINDS.md: Python 3.12.3).
PYTHON_VERSION = "3.12"
#: manylinux tags pip may pick for an x86-64 Linux machine (pip matches each tag exactly).
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
#: (requirement, how): "build" for source-only pure-Python packages, "download" for wheels.
#: The versions are the ones this project's tests run with (.venv).
REQUIRED = (
    ("fvcore==0.1.5.post20221221", "build"),
    ("iopath==0.1.10", "build"),
    ("yacs==0.1.8", "download"),
    ("termcolor==3.3.0", "download"),
)
#: Added only when the folder stays under the limit with it.
OPTIONAL = (("ray==2.60.0", "download"),)


class WheelhouseError(Exception):
    """A wheelhouse that cannot be used (over the limit, missing): one line."""


@dataclass(frozen=True)
class Wheel:
    name: str
    size: int


def list_wheels(folder: str | Path) -> list[Wheel]:
    """The wheels in ``folder``, by name (a missing folder is an error)."""
    path = Path(folder)
    if not path.is_dir():
        raise WheelhouseError(f"{path}: no such folder (run `make wheelhouse` first)")
    return [Wheel(p.name, p.stat().st_size) for p in sorted(path.glob("*.whl"))]


def total_bytes(wheels: list[Wheel]) -> int:
    return sum(w.size for w in wheels)


def check_size(wheels: list[Wheel], limit: int = LIMIT_BYTES, where: str = "wheelhouse") -> None:
    """Refuse (one line) a wheelhouse over ``limit`` bytes."""
    total = total_bytes(wheels)
    if total > limit:
        raise WheelhouseError(
            f"{where}: {total / MIB:.1f} MiB is over the {limit / MIB:g} MiB limit "
            f"({len(wheels)} wheels); the device tool carries 64 MiB in all"
        )


def listing(wheels: list[Wheel], limit: int = LIMIT_BYTES) -> list[str]:
    """One line per wheel with its size, then the total against the limit."""
    width = max((len(w.name) for w in wheels), default=10)
    lines = [f"{w.name:<{width}}  {w.size / MIB:7.2f} MiB" for w in wheels]
    lines.append(
        f"{'total (' + str(len(wheels)) + ' wheels)':<{width}}  {total_bytes(wheels) / MIB:7.2f} "
        f"MiB of {limit / MIB:g} MiB"
    )
    return lines


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise WheelhouseError(f"{' '.join(command[3:6])} ...: {tail[0]}")


def fetch(requirement: str, how: str, into: Path, python_version: str) -> None:
    """One requirement's wheel into ``into`` (no dependencies: :data:`REQUIRED` names them)."""
    if how == "build":
        _pip("wheel", "--no-deps", "--quiet", "-w", str(into), requirement)
        return
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    _pip(
        "download",
        "--no-deps",
        "--quiet",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        *platforms,
        "-d",
        str(into),
        requirement,
    )


def build(out: str | Path, python_version: str = PYTHON_VERSION) -> list[str]:
    """Fill ``out`` with :data:`REQUIRED`, then each :data:`OPTIONAL` that fits; returns the
    lines to print (what was left out and why, then the listing)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()
    notes = []
    for requirement, how in REQUIRED:
        fetch(requirement, how, folder, python_version)
    check_size(list_wheels(folder), where=str(folder))
    for requirement, how in OPTIONAL:
        with tempfile.TemporaryDirectory() as tmp:
            fetch(requirement, how, Path(tmp), python_version)
            extra = list_wheels(tmp)
            after = total_bytes(list_wheels(folder)) + total_bytes(extra)
            if after > LIMIT_BYTES:
                notes.append(
                    f"left out {requirement}: {total_bytes(extra) / MIB:.1f} MiB would make "
                    f"{after / MIB:.1f} MiB, over {LIMIT_BYTES / MIB:g} MiB (gpu-check then "
                    "runs its study without it)"
                )
                continue
            for wheel in extra:
                (Path(tmp) / wheel.name).replace(folder / wheel.name)
    wheels = list_wheels(folder)
    check_size(wheels, where=str(folder))
    return [*notes, *listing(wheels)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.wheelhouse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="download/build the wheels, then list them")
    b.add_argument("--out", default=DEFAULT_FOLDER)
    b.add_argument("--python-version", default=PYTHON_VERSION)
    s = sub.add_parser("list", help="list a wheelhouse and check its size")
    s.add_argument("folder", nargs="?", default=DEFAULT_FOLDER)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            lines = build(args.out, args.python_version)
        else:
            wheels = list_wheels(args.folder)
            check_size(wheels, where=args.folder)
            lines = listing(wheels)
    except WheelhouseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
