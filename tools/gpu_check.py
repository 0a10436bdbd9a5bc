"""``make gpu-check``: everything a lent GPU machine should check, in one command of at most
8 minutes on one H200 (docs/gpu.md).

Without CUDA it prints one line saying so and exits 0, writing nothing (only torch is imported
before that check). With CUDA it runs these steps in turn, each in its own process with a time
box (clipped to what is left of ``--budget``); a step that fails or runs out of time is
recorded and the next one runs:

1. ``install``: the Python packages the machine lacks, from ``--wheelhouse`` (``make
   wheelhouse``; ``pip install --no-index --find-links``), then this checkout and the example
   plug-in (``pip install --no-deps --no-build-isolation -e``) so that the methods register.
2. ``cuda_tests``: the CUDA tests (``pytest -m cuda`` when the marker is declared, else the
   tests whose name says ``cuda``).
3. ``bench``: ``pact-harness bench --device cuda --skip grid`` (early exit over FLOP reduction,
   memory, the vanilla fast-path throughput at ResNet-32/110) into ``bench_cuda.json``.
4. ``train_speed``: training images/s of every registered method at ResNet-32 and ResNet-110,
   batch 128, with the fast path on (bf16 autocast, channels-last, one host sync per epoch) and
   off (float32, one sync per step), timed interleaved; early exit speed-up is in ``bench``.
5. ``logits``: CPU against CUDA logits of every registered method's deterministic modes on a
   fixed batch (ResNet-20, float32, TF32 off), within :data:`LOGIT_ATOL` + :data:`LOGIT_RTOL`
   x max|logit|.
6. ``memory``: ``pact-harness profile`` of every method at ResNet-32, batch 32, on the CPU
   (exact live-tensor tracker) and on CUDA (the allocator's peak), paired per mode and
   execution.
7. ``study``: a 4-trial study (two methods of paper-cifar x 2 seeds, ResNet-20, 1 epoch) at
   0.5 GPU per trial: through ``pact-harness grid`` (Ray Tune) when Ray is installed, else two
   trials at a time as plain processes on the one GPU, which the JSON says.
8. ``paper_epoch``: one epoch of each paper-cifar trial kind at ResNet-32 (each method at its
   middle penalty and the vanilla network), on the shortened data below, one after another.
9. ``estimate``: ``pact-harness grid --preset paper-cifar --dry-run --estimate --gpus 8
   --throughput throughput.json`` (the bench's rows plus ``train_speed``'s fast-path rows).

Data: the study and the epochs train on synthetic CIFAR-shaped data written here
(:data:`TRAIN_IMAGES` train and :data:`TEST_IMAGES` test images, each its class colour plus
noise), unless ``--data-root`` names a CIFAR-10 folder (then ``data.train_subset`` cuts it to
the same size). The machine has no network and CIFAR-10 does not fit in the carried 64 MiB.

Output, in ``--out`` (default ``$OUT``, else ``runs/gpu-check``): ``gpu_check.json`` (every
step: status, seconds, result or error), ``gpu_check.log`` (everything each step printed),
``bench_cuda.json``, ``throughput.json``; the summary table is printed last.

Usage: ``python -m tools.gpu_check [--out DIR] [--wheelhouse DIR] [--budget SECONDS]
[--skip STEP,...] [--data-root DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: The whole check's time (8 minutes on one H200).
BUDGET_S = 480.0
#: Kept for the last step (the estimate) when a step's box is clipped.
RESERVE_S = 20.0
#: Step name -> its time box in seconds, in the order they run.
STEPS = {
    "install": 90,
    "cuda_tests": 90,
    "bench": 150,
    "train_speed": 90,
    "logits": 45,
    "memory": 90,
    "study": 110,
    "paper_epoch": 120,
    "estimate": 30,
}
#: Packages the project imports: import name -> distribution name (in the wheelhouse or not).
NEEDED = {
    "fvcore": "fvcore",
    "iopath": "iopath",
    "yacs": "yacs",
    "termcolor": "termcolor",
    "yaml": "pyyaml",
    "scipy": "scipy",
    "tqdm": "tqdm",
    "tabulate": "tabulate",
    "jinja2": "jinja2",
    "pandas": "pandas",
    "seaborn": "seaborn",
}
SPEED_DEPTHS = (32, 110)
SPEED_BATCH = 128
SPEED_STEPS = 10
LOGIT_DEPTH = 20
LOGIT_BATCH = 8
#: CPU vs CUDA logits agree when max|a - b| <= LOGIT_ATOL + LOGIT_RTOL * max|a| (float32 both,
#: TF32 off; cuDNN's convolution algorithms sum in another order than the CPU's).
LOGIT_ATOL = 1e-3
LOGIT_RTOL = 1e-3
MEMORY_DEPTH = 32
MEMORY_BATCH = 32
#: The device the steps check ("cpu" only to rehearse them on a machine without CUDA).
DEVICE = "cuda"
TRAIN_IMAGES = 5120  # 40 steps of batch 128
TEST_IMAGES = 1024
STUDY_DEPTH = 20
EPOCH_DEPTH = 32
#: The target the project wants (docs/gpu.md): the SACT recipe's ResNet-32 on one H200.
TARGET_IMAGES_PER_S = 21000


# -- the parent: check CUDA, run the steps, write the JSON and the log ---------------------------


def cuda_device() -> str | None:
    """The first CUDA device's name, or None (torch is the only import before this)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def _run_boxed(command: list[str], seconds: float, log) -> tuple[int | None, str]:
    """Run ``command`` in its own process group for at most ``seconds``; its output goes to the
    log. Returns (exit status or None when it ran out of time, its last lines)."""
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=max(seconds, 1))
        status: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        status = None
    log.write(out or "")
    log.flush()
    return status, "\n".join((out or "").strip().splitlines()[-3:])


