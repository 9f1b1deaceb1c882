"""A run directory (``MODEL_DIR``): every file a run reads or writes, in one place, on ``storage``.

Layout::

    MODEL_DIR/experiment.json   the Experiment and RunConfig (written once at the first start)
    MODEL_DIR/config.gin        the gin configuration of the latest start (for people)
    MODEL_DIR/checkpoints/      orbax steps: train state + data position
    MODEL_DIR/metrics.jsonl     train and eval records
    MODEL_DIR/.lock             the exclusive lock of the process that trains in it (its host and pid)

``RunDir.record`` compares a new start with the recorded experiment *before anything is
written*: a difference is refused with one message listing every differing setting,
unless the setting is one the caller allows to change (``may_change``) or belongs to the
``RunConfig`` (steps, logging, evaluation, checkpoint cadence, mesh).

``RunDir.lock`` gives one trainer at a time the directory.  On local disk it is an OS lock
(``flock``) on ``.lock``: the kernel releases it when the process ends, however it ends, so
a stale local lock cannot exist.  On ``gs://`` (no locks) it is a lease object ``.lock``
naming its holder (host, pid, start), renewed every ``LEASE_RENEW_S`` seconds; a lease whose
holder is on this host and no longer running is taken over, any other is refused with its
holder and age, and the user deletes it when that trainer is gone (docs/reliability.md).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Iterator, Sequence

from dss_jax import experiment as experiment_lib
from dss_jax import metrics_logging, storage

EXPERIMENT_FILE = "experiment.json"
CONFIG_GIN_FILE = "config.gin"
CHECKPOINT_SUBDIR = "checkpoints"
METRICS_FILE = metrics_logging.METRICS_FILE  # one name, owned by the metrics module
LOCK_FILE = ".lock"
LEASE_RENEW_S = 60.0
LEASE_SETTLE_S = 2.0  # wait after writing a lease, then re-read it: two trainers that start together see one winner


class ExperimentMismatchError(ValueError):
    """A restart's settings differ from the experiment recorded in its MODEL_DIR."""


class RunDirLockedError(RuntimeError):
    """Another process is training in this MODEL_DIR."""


