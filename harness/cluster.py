"""Ray itself for the grid: a session (a local Ray, or a cluster joined at ``--address`` with
its head's token-authentication mode: :func:`_match_head_auth`), the cluster's capacity against
a trial's request (:func:`check_cluster`), and a watch on the head while a launch runs
(:class:`ClusterWatch`: Ray's driver does not say when its cluster went away).

With :mod:`harness.grid` the only modules that import ray; lazily, so the CLI stays fast and
``--dry-run`` needs no Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from harness.errors import ConfigError
from harness.study import write_fault

#: Environment variables with this prefix are passed on to every trial.
FORWARDED_ENV_PREFIX = "PACT_HARNESS_"
#: Environment defaults that keep Ray's output readable (a user's own values win).
RAY_ENV_DEFAULTS = {
    # Reporting every epoch with a checkpoint otherwise triggers "Experiment state snapshotting
    # has been triggered multiple times..." warnings.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # The new output engine prints an experiment banner even at verbose=0; the old one is
    # silent there, which leaves the study's own progress lines (GridProgress) alone.
    "RAY_AIR_NEW_OUTPUT": "0",
}

#: Ray's switch for token authentication (Ray 2.59+: ``token`` or ``disabled``).
AUTH_MODE_ENV = "RAY_AUTH_MODE"

log = logging.getLogger(__name__)


def _check_reachable(address: str) -> None:
    """Fail fast on a host:port nobody listens on (ray.init would retry for minutes)."""
    target = address.split("://", 1)[-1]
    if target == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"--address {address}: cannot reach a Ray cluster there ({err}); start one with "
            "`ray start --head` or drop --address for a local Ray"
        ) from None


class _TuneNoiseFilter(logging.Filter):
    """Drop Tune messages the study reports better: "Trial task failed" tracebacks and the
    list of failed trials (the progress lines and the summary name each error; tracebacks stay
    in the trial's error.txt), the "Tuner.restore" advice after an interruption (a study
    resumes with ``--resume``), and tracebacks of writes that failed for lack of space (the
    study stops, saying so in one line)."""

    PREFIXES = ("Trial task failed", "Trials did not complete", "Experiment has been interrupted")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            # Tune's experiment state could not be saved for lack of space: the study stops
            # and its last line says so.
            if write_fault(record.exc_info[1]) is not None:
                return False
        return not str(record.msg).startswith(self.PREFIXES)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (Ray's C++ log lines) for a probe expected to fail."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _no_token(loader: Any, auth_error: type[Exception]) -> str:
    """Why this process has no Ray token at hand ("" if it has one)."""
    try:
        if loader.instance().has_token(ignore_auth_mode=True):
            return ""
    except auth_error as err:  # e.g. RAY_AUTH_TOKEN_PATH names a missing or empty file
        return f"this driver's token cannot be read ({getattr(err, 'message', err)})"
    return "this driver has no token"


def _match_head_auth(address: str) -> Callable[[], None] | None:
    """Give this driver the token authentication mode of the cluster's head (Ray 2.59+).

    ``ray start --head`` with ``RAY_AUTH_MODE`` unset turns token authentication on when a
    token is at hand (``RAY_AUTH_TOKEN``, the file at ``RAY_AUTH_TOKEN_PATH``, or
    ``~/.ray/auth_token``, which every local ``ray.init()`` writes), but ``ray.init(address=
    "HOST:PORT")`` never does: that driver sends no token and retries ``InvalidAuthToken`` for
    25 s. And a driver in token mode cannot run trials on a head without authentication (its
    actors are cancelled). So the head is asked (its GCS, one short request without a token)
    and the driver takes its mode, whatever ``RAY_AUTH_MODE`` says; a head that wants a token
    this driver lacks, or that refuses the token at hand, is one line saying what to export.
    Returns what restores the driver's own mode (after ``ray.shutdown()``), or None.
    """
    target = address.split("://", 1)[-1]
    if "://" in address or target == "auto" or ":" not in target:
        return None  # "auto" follows the head's rule itself; Ray Client addresses are not probed
    try:
        from ray._raylet import AuthenticationTokenLoader, Config, InnerGcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # a Ray without token authentication
        return None
    before = os.environ.get(AUTH_MODE_ENV)

    def set_mode(mode: str | None) -> None:
        if mode is None:
            os.environ.pop(AUTH_MODE_ENV, None)
        else:
            os.environ[AUTH_MODE_ENV] = mode
        Config.initialize("")  # Ray caches its config: make this process see the mode

    def refused(mode: str) -> bool | None:
        """Whether the head refuses a driver in ``mode``; None if it did not answer."""
        set_mode(mode)
        try:
            with _quiet_stderr():
                InnerGcsClient.standalone(target, None, 5000)
        except AuthenticationError:
            return True
        except Exception:  # noqa: BLE001 - ray.init reports a head that does not answer
            return None
        return False

    export = (
        f"export {AUTH_MODE_ENV}=token RAY_AUTH_TOKEN_PATH=<a copy of the head's "
        "~/.ray/auth_token> (or RAY_AUTH_TOKEN=<the token>)"
    )
    try:
        needs_token = refused("disabled")
        if needs_token is None or (not needs_token and before != "token"):
            set_mode(before)
            return None
        if not needs_token:
            log.warning(
                "--address %s: the head runs without token authentication; this driver "
                "joins it without one (%s=%s ignored)",
                address,
                AUTH_MODE_ENV,
                before,
            )
        elif missing := _no_token(AuthenticationTokenLoader, AuthenticationError):
            raise ConfigError(
                f"--address {address}: the cluster's head runs Ray's token authentication and "
                f"{missing}: {export}"
            )
        elif refused("token"):
            raise ConfigError(
                f"--address {address}: the cluster's head refuses this driver's Ray token "
                f"(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token): it is not the "
                f"head's; {export}"
            )
    except BaseException:
        set_mode(before)
        raise
    return lambda: set_mode(before)


@contextlib.contextmanager
def ray_session(address: str | None, verbose: bool = False) -> Iterator[str]:
    """Connect to the cluster at ``address`` or start a local Ray; yields a description.

    An existing connection of this process is used as is and left open.
    """
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import ray

    if not verbose:
        for name in (
            "ray.tune.execution.tune_controller",
            "ray.tune.execution.experiment_state",
            "ray.tune.tune",
        ):
            logger = logging.getLogger(name)
            if not any(isinstance(f, _TuneNoiseFilter) for f in logger.filters):
                logger.addFilter(_TuneNoiseFilter())
    if ray.is_initialized():
        yield "the Ray instance this process is connected to"
        return
    kwargs: dict[str, Any] = dict(
        log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.WARNING
    )
    # The harness's own environment variables (``PACT_HARNESS_*``, e.g. the fault-injection
    # switch of harness.train) reach the trials: Ray workers do not inherit the driver's.
    forwarded = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX)}
    if forwarded:
        kwargs["runtime_env"] = {"env_vars": forwarded}
    undo_auth = None
    if address:
        _check_reachable(address)
        undo_auth = _match_head_auth(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            if undo_auth is not None:
                undo_auth()
            raise ConfigError(f"--address {address}: cannot connect to Ray: {err}") from None
        where = f"Ray cluster at {address}"
    else:
        ray.init(address="local", include_dashboard=False, **kwargs)
        where = "a local Ray"
    try:
        yield where
    finally:
        try:
            ray.shutdown()
        except Exception as err:  # noqa: BLE001 - a cluster that went away cannot be left cleanly
            log.warning("ray.shutdown: %s", last_line(str(err)))
        if undo_auth is not None:
            undo_auth()


def live_nodes() -> list[dict[str, float]]:
    """The resources of every live node of the connected Ray cluster."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def check_cluster(resources: Mapping[str, float]) -> str:
    """Refuse a per-trial request that no live node can hold (Ray would wait forever)."""
    nodes = live_nodes()
    cpu, gpu = resources["cpu"], resources["gpu"]
    total_gpu = sum(n.get("GPU", 0) for n in nodes)
    if gpu > 0 and total_gpu == 0:
        raise ConfigError(
            f"resources.gpu={gpu:g} per trial but the Ray cluster has no GPU; "
            "use --gpus-per-trial 0 on a CPU-only cluster"
        )
    if not any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
        sizes = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes)
        raise ConfigError(
            f"no Ray node can hold a trial of {cpu:g} CPU and {gpu:g} GPU (nodes: {sizes}); "
            "ask for less with --cpus-per-trial/--gpus-per-trial"
        )
    total_cpu = sum(n.get("CPU", 0) for n in nodes)
    return f"{len(nodes)} node(s), {total_cpu:g} CPU, {total_gpu:g} GPU"