def step_command(name: str, work: Path, args: argparse.Namespace) -> list[str]:
    """How step ``name`` is run (a child of this module, or a ``pact-harness`` command)."""
    me = [sys.executable, "-m", "tools.gpu_check"]
    common = ["--work", str(work), "--wheelhouse", str(args.wheelhouse)]
    if args.data_root:
        common += ["--data-root", args.data_root]
    return [*me, "step", name, *common]


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The table printed last: one line per step, then the figures that matter most."""
    lines = [
        f"gpu-check on {record['device']} ({record['seconds']:.0f} s of {record['budget_s']:g})"
    ]
    lines.append(f"{'step':<12} {'status':<9} {'s':>6}  note")
    for name, step in record["steps"].items():
        note = step.get("note") or step.get("error") or ""
        lines.append(f"{name:<12} {step['status']:<9} {step['seconds']:6.1f}  {note[:90]}")
    return lines


def run_all(args: argparse.Namespace) -> int:
    """Every step in turn; the JSON after each (a killed check keeps what it had)."""
    started = time.monotonic()
    device = cuda_device()
    if device is None:
        import torch

        print(f"gpu-check: no CUDA device (torch {torch.__version__}); nothing checked, exit 0")
        return 0
    out = Path(args.out or os.environ.get("OUT") or ROOT / "runs" / "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work" if args.keep_work else Path(f"/tmp/pact-gpu-check-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "device": device,
        "budget_s": args.budget,
        "python": platform.python_version(),
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "out": str(out),
        "steps": {},
    }
    skip = set(args.skip or ())
    with open(out / "gpu_check.log", "w") as log:
        for name, box in STEPS.items():
            left = args.budget - (time.monotonic() - started)
            limit = min(box, left - (0 if name == "estimate" else RESERVE_S))
            if name in skip:
                record["steps"][name] = {"status": "skipped", "seconds": 0.0, "note": "--skip"}
                continue
            if limit < 5:
                record["steps"][name] = {
                    "status": "skipped",
                    "seconds": 0.0,
                    "note": f"out of time ({left:.0f} s left of --budget)",
                }
                continue
            print(f"gpu-check: {name} (at most {limit:.0f} s) ...", flush=True)
            log.write(f"\n=== {name} (at most {limit:.0f} s)\n")
            tic = time.monotonic()
            status, tail = _run_boxed(step_command(name, work, args), limit, log)
            step: dict[str, Any] = {"seconds": round(time.monotonic() - tic, 1)}
            result_file = work / f"{name}.json"
            if result_file.is_file():
                step["result"] = json.loads(result_file.read_text())
                step["note"] = step["result"].pop("note", "")
            if status is None:
                step.update(status="timeout", error=f"killed after {limit:.0f} s; {tail}")
            elif status != 0:
                step.update(status="failed", error=f"exit {status}: {tail}")
            else:
                step["status"] = "ok"
            record["steps"][name] = step
            record["seconds"] = round(time.monotonic() - started, 1)
            _write_json(out / "gpu_check.json", record)
            if name == "estimate" and "result" in step:
                print(step["result"].get("output", ""))
        for extra in ("bench_cuda.json", "throughput.json"):
            if (work / extra).is_file():
                (out / extra).write_text((work / extra).read_text())
        record["seconds"] = round(time.monotonic() - started, 1)
        _write_json(out / "gpu_check.json", record)
        lines = summary_lines(record)
        log.write("\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.log'}")
    return 0


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


# -- the steps (each runs in a child process: `python -m tools.gpu_check step NAME`) ------------


def _save(work: Path, name: str, result: dict[str, Any]) -> None:
    _write_json(work / f"{name}.json", result)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", *args]


def _call(command: list[str]) -> tuple[int, str]:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    print(done.stdout, end="")
    print(done.stderr, end="", file=sys.stderr)
    return done.returncode, done.stdout + done.stderr


def step_install(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import importlib.metadata
    import importlib.util

    missing = [dist for module, dist in NEEDED.items() if importlib.util.find_spec(module) is None]
    result: dict[str, Any] = {"missing_before": missing, "wheelhouse": str(args.wheelhouse)}
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--disable-pip-version-check"]
    if missing:
        rc, _ = _call([*pip, "--find-links", str(args.wheelhouse), *missing])
        result["wheelhouse_install_rc"] = rc
    try:
        importlib.metadata.distribution("pact-harness")
        result["project"] = "already installed"
    except importlib.metadata.PackageNotFoundError:
        rc, _ = _call(
            [
                *pip,
                "--no-deps",
                "--no-build-isolation",
                "-e",
                ".",
                "-e",
                "examples/aig_gates",
                "-e",
                "examples/blockdrop",
            ]
        )
        result["project"] = f"pip install -e . (exit {rc})"
    importlib.invalidate_caches()
    still = [dist for module, dist in NEEDED.items() if importlib.util.find_spec(module) is None]
    result["missing_after"] = still
    result["ray"] = importlib.util.find_spec("ray") is not None
    result["note"] = (
        f"installed {', '.join(missing) or 'nothing'}; missing {', '.join(still) or 'nothing'}; "
        f"Ray {'present' if result['ray'] else 'absent (study runs without it)'}"
    )
    if still:
        _save(work, "install", result)
        raise RuntimeError(f"still missing: {', '.join(still)}")
    return result


def step_cuda_tests(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    markers = (ROOT / "pyproject.toml").read_text()
    selection = ["-m", "cuda"] if '"cuda:' in markers else ["-k", "cuda"]
    rc, text = _call(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--continue-on-collection-errors",
            *selection,
        ]
    )
    last = text.strip().splitlines()[-1:] or [""]
    result = {"selection": " ".join(selection), "exit": rc, "note": last[0]}
    if rc not in (0, 5):  # 5: nothing selected
        raise RuntimeError(last[0])
    return result


def step_bench(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = work / "bench_cuda.json"
    rc, _ = _call(_cli("bench", "--device", DEVICE, "--skip", "grid", "--out", str(out)))
    if not out.is_file():
        raise RuntimeError(f"bench exit {rc}, no JSON")
    data = json.loads(out.read_text())
    ratios = data.get("ratios", {})
    fast = ratios.get("train_images_per_s_resnet32")
    note = "bench JSON written"
    if fast is not None:
        verdict = "met" if fast >= TARGET_IMAGES_PER_S else "NOT met"
        note = f"vanilla ResNet-32 {fast:,.0f} img/s (target {TARGET_IMAGES_PER_S:,}: {verdict})"
    return {"exit": rc, "ratios": ratios, "skipped": data.get("skipped", {}), "note": note}


def step_train_speed(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from harness.bench.measure import harness_loop, synthetic_batches, throughput_row
    from harness.config import SpeedConfig
    from harness.costs.timing import time_interleaved
    from harness.models import create_model
    from harness.registry import list_methods
    from harness.speed import resolve_speed

    device = torch.device(DEVICE)
    paths = {
        "fast": (SpeedConfig(), True),  # bf16 autocast, channels-last, one sync per epoch
        "plain": (SpeedConfig(device_data="off", amp="off", host_sync="step"), False),
    }
    rows, throughput, failures = [], [], {}
    for depth in SPEED_DEPTHS:
        batches = {
            cl: synthetic_batches(SPEED_STEPS, SPEED_BATCH, device, cl) for cl in (True, False)
        }
        for method in list_methods():
            try:
                runs = {}
                for path, (cfg, cl) in paths.items():
                    torch.manual_seed(0)
                    model = create_model(method, depth=depth).to(device)
                    if cl:
                        model.to(memory_format=torch.channels_last)
                    runs[path] = harness_loop(
                        model, batches[cl], device, resolve_speed(cfg, device)
                    )
                times = time_interleaved(runs, device, 1, 3)
            except Exception as err:  # noqa: BLE001 - one method must not lose the others
                failures[f"{method}/{depth}"] = f"{type(err).__name__}: {err}"
                continue
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            per_s = {p: SPEED_STEPS * SPEED_BATCH / t.seconds_per_batch for p, t in times.items()}
            rows.append(
                {
                    "method": method,
                    "depth": depth,
                    "batch_size": SPEED_BATCH,
                    "fast_images_per_s": per_s["fast"],
                    "plain_images_per_s": per_s["plain"],
                    "fast_over_plain": per_s["fast"] / per_s["plain"],
                }
            )
            step_s = SPEED_BATCH / per_s["fast"]
            throughput.append(throughput_row(method, depth, device, SPEED_BATCH, step_s))
    best = max(
        (r for r in rows if r["depth"] == 32), key=lambda r: r["fast_images_per_s"], default=None
    )
    note = f"{len(rows)} rows, {len(failures)} failed"
    if best:
        note += f"; best at ResNet-32: {best['method']} {best['fast_images_per_s']:,.0f} img/s"
    return {"rows": rows, "throughput": throughput, "failures": failures, "note": note}


def step_logits(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import copy

    import torch

    from harness.bench.measure import varied_images
    from harness.contract import EvalSpec
    from harness.models import create_model
    from harness.registry import list_methods

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    images = varied_images(LOGIT_BATCH, seed=7)
    rows, bad = [], []
    for method in list_methods():
        torch.manual_seed(0)
        cpu_model = create_model(method, depth=LOGIT_DEPTH).eval()
        gpu_model = copy.deepcopy(cpu_model).to(DEVICE).eval()
        for mode in cpu_model.eval_modes:
            if mode in cpu_model.random_modes:
                rows.append({"method": method, "mode": mode, "skipped": "random mode"})
                continue
            spec = EvalSpec(mode=mode)
            with torch.no_grad():
                a = cpu_model(images, spec)
                b = gpu_model(images.to(DEVICE), spec)
            diff = float((a.logits - b.logits.float().cpu()).abs().max())
            bound = LOGIT_ATOL + LOGIT_RTOL * float(a.logits.abs().max())
            same_units = [
                bool((x.cpu() == y.cpu()).all())
                for x, y in zip(a.units_ran or [], b.units_ran or [], strict=True)
            ]
            ok = diff <= bound
            rows.append(
                {
                    "method": method,
                    "mode": mode,
                    "max_abs_diff": diff,
                    "bound": bound,
                    "same_units_ran": all(same_units),
                    "ok": ok,
                }
            )
            if not ok:
                bad.append(f"{method}/{mode} {diff:.2e} > {bound:.2e}")
    result = {
        "tolerance": f"max|cpu - cuda| <= {LOGIT_ATOL:g} + {LOGIT_RTOL:g} * max|cpu logit|",
        "depth": LOGIT_DEPTH,
        "batch": LOGIT_BATCH,
        "rows": rows,
        "note": f"{sum(1 for r in rows if r.get('ok'))} within tolerance"
        + (f"; outside: {'; '.join(bad)}" if bad else ""),
    }
    if bad:
        _save(work, "logits", result)
        raise RuntimeError(f"{len(bad)} outside the tolerance")
    return result


def step_memory(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from harness.registry import list_methods

    methods = ",".join(list_methods())
    rows: dict[str, list[dict[str, Any]]] = {}
    for device in ("cpu", DEVICE):
        path = work / f"profile_{device}.json"
        flags = [
            "--depth",
            str(MEMORY_DEPTH),
            "--batch-sizes",
            str(MEMORY_BATCH),
            "--device",
            device,
        ]
        flags += ["--seed", "0"]
        flags += ["--warmup", "1", "--repeats", "1", "--out", str(path)]
        rc, _ = _call(_cli("profile", "--method", methods, *flags))
        if not path.is_file():
            raise RuntimeError(f"profile --device {device}: exit {rc}, no rows")
        rows[device] = json.loads(path.read_text())

    def key(row: dict[str, Any]) -> tuple:
        return (row["method"], row["eval_mode"], row["execution"], row.get("threshold"))

    cuda = {key(r): r for r in rows[DEVICE]}
    paired = []
    for row in rows["cpu"]:
        other = cuda.get(key(row))
        if other is None:
            continue
        paired.append(
            {
                "method": row["method"],
                "mode": row["eval_mode"],
                "execution": row["execution"],
                "cpu_exact_activation_bytes": row["activation_peak_bytes"],
                "cuda_allocator_activation_bytes": other["activation_peak_bytes"],
                "cuda_over_cpu": other["activation_peak_bytes"]
                / max(row["activation_peak_bytes"], 1),
            }
        )
    return {
        "depth": MEMORY_DEPTH,
        "batch": MEMORY_BATCH,
        "rows": paired,
        "note": f"{len(paired)} modes paired",
    }


def write_data(root: Path, n_train: int = TRAIN_IMAGES, n_test: int = TEST_IMAGES) -> Path:
    """CIFAR-shaped npz data (``train.npz``, ``test.npz``): each image its class colour plus
    noise, so that a short training learns something."""
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    colours = np.random.default_rng(0).integers(40, 216, (10, 3))
    for name, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        if (root / f"{name}.npz").is_file():
            continue
        rng = np.random.default_rng(seed)
        labels = np.arange(n) % 10
        noisy = colours[labels][:, None, None, :] + rng.normal(0, 40, (n, 32, 32, 3))
        images = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        np.savez(root / f"{name}.npz", images=images, labels=labels.astype(np.int64))
    return root


def _data(work: Path, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The data root and the base-config keys that shorten it."""
    if args.data_root:
        return args.data_root, {"train_subset": TRAIN_IMAGES, "test_subset": TEST_IMAGES}
    return str(write_data(work / "data")), {}