class RunDir:
    """Paths and records of one run directory (local or ``gs://``)."""

    def __init__(self, path: str | os.PathLike):
        if path is None or (isinstance(path, str) and not path.strip()):
            raise experiment_lib.ConfigError("MODEL_DIR is not set: pass --gin.MODEL_DIR=\"'/path/to/run'\"")
        if not isinstance(path, (str, os.PathLike)):
            raise experiment_lib.ConfigError(f"MODEL_DIR = {path!r} is not valid: expected a directory path (a "
                                             f"string), e.g. --gin.MODEL_DIR=\"'/path/to/run'\"")
        self.path = storage.run_path(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def experiment_file(self):
        return self.path / EXPERIMENT_FILE

    @property
    def checkpoints(self):
        return self.path / CHECKPOINT_SUBDIR

    @property
    def metrics_file(self):
        return self.path / METRICS_FILE

    def has_experiment(self) -> bool:
        return self.experiment_file.exists()

    def read(self) -> tuple[experiment_lib.Experiment, experiment_lib.RunConfig]:
        """The recorded (Experiment, RunConfig); a clear error when this is not a run directory."""
        if not self.experiment_file.exists():
            raise FileNotFoundError(f"{self.experiment_file} not found: {self.path} is not a run directory written "
                                    f"by python -m dss_jax.train (check MODEL_DIR)")
        return experiment_lib.loads(self.experiment_file.read_text(), str(self.experiment_file))

    def read_experiment(self) -> experiment_lib.Experiment:
        return self.read()[0]

    def mismatches(self, experiment: experiment_lib.Experiment,
                   may_change: Sequence[str] = ()) -> list[tuple[str, Any, Any]]:
        """Recorded-vs-new differences that would change what is trained (empty when none)."""
        if not self.has_experiment():
            return []
        recorded = json.loads(self.experiment_file.read_text())["experiment"]
        return experiment_lib.differences(recorded, experiment.to_dict(), may_change)

    def record(self, experiment: experiment_lib.Experiment, run: experiment_lib.RunConfig,
               gin_text: str | None = None, may_change: Sequence[str] = ()) -> bool:
        """Check a (re)start against the record, then write it; returns True for a resumption.

        Raises ``ExperimentMismatchError`` listing every differing setting, having written
        nothing, when the experiment differs outside ``may_change``.
        """
        resuming = self.has_experiment()
        if resuming:
            self.read()  # a damaged record is an error, not a fresh start
            diffs = self.mismatches(experiment, may_change)
            if diffs:
                lines = "\n".join(f"  {name}: recorded {old!r}, now {new!r}" for name, old, new in diffs)
                unsaved = "" if self.checkpoints.exists() and any(self.checkpoints.iterdir()) else (
                    f" (it holds no checkpoint yet: deleting {self.experiment_file} starts this experiment here)")
                raise ExperimentMismatchError(
                    f"{self.path} holds a run of another experiment; {len(diffs)} setting(s) differ:\n{lines}\n"
                    f"Use a new MODEL_DIR, restore the recorded settings, or allow these to change with "
                    f"--gin.train.resume_may_change=\"{[name for name, _, _ in diffs]!r}\"{unsaved}.")
        self.path.mkdir(parents=True, exist_ok=True)
        storage.write_text_atomically(self.experiment_file, experiment_lib.dumps(experiment, run))
        if gin_text is not None:
            storage.write_text_atomically(self.path / CONFIG_GIN_FILE, gin_text)
        return resuming

    @contextlib.contextmanager
    def lock(self, enabled: bool = True) -> Iterator[None]:
        """Exclusive use of the directory while training; ``RunDirLockedError`` names the holder."""
        if not enabled:
            yield
            return
        if storage.is_remote(self.path):
            with lease(self.path / LOCK_FILE):
                yield
            return
        with _flock(self.path):
            yield

    def wait_until_free(self, timeout_s: float = 600.0, poll_s: float = 0.5, say=print) -> None:
        """Return once no trainer holds the directory (``say`` names it); ``RunDirLockedError`` after ``timeout_s``.

        For a launcher that restarts a run whose previous trainer may still be saving.
        """
        deadline, told = time.monotonic() + timeout_s, False
        while True:
            try:
                with self.lock():
                    return
            except RunDirLockedError as err:
                if time.monotonic() > deadline:
                    raise RunDirLockedError(f"{err} (waited {timeout_s:.0f} s)") from None
                if not told:
                    say(f"waiting: {err}")
                    told = True
                time.sleep(poll_s)


@contextlib.contextmanager
def _flock(directory) -> Iterator[None]:
    """An exclusive ``flock`` on ``directory/.lock``, which names the holder while it is held."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(os.fspath(directory / LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "a process that is starting"
            raise RunDirLockedError(f"{directory} is in use by another trainer ({holder}); wait for it to finish, "
                                    f"stop it, or choose another MODEL_DIR") from None
        text = _holder().encode()
        os.pwrite(fd, text, 0)
        os.ftruncate(fd, len(text))
        yield
    finally:
        os.close(fd)  # closing releases the lock (so does the process ending, however it ends)


def _holder() -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"host {socket.gethostname()} pid {os.getpid()}, started {started}"


def _lease_record() -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "started": now,
            "renewed": now}


def _read_lease(path) -> dict:
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def _holder_is_gone(record: dict) -> bool:
    """True only when the holder is a process of this host that no longer runs."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _describe_lease(path, record: dict) -> str:
    if not record:
        return f"{path.parent} is leased ({path} exists but cannot be read); if no trainer uses it, delete {path}"
    age = time.time() - float(record.get("renewed", 0))
    stale = (f"; it looks stale (a live holder renews it every {LEASE_RENEW_S:.0f} s)"
             if age > 5 * LEASE_RENEW_S else "")
    return (f"{path.parent} is leased by host {record.get('host')} pid {record.get('pid')}, last renewed "
            f"{age:.0f} s ago{stale}. If that trainer is gone, delete {path} and start again; "
            f"otherwise wait for it or choose another MODEL_DIR")


@contextlib.contextmanager
def lease(path, renew_every: float = LEASE_RENEW_S, settle_s: float = LEASE_SETTLE_S) -> Iterator[None]:
    """A lease object at ``path`` (for storage without locks): held while the block runs, renewed meanwhile."""
    path = storage.run_path(path)
    if path.exists():
        record = _read_lease(path)
        if not _holder_is_gone(record):
            raise RunDirLockedError(_describe_lease(path, record))
        print(f"taking over the lease {path}: its holder, pid {record['pid']} on this host, no longer runs", flush=True)
    mine = _lease_record()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mine))
    time.sleep(settle_s)
    if _read_lease(path).get("token") != mine["token"]:
        raise RunDirLockedError(_describe_lease(path, _read_lease(path)) + " (it started at the same moment)")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(renew_every):
            if _read_lease(path).get("token") == mine["token"]:
                with contextlib.suppress(Exception):
                    path.write_text(json.dumps(dict(mine, renewed=time.time())))

    renewer = threading.Thread(target=renew, name="run-dir-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        if _read_lease(path).get("token") == mine["token"]:
            with contextlib.suppress(Exception):
                path.unlink()


def restore_for_inference(directory: RunDir, model_config, mesh_config, step: int | None = None):
    """(model, params, step, mesh, rules): a run's checkpoint placed on a mesh as training placed it.

    ``model_config`` is the hardware-resolved config of the recorded experiment's model.
    Without ``step``: the newest checkpoint that restores and verifies (skipped ones are named).
    """
    from dss_jax import checkpoints, partitioning
    from dss_jax.model import T5, abstract_params

    model = T5(model_config)
    mesh = partitioning.make_mesh(*mesh_config.shape)
    rules = partitioning.logical_axis_rules(fsdp=mesh_config.fsdp)
    abstract = partitioning.with_sharding(abstract_params(model_config),
                                          partitioning.param_shardings(model, mesh, rules))
    params, step = checkpoints.restore_latest_params(directory.checkpoints, abstract, step)  # verified
    return model, params, step, mesh, rules