class ClusterLost(Exception):
    """The Ray cluster went away under the driver (its head stopped, or the driver lost it)."""


def gcs_address() -> str | None:
    """The address of the connected cluster's GCS (its head), None if Ray cannot say."""
    import ray

    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - only a probe
        return None


def cluster_gone(gcs: str | None, timeout: float = 5.0) -> str | None:
    """None while the cluster's head (its GCS at ``gcs``) accepts connections, else why not."""
    if not gcs or ":" not in gcs:
        return None
    host, _, port = gcs.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except (OSError, ValueError) as err:
        return f"its head at {gcs} does not answer: {getattr(err, 'strerror', None) or err}"


class ClusterWatch:
    """Watch the connected cluster's head while a launch runs (Ray's own driver does not say
    when its cluster went away: it waits, and its C++ core ends the process with status 1
    after 60 s without the GCS).

    Every ``interval`` seconds a thread probes the head's GCS port; after ``misses`` failed
    probes in a row it records why (``lost``) and stops Tune as Ctrl+C does (SIGINT to this
    process: Tune ends ``fit()`` after its current step), so the driver concludes the study
    itself. If the driver has not claimed the conclusion ``grace_s`` later (Ray blocked it),
    ``abandon(reason)`` runs in the watching thread: it concludes and ends the process.
    """

    def __init__(
        self,
        gcs: str | None,
        abandon: Callable[[str], None],
        interval: float = 1.0,
        misses: int = 3,
        grace_s: float = 10.0,
    ) -> None:
        self.gcs, self.abandon = gcs, abandon
        self.interval, self.misses, self.grace_s = interval, misses, grace_s
        self.lost: str | None = None
        self._done = threading.Event()
        self._claim = threading.Lock()
        self._claimed = False
        self._thread = threading.Thread(target=self._run, name="harness-cluster-watch", daemon=True)

    def __enter__(self) -> ClusterWatch:
        if self.gcs:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def claim(self) -> bool:
        """True for the first caller: it concludes the study (the driver, or ``abandon``)."""
        with self._claim:
            first, self._claimed = not self._claimed, True
            return first

    def _run(self) -> None:
        missed = 0
        while not self._done.wait(self.interval):
            gone = cluster_gone(self.gcs, timeout=2.0)
            missed = missed + 1 if gone else 0
            if missed >= self.misses:
                self.lost = gone
                break
        if self.lost is None:
            return
        with contextlib.suppress(OSError):
            os.kill(os.getpid(), signal.SIGINT)  # Tune's handler: fit() returns
        if not self._done.wait(self.grace_s) and self.claim():
            self.abandon(self.lost)


def last_line(text: str) -> str:
    """The last non-empty line of a traceback (the exception), shortened."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "failed"