def _one_penalty(tree: dict[str, Any]) -> dict[str, Any]:
    """Each method of a preset at the middle value of each of its swept keys."""
    methods = {}
    for method, keys in (tree.get("methods") or {}).items():
        keys = keys or {}
        methods[method] = {
            k: [v[len(v) // 2]] if isinstance(v, list) else v for k, v in keys.items()
        }
    return methods


def _short_preset(
    work: Path,
    name: str,
    depth: int,
    seeds: list[int],
    n_methods: int | None,
    vanilla: bool,
    data_keys: dict[str, Any],
) -> Path:
    import yaml

    from harness.presets import load_preset_tree

    tree, _ = load_preset_tree("paper-cifar")
    methods = _one_penalty(tree)
    if n_methods is not None:
        methods = dict(list(methods.items())[:n_methods])
    base = dict(tree.get("base") or {})
    base["optim"] = {**(base.get("optim") or {}), "epochs": 1}
    base["eval"] = {**(base.get("eval") or {}), "repeats": 1}
    base["data"] = {**(base.get("data") or {}), **data_keys}
    short = {
        **tree,
        "name": name,
        "description": f"gpu-check: paper-cifar cut to {name}",
        "base": base,
        "methods": methods,
        "depths": [depth],
        "seeds": seeds,
        "vanilla_depths": [depth] if vanilla else [],
        "comparisons": [],
    }
    if not vanilla:
        short.pop("vanilla_method", None)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(short, sort_keys=False))
    return path


def step_study(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import importlib.util

    from harness.study import GridOptions, plan_study

    root, keys = _data(work, args)
    preset = _short_preset(work, "gpu-check-study", STUDY_DEPTH, [0, 1], 2, False, keys)
    folder = work / "study"
    study = plan_study(GridOptions(preset=str(preset), out=str(folder), data_root=root))
    names = [t.name for t in study.trials]
    result: dict[str, Any] = {
        "trials": names,
        "gpu_per_trial": study.preset.resources.get("gpu"),
        "data": root,
    }
    if importlib.util.find_spec("ray") is not None:
        tic = time.monotonic()
        rc, _ = _call(
            _cli("grid", "--preset", str(preset), "--data-root", root, "--out", str(folder))
        )
        result.update(runner="ray", exit=rc, seconds=time.monotonic() - tic)
        trials_csv = folder / "trials.csv"
        result["trials_csv"] = trials_csv.read_text() if trials_csv.is_file() else None
        result["note"] = f"Ray Tune, 4 trials at 0.5 GPU: exit {rc}"
        if rc != 0:
            raise RuntimeError(f"grid exit {rc}")
        return result
    # No Ray: the same trials two at a time on the one GPU, each a plain process.
    runs = []
    for pair in (names[:2], names[2:]):
        procs = []
        for name in pair:
            command = [sys.executable, "-m", "tools.gpu_check", "trial", "--preset", str(preset)]
            command += ["--study", str(folder), "--data-root", root, "--name", name]
            procs.append((name, time.monotonic(), subprocess.Popen(command, cwd=ROOT)))
        for name, tic, proc in procs:
            rc = proc.wait()
            runs.append({"trial": name, "exit": rc, "seconds": time.monotonic() - tic})
    failed = [r["trial"] for r in runs if r["exit"] != 0]
    result.update(
        runner="plain processes, two at a time on one GPU (Ray absent)",
        runs=runs,
        note=f"Ray absent: 4 trials as 2 x 2 concurrent processes on one GPU, {len(failed)} failed",
    )
    if failed:
        raise RuntimeError(f"failed: {', '.join(failed)}")
    return result


def run_one_trial(args: argparse.Namespace) -> int:
    """One planned trial of a study, in this process (the study step without Ray)."""
    from harness.study import GridOptions, plan_study
    from harness.train import run_trial

    options = GridOptions(preset=args.preset, out=args.study, data_root=args.data_root)
    study = plan_study(options)
    trial = next(t for t in study.trials if t.name == args.name)
    run_trial(trial.run_config, study.run_dir(trial), init_from=trial.init_from)
    return 0


def step_paper_epoch(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from harness.study import GridOptions, plan_study
    from harness.train import run_trial

    root, keys = _data(work, args)
    preset = _short_preset(work, "gpu-check-epoch", EPOCH_DEPTH, [0], None, True, keys)
    study = plan_study(GridOptions(preset=str(preset), out=str(work / "epoch"), data_root=root))
    rows, failures = [], {}
    for trial in study.trials:
        tic = time.monotonic()
        try:
            run_trial(trial.run_config, study.run_dir(trial), init_from=trial.init_from)
        except Exception as err:  # noqa: BLE001 - one trial must not lose the others
            failures[trial.name] = f"{type(err).__name__}: {err}"
            continue
        summary = json.loads((Path(study.run_dir(trial)) / "summary.json").read_text())
        rows.append(
            {
                "trial": trial.name,
                "seconds": time.monotonic() - tic,
                "train_seconds": summary.get("train_seconds"),
                "test_accuracy": summary.get("test_accuracy"),
                "train_images_per_s": TRAIN_IMAGES / summary["train_seconds"]
                if summary.get("train_seconds")
                else None,
            }
        )
    data = args.data_root or f"synthetic {TRAIN_IMAGES} train / {TEST_IMAGES} test images"
    result = {
        "data": data,
        "rows": rows,
        "failures": failures,
        "note": f"{len(rows)} trials of 1 epoch at ResNet-{EPOCH_DEPTH}, {len(failures)} failed",
    }
    if failures:
        _save(work, "paper_epoch", result)
        raise RuntimeError(f"failed: {', '.join(failures)}")
    return result


def step_estimate(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    bench = work / "bench_cuda.json"
    if bench.is_file():
        rows += json.loads(bench.read_text()).get("throughput", [])
    speed = work / "train_speed.json"
    if speed.is_file():
        rows += json.loads(speed.read_text()).get("throughput", [])
    # The estimate counts the full CIFAR-10 (50,000 + 10,000 images) whatever the files hold;
    # the dry run only checks that the data root has a known layout.
    root, _ = _data(work, args)
    command = ["grid", "--preset", "paper-cifar", "--dry-run", "--estimate", "--gpus", "8"]
    command += ["--data-root", root]
    if rows:
        path = work / "throughput.json"
        _write_json(
            path, {"source": "gpu-check: bench --device cuda + train_speed", "throughput": rows}
        )
        command += ["--throughput", str(path)]
    rc, text = _call(_cli(*command))
    if rc != 0:
        raise RuntimeError(f"exit {rc}")
    note = "measured throughput" if rows else "no measured rows: the documented defaults"
    return {"command": "pact-harness " + " ".join(command), "output": text, "note": note}


STEP_FUNCTIONS = {
    "install": step_install,
    "cuda_tests": step_cuda_tests,
    "bench": step_bench,
    "train_speed": step_train_speed,
    "logits": step_logits,
    "memory": step_memory,
    "study": step_study,
    "paper_epoch": step_paper_epoch,
    "estimate": step_estimate,
}


def run_step(args: argparse.Namespace) -> int:
    work = Path(args.work)
    result = STEP_FUNCTIONS[args.name](work, args)
    _save(work, args.name, result)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__)
    parser.add_argument("--out", help="output folder (default $OUT, else runs/gpu-check)")
    parser.add_argument("--wheelhouse", default=str(ROOT / "wheelhouse"))
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all steps")
    parser.add_argument("--skip", type=lambda s: s.split(","), help=f"of: {', '.join(STEPS)}")
    parser.add_argument("--data-root", help="CIFAR-10 (npz) instead of synthetic data")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder in --out")
    sub = parser.add_subparsers(dest="command")
    step = sub.add_parser("step", help=argparse.SUPPRESS)
    step.add_argument("name", choices=list(STEPS))
    step.add_argument("--work", required=True)
    step.add_argument("--wheelhouse", default=str(ROOT / "wheelhouse"))
    step.add_argument("--data-root")
    trial = sub.add_parser("trial", help=argparse.SUPPRESS)
    for flag in ("--preset", "--study", "--data-root", "--name"):
        trial.add_argument(flag, required=True)
    args = parser.parse_args(argv)
    if args.command == "step":
        return run_step(args)
    if args.command == "trial":
        return run_one_trial(args)
    unknown = sorted(set(args.skip or ()) - set(STEPS))
    if unknown:
        print(f"error: --skip {','.join(unknown)}: unknown; steps: {', '.join(STEPS)}")
        return 2
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
