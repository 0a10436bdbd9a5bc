"""The study grid on Ray Tune: ``pact-harness grid --preset NAME``.

:mod:`harness.study` plans, checks and records a study (its folder layout, its tables, the
outcome) without Ray; this module runs the trials on Ray Tune: the trial trainable, the Ray
session and cluster checks, the progress callback, the launch and the driver
(:func:`run_grid`); ``harness.cli.grid`` is its command line. Nothing here prints: a running
grid says what happens through an ``emit`` callback (default: this module's logger; the command
line passes ``print``), and the dry run and the outcome are lines the command line prints.

Fault tolerance has two layers. Within a launch, every epoch ends with ``tune.report`` and a
Tune checkpoint of the run directory; a failed trial is retried ``max_failures`` times
(``FailureConfig``) and first copies its last Tune checkpoint back into the run directory if
that one is older or missing (a trial retried on a node that lost it). Across launches,
``--resume`` starts a new Tune experiment over the trials without a finished run directory;
unfinished ones continue from their last epoch checkpoint. The run directory is the source of
truth, so a study resumes even after the driver was killed before Tune saved any state, and it
may resume with other resources or on another cluster. A launch that stops early (its cluster
went away: :class:`ClusterWatch`; a write failed for lack of space, a trial's or the driver's:
:func:`harness.study.write_fault`; SIGINT or SIGTERM) marks its running trials ``interrupted``
and its outcome says how to resume. Ray itself (the session, joining a cluster with its head's
authentication mode, the capacity check, the watch on the head) is :mod:`harness.cluster`.

With :mod:`harness.cluster` the only modules that import ray; lazily, so the CLI stays fast and
``--dry-run`` needs no Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from harness import store
from harness.cluster import (
    ClusterLost,
    ClusterWatch,
    check_cluster,
    cluster_gone,
    gcs_address,
    last_line,
    live_nodes,
    ray_session,
)
from harness.config import SAFE_DUMPER
from harness.errors import CheckpointError, ConfigError, DivergenceError, HarnessError
from harness.estimate import (
    Machine,
    cluster_machine,
    concurrency,
    concurrency_text,
    estimate_study,
    format_estimate,
    gpu_machine,
    launch_order,
    local_machine,
    machine_text,
)
from harness.presets import Trial
from harness.study import (
    CLUSTER_LOST_STATUS,
    RAY_DIR,
    STUDY_FILE,
    TRIALS_DIR,
    GridOptions,
    GridOutcome,
    Study,
    TrialsTable,
    check_downloaded_data,
    check_study_folder,
    checkpoint_epoch,
    conclude_study,
    fetch_data,
    outcome_lines,
    plan_lines,
    plan_study,
    restore_run_dir,
    stop_line,
    study_lock,
    study_record,
    trial_write_fault,
    write_fault,
)
from harness.train import run_trial

log = logging.getLogger(__name__)
#: A receiver of the lines a running grid says, one at a time (default ``log.info``; the
#: command line prints them).
Emit = Callable[[str], None]


# ------------------------------------------------------------------------------------ the trial


def _scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def grid_trial(
    config: dict[str, Any],
    trials: Mapping[str, Trial],
    study_dir: str,
    threads: int,
    argv: list[str],
) -> None:
    """The Tune function trainable: one trial, reporting every epoch with a checkpoint."""
    import ray
    from ray import tune

    trial = trials[config["trial"]]
    run_dir = Path(study_dir) / TRIALS_DIR / trial.name
    torch.set_num_threads(threads)  # Ray's cap follows the CPUs asked for; make it explicit
    restored = False
    tune_checkpoint = tune.get_checkpoint()
    if tune_checkpoint is not None:
        with tune_checkpoint.as_directory() as source:
            restored = restore_run_dir(Path(source), run_dir)
    start_epoch = checkpoint_epoch(run_dir)

    placement = trial_placement(trial.config["device"])
    where = {k: placement[k] for k in ("gpu_ids", "device")}

    def report_epoch(epoch: int, metrics: dict[str, Any], folder: Path) -> None:
        if epoch == start_epoch + 1:  # the provenance (and so the Tune checkpoint) says where
            record_placement(folder, placement)
        # The run directory holds exactly the checkpointed files until evaluation starts.
        checkpoint = tune.Checkpoint.from_directory(folder)
        tune.report({**_scalars(metrics), **where}, checkpoint=checkpoint)

    tic = time.monotonic()
    final: dict[str, Any] = {
        "node_id": ray.get_runtime_context().get_node_id(),
        **where,
        "start_epoch": start_epoch,
        "restored_from_tune": int(restored),
    }
    try:
        if "error" in placement:
            raise ConfigError(placement["error"])
        summary = run_trial(
            trial.run_config,
            run_dir,
            init_from=trial.init_from,
            argv=argv,
            on_epoch_end=report_epoch,
        )
    except DivergenceError:
        raise  # a failure of training, not of input: Tune retries it from the last checkpoint
    except HarnessError as err:
        # Bad input fails the same way on every retry: report it once, do not retry.
        tune.report({**final, "harness_error": f"{type(err).__name__}: {err}"})
        return
    final["attempt_seconds"] = time.monotonic() - tic
    record_placement(run_dir, {**placement, "ended_unix": time.time()})
    tune.report({**final, **_scalars(summary), "trial_finished": 1})


def trial_placement(device: str) -> dict[str, Any]:
    """Where Ray put this trial: node, the GPUs it was given (``ray.get_gpu_ids()``, which Ray
    also exports as ``CUDA_VISIBLE_DEVICES``) and the device it will train on.

    A trial given a GPU on a node where torch sees no CUDA device (a node declaring GPUs it
    cannot drive, or a CPU-only torch) trains on the CPU with ``device=auto``, saying so in
    ``note``; with ``device=cuda`` the entry carries an ``error`` instead (one line).
    """
    import ray

    ids = ",".join(str(i) for i in ray.get_gpu_ids())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    cuda = device != "cpu" and torch.cuda.is_available()
    placement: dict[str, Any] = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "hostname": socket.gethostname(),
        "gpu_ids": ids,
        "cuda_visible_devices": visible,
        "device": "cuda" if cuda else "cpu",
        "started_unix": time.time(),
    }
    if ids and not torch.cuda.is_available():
        why = (
            f"Ray gave this trial GPU {ids} on {placement['hostname']} "
            f"(CUDA_VISIBLE_DEVICES={visible}) but torch sees no CUDA device there"
        )
        if device == "cuda":
            placement["error"] = f"device=cuda but {why}; use device=auto to train on its CPU"
            placement["device"] = ""  # it trains nowhere
        else:
            placement["note"] = f"{why}: device={device} trains on the CPU"
    return placement


def record_placement(run_dir: Path, placement: Mapping[str, Any]) -> None:
    """Add this attempt's placement to the run's ``provenance.json``: ``placements`` (one
    entry per attempt, the same attempt replaced) and ``gpu_ids`` (the latest attempt's)."""
    path = Path(run_dir) / store.PROVENANCE_FILE
    entry = {k: v for k, v in placement.items() if k != "error"}
    try:
        attempts = store.read_json(path).get("placements") or []
        attempts = [a for a in attempts if a.get("started_unix") != entry["started_unix"]]
        store.update_json(path, {"placements": [*attempts, entry], "gpu_ids": entry["gpu_ids"]})
    except (OSError, HarnessError) as err:  # the trial goes on; provenance says what it lacks
        log.warning("provenance: cannot record the placement: %s", err)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _error_text(trial) -> str:
    """The exception that ended a Tune trial's attempt, from its error file."""
    try:
        return last_line(Path(trial.error_file).read_text())
    except (OSError, TypeError):
        return "failed (no error file)"


def _best_accuracy(study: Study, names: list[str]) -> tuple[float, str] | None:
    """(test accuracy, trial) of the best finished trial among ``names``."""
    best = None
    for name in names:
        try:
            summary = store.read_json(study.run_dir(name) / store.SUMMARY_FILE)
        except CheckpointError:
            continue  # the trials table reports it
        accuracy = summary.get("test_accuracy")
        if accuracy is not None and (best is None or accuracy > best[0]):
            best = (float(accuracy), name)
    return best


def make_progress_callback(
    total: int,
    done_before: int = 0,
    best: tuple[float, str] | None = None,
    heartbeat_s: float = 300.0,
    on_change: Callable[[str, dict[str, Any]], None] | None = None,
    emit: Emit = log.info,
    on_write_fault: Callable[[str, str], None] | None = None,
    folder: Path | None = None,
):
    """A Tune callback emitting one line per trial state change (started, finished, retrying,
    failed) with the study's counts and the best accuracy so far, plus a line listing the
    running trials' epochs every ``heartbeat_s``. ``.records`` keeps per trial its status,
    Ray node, failures and error for ``trials.csv``; ``on_change(name, record)`` is called
    after every change of state of a trial, with all the launch learnt about it (the driver's
    :class:`~harness.study.TrialsTable` logs it at once, so a killed driver loses nothing of
    the trials that ended before, and rewrites ``trials.csv`` at most every 30 s).
    ``on_write_fault(name, cause)`` is called when a trial failed (or is retried) because a
    write failed (:func:`harness.study.trial_write_fault`: a full disk; ``folder``, the
    study folder, is where the space left is looked up)."""
    from ray import tune

    class GridProgress(tune.Callback):
        def __init__(self) -> None:
            self.records: dict[str, dict[str, Any]] = {}
            self.running: set[str] = set()
            self.epochs: dict[str, int] = {}
            self.started_at: dict[str, float] = {}  # each trial's latest start (monotonic)
            self.done, self.failed = done_before, 0
            self.best = best
            self.started = self.last_line = time.monotonic()
            #: The first trial write that failed for lack of space (the launch then stops).
            self.fault: str | None = None

        def _fault(self, name: str) -> None:
            cause = trial_write_fault(str(self.records[name].get("error", "")), folder)
            if cause is not None and self.fault is None:
                self.fault = f"trial {name}: {cause}"
                if on_write_fault is not None:
                    on_write_fault(name, cause)

        def _changed(self, name: str) -> None:
            if on_change is None:
                return
            try:
                on_change(name, self.records[name])
            except (OSError, HarnessError) as err:  # the study goes on; the end rewrites it
                log.warning("cannot update the trials table: %s", err)

        def _line(self, text: str) -> None:
            now = time.monotonic()
            self.last_line = now
            best = f" | best acc {self.best[0]:.3f} ({self.best[1]})" if self.best else ""
            counts = f"done {self.done}/{total} running {len(self.running)} failed {self.failed}"
            emit(f"[{_clock(now - self.started)}] {counts} | {text}{best}")

        def _record(self, trial) -> dict[str, Any]:
            return self.records.setdefault(trial.config["trial"], {})

        def on_trial_start(self, iteration, trials, trial, **info):
            name = trial.config["trial"]
            self.started_at[name] = time.monotonic()
            self.running.add(name)
            self._record(trial)["status"] = "running"
            retry = f" (attempt {trial.num_failures + 1})" if trial.num_failures else ""
            self._line(f"started  {name}{retry}")
            self._changed(name)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            record = self._record(trial)
            if "epoch" in result:
                self.epochs[trial.config["trial"]] = int(result["epoch"])
            keys = ("node_id", "gpu_ids", "device", "harness_error", "test_accuracy")
            for key in (*keys, "flops_per_image_mean"):
                if key in result:
                    record[key] = result[key]

        def on_trial_complete(self, iteration, trials, trial, **info):
            name = trial.config["trial"]
            self.running.discard(name)
            known = self.records.get(name, {})
            if self.fault is not None and not {"test_accuracy", "harness_error"} & set(known):
                return  # stopped with the launch: a running one is marked interrupted at the end
            record = self._record(trial)
            record["failures"] = trial.num_failures
            if "test_accuracy" not in record:  # returned without results: bad input
                self.failed += 1
                record.update(status="failed", error=record.get("harness_error", "no results"))
                self._line(f"FAILED   {name}: {record['error']}")
                self._changed(name)
                self._fault(name)
                return
            self.done += 1
            record["status"] = "finished"
            if name in self.started_at:
                record["seconds"] = round(time.monotonic() - self.started_at[name], 2)
            accuracy = float(record["test_accuracy"])
            if self.best is None or accuracy > self.best[0]:
                self.best = (accuracy, name)
            flops = record.get("flops_per_image_mean")
            cost = f", {flops:.3g} FLOPs/image" if isinstance(flops, (int, float)) else ""
            self._line(f"finished {name}: acc {accuracy:.3f}{cost}")
            self._changed(name)

        def on_trial_recover(self, iteration, trials, trial, **info):
            name = trial.config["trial"]
            self.running.discard(name)
            record = self._record(trial)
            record.update(failures=trial.num_failures, error=_error_text(trial))
            self._line(f"retrying {name} from its last checkpoint: {record['error']}")
            self._changed(name)
            self._fault(name)

        def on_trial_error(self, iteration, trials, trial, **info):
            name = trial.config["trial"]
            self.running.discard(name)
            self.failed += 1
            record = self._record(trial)
            record.update(status="failed", failures=trial.num_failures, error=_error_text(trial))
            self._line(f"FAILED   {name}: {record['error']}")
            self._changed(name)
            self._fault(name)

        def on_step_end(self, iteration, trials, **info):
            if self.running and time.monotonic() - self.last_line >= heartbeat_s:
                shown = [f"{n} (epoch {self.epochs.get(n, 0)})" for n in sorted(self.running)]
                self._line("running " + ", ".join(shown[:4]) + (" ..." if len(shown) > 4 else ""))

    return GridProgress()


def _trial_name(trial) -> str:
    return trial.config["trial"]


def _launch_name(folder: Path) -> str:
    existing = sorted((folder / RAY_DIR).glob("launch-*")) if (folder / RAY_DIR).is_dir() else []
    return f"launch-{len(existing) + 1:03d}"


def launch(
    study: Study,
    names: list[str],
    finished: list[str],
    argv: list[str],
    emit: Emit = log.info,
    records: dict[str, dict[str, Any]] | None = None,
    watch: ClusterWatch | None = None,
    stop: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the trials ``names`` as one Tune experiment; returns what it learnt per trial
    (status, node, failures, error), filling ``records`` as it goes (the caller keeps what a
    launch that stopped early learnt). ``finished`` (trials done before) sets the progress
    counts; ``argv`` is the command line recorded in each run's provenance; ``emit`` gets the
    progress lines; ``watch`` watches the cluster while Tune runs. Raises :class:`ClusterLost`
    when the cluster's head stopped answering. A trial that fails (or is retried) because a
    write failed for lack of space stops every trial (a full disk fails them all), and
    ``stop["disk"]`` says which trial and why."""
    from ray import tune

    preset = study.preset
    resources = dict(preset.resources)
    trainable = tune.with_parameters(
        grid_trial,
        trials={t.name: t for t in study.trials},
        study_dir=str(study.folder),
        threads=max(1, int(resources["cpu"])),
        argv=argv,
    )
    table = TrialsTable(study, records)
    table.write()
    stop = {} if stop is None else stop
    progress = make_progress_callback(
        len(study.trials),
        len(finished),
        _best_accuracy(study, finished),
        on_change=table.changed,
        emit=emit,
        on_write_fault=lambda name, cause: stop.setdefault("disk", f"trial {name}: {cause}"),
        folder=study.folder,
    )

    class StopOnWriteFault(tune.Stopper):
        def __call__(self, trial_id: str, result: dict) -> bool:
            return False

        def stop_all(self) -> bool:
            return progress.fault is not None

    if records is not None:
        progress.records = records
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={"trial": tune.grid_search(names)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=preset.max_concurrent,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=_launch_name(study.folder),
            storage_path=str(study.folder / RAY_DIR),
            verbose=0,
            callbacks=[progress],
            stop=StopOnWriteFault(),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=preset.max_failures),
        ),
    )
    try:
        with watch or contextlib.nullcontext():
            results = tuner.fit()
    except Exception as err:
        gone = watch.lost or cluster_gone(watch.gcs) if watch else None
        if gone is None:
            raise
        raise ClusterLost(f"{gone}; Ray said: {last_line(str(err))}") from err
    if watch is not None and watch.lost:
        raise ClusterLost(watch.lost)
    # fit() returns normally when trials fail: take the failures from the ResultGrid too.
    records = progress.records
    for result in results:
        if result.error is not None:
            name = (result.config or {}).get("trial") or Path(result.path).name  # no config:
            record = records.setdefault(name, {})  # the trial never ran
            record["status"] = "failed"
            record.setdefault("error", last_line(str(result.error)))
    on_cpu = sorted(n for n, r in records.items() if r.get("gpu_ids") and r.get("device") == "cpu")
    if on_cpu:
        emit(
            f"note: {len(on_cpu)} trial(s) were given a GPU by Ray but trained on the CPU "
            f"(device=auto, no CUDA device on their node): {', '.join(on_cpu[:3])}"
            + (" ..." if len(on_cpu) > 3 else "")
        )
    return records


@contextlib.contextmanager
def sigterm_stops_the_launch(stop: dict[str, str]) -> Iterator[None]:
    """SIGTERM ends the study like Ctrl+C: Tune stops its trials after their current step and
    ``fit()`` returns (a second signal raises KeyboardInterrupt), instead of Ray's own handler
    printing a C++ stack dump and killing the driver. Install it after ``ray.init`` (which
    installs Ray's); ``stop["signal"]`` says which signal came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        stop.setdefault("signal", "SIGTERM")
        handler = signal.getsignal(signal.SIGINT)  # Tune's while fit() runs
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------- driver


def dry_run_machine(options: GridOptions) -> Machine:
    """The machine ``--dry-run`` sizes the study for: ``--gpus N [--cpus M]``, else the Ray
    cluster at ``--address`` (its live nodes, read through a short connection), else this
    machine as a local Ray would see it (no Ray started)."""
    if options.gpus is not None:
        if options.address:
            raise ConfigError("--gpus describes a machine of its own: drop --address, or --gpus")
        return gpu_machine(options.gpus, options.cpus)
    if options.cpus is not None:
        raise ConfigError("--cpus goes with --gpus N (a machine to size the study for)")
    if options.address:
        with ray_session(options.address, options.verbose):
            return cluster_machine(live_nodes(), options.address)
    return local_machine(probe=options.estimate)


def capacity_lines(study: Study, options: GridOptions, finished: list[str]) -> list[str]:
    """``--dry-run``: how many trials run at once on the machine, and with ``--estimate`` the
    GPU-/CPU-hours, wall time, critical path and disk (:mod:`harness.estimate`) of the trials
    still to run (``finished``: those the study folder already holds)."""
    machine = dry_run_machine(options)
    preset = study.preset
    if options.estimate:
        todo = [t for t in study.trials if t.name not in finished]
        lines = []
        if finished:
            lines.append(
                f"  {len(finished)} of {len(study.trials)} trials finished before in "
                f"{study.folder}: the estimate covers the {len(todo)} still to run (--resume)"
            )
        if not todo:
            return [*lines, "  nothing to estimate: every trial of the study is finished"]
        estimate = estimate_study(preset, todo, machine, options.throughput)
        return lines + format_estimate(estimate)
    found = concurrency(preset.resources, machine, preset.max_concurrent)
    return [f"  on {machine_text(machine)}: {concurrency_text(found)}"]


def dry_run_lines(options: GridOptions) -> Iterator[str]:
    """``--dry-run``: the planned study, one line per trial, then what it takes on the machine
    (:func:`capacity_lines`). Lazily: the plan comes before the machine is read (a short probe,
    or a connection to ``--address``), so a caller printing each line shows it at once."""
    study = plan_study(options)
    finished = study.finished() if (study.folder / STUDY_FILE).is_file() else []
    yield from plan_lines(study, finished)
    yield from capacity_lines(study, options, finished)


def _emit_all(lines: Iterable[str], emit: Emit) -> None:
    for line in lines:
        emit(line)


def _exit_lost(emit: Emit) -> Callable[[GridOutcome], None]:
    def end(outcome: GridOutcome) -> None:
        for line in [*outcome_lines(outcome), stop_line(outcome) or ""]:
            emit(line)
        logging.shutdown()
        os._exit(CLUSTER_LOST_STATUS)

    return end


def run_grid(
    options: GridOptions,
    emit: Emit = log.info,
    on_abandon: Callable[[GridOutcome], None] | None = None,
) -> GridOutcome | None:
    """Plan, check and run a study; returns what happened (None for ``--dry-run``, whose lines
    go to ``emit``; :func:`harness.study.outcome_lines` says what happened).

    Every check (preset, trials, data, folder, Ray address and resources) passes before the
    study folder is written. ``emit`` gets the lines of a running study (its start, each
    trial's progress); default: this module's logger at INFO.
    """
    if options.dry_run:
        _emit_all(dry_run_lines(options), emit)
        return None
    study = plan_study(options)
    held = check_study_folder(study, options.resume)
    if study.download:
        fetch_data(study, emit)
        check_downloaded_data(study, held)
    tic = time.monotonic()
    finished = study.finished()
    todo = [t for t in study.trials if t.name not in finished]
    todo_names = launch_order(study.preset, todo)  # longest first, as --estimate schedules
    records: dict[str, dict[str, Any]] = {}
    stop: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if todo:
            where = stack.enter_context(ray_session(options.address, options.verbose))
            stack.enter_context(sigterm_stops_the_launch(stop))
            cluster = check_cluster(study.preset.resources)
        stack.enter_context(study_lock(study.folder))
        if held != "same":  # a new study, or the stored one grown by the added trials
            record = yaml.dump(study_record(study), Dumper=SAFE_DUMPER, sort_keys=False)
            store.atomic_write_text(study.folder / STUDY_FILE, record)
        if held == "grown":
            emit(
                f"study {study.preset.name}: grown to {len(study.trials)} trials; the stored "
                "ones are kept"
            )
        res = study.preset.resources
        if not todo:
            emit(f"study {study.preset.name}: all {len(study.trials)} trials finished before")
            return conclude_study(study, records, time.monotonic() - tic, argv=options.argv)
        emit(
            f"study {study.preset.name}: {len(study.trials)} trials, {len(finished)} "
            f"finished before, {len(todo)} to run on {where} ({cluster}); "
            f"{res['cpu']:g} CPU + {res['gpu']:g} GPU per trial"
        )
        emit(f"  folder: {study.folder}")

        def abandon(reason: str) -> None:  # the cluster went away and Ray blocks the driver
            outcome = conclude_study(
                study,
                records,
                time.monotonic() - tic,
                stopped="cluster",
                stop_detail=reason,
                argv=options.argv,
            )
            (on_abandon or _exit_lost(emit))(outcome)

        watch = ClusterWatch(gcs_address(), abandon)
        detail = ""
        try:
            launch(study, todo_names, finished, options.argv, emit, records, watch, stop)
        except ClusterLost as err:
            stopped, detail = "cluster", str(err)
        except KeyboardInterrupt:
            stopped = "cluster" if watch.lost else stop.get("signal", "SIGINT")
            detail = watch.lost or ""
        except Exception as err:
            # A write of the driver (trials.csv, Ray's experiment state, a Tune checkpoint)
            # failed for lack of space: Ray ends fit() with an OSError or an EOFError.
            fault = write_fault(err, study.folder)
            if fault is None:
                raise
            stopped, detail = "disk", stop.get("disk") or fault
        else:
            # Tune returns early on SIGINT/SIGTERM or a trial's write fault (a full disk),
            # leaving trials neither finished nor failed.
            stopped = "disk" if "disk" in stop else stop.get("signal", "SIGINT")
            detail = stop.get("disk", "")
        if not watch.claim():  # the watching thread concludes and ends the process
            threading.Event().wait()
        return conclude_study(
            study,
            records,
            time.monotonic() - tic,
            stopped=stopped,  # kept only if trials are left unfinished
            stop_detail=detail,
            argv=options.argv,
        )
