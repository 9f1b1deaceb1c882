"""A run directory (``MODEL_DIR``): every file a run reads or writes, in one place, on ``storage``.

Layout::

    MODEL_DIR/experiment.json   the Experiment and RunConfig (written once at the first start)
    MODEL_DIR/config.gin        the gin configuration of the latest start (for people)
    MODEL_DIR/checkpoints/      orbax steps: train state + data position
    MODEL_DIR/metrics.jsonl     train and eval records
    MODEL_DIR/.lock             the exclusive lock of the process that trains in it

``RunDir.record`` compares a new start with the recorded experiment *before anything is
written*: a difference is refused with one message listing every differing setting,
unless the setting is one the caller allows to change (``may_change``) or belongs to the
``RunConfig`` (steps, logging, evaluation, checkpoint cadence, mesh).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
from typing import Any, Iterator, Sequence

from dss_jax import experiment as experiment_lib
from dss_jax import storage

EXPERIMENT_FILE = "experiment.json"
CONFIG_GIN_FILE = "config.gin"
CHECKPOINT_SUBDIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"


class ExperimentMismatchError(ValueError):
    """A restart's settings differ from the experiment recorded in its MODEL_DIR."""


class RunDirLockedError(RuntimeError):
    """Another process is training in this MODEL_DIR."""


class RunDir:
    """Paths and records of one run directory (local or ``gs://``)."""

    def __init__(self, path: str | os.PathLike):
        if path is None or (isinstance(path, str) and not path.strip()):
            raise experiment_lib.ConfigError("MODEL_DIR is not set: pass --gin.MODEL_DIR=\"'/path/to/run'\"")
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
                raise ExperimentMismatchError(
                    f"{self.path} holds a run of another experiment; {len(diffs)} setting(s) differ:\n{lines}\n"
                    f"Use a new MODEL_DIR, restore the recorded settings, or allow these to change with "
                    f"--gin.train.resume_may_change=\"{[name for name, _, _ in diffs]!r}\".")
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.experiment_file, experiment_lib.dumps(experiment, run))
        if gin_text is not None:
            _write_atomic(self.path / CONFIG_GIN_FILE, gin_text)
        return resuming

    @contextlib.contextmanager
    def lock(self, enabled: bool = True) -> Iterator[None]:
        """Exclusive use of the directory while training (an OS lock on local disk)."""
        if not enabled:
            yield
            return
        if storage.is_remote(self.path):
            with _lease(self.path / LOCK_FILE):
                yield
            return
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        lock_path = os.fspath(self.path / LOCK_FILE)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown process"
                raise RunDirLockedError(f"{self.path} is in use by another trainer ({holder}); wait for it to "
                                        f"finish or choose another MODEL_DIR") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder().encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _holder() -> str:
    return f"host {socket.gethostname()} pid {os.getpid()}"


@contextlib.contextmanager
def _lease(path) -> Iterator[None]:
    """On cloud storage: a lease object naming its holder (see docs/reliability.md)."""
    if path.exists():
        holder = path.read_text().strip()
        raise RunDirLockedError(f"{path.parent} is leased by {holder}; if that trainer is gone, delete {path} "
                                f"and start again")
    path.write_text(_holder())
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            path.unlink()


def _write_atomic(path, text: str) -> None:
    """Write ``text`` so that readers see the old or the new file, never a part."""
    if storage.is_remote(path):
        path.write_text(text)  # object stores replace objects whole
        return
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    tmp.write_text(text)
    os.replace(os.fspath(tmp), os.fspath(path))


def restore_for_inference(directory: RunDir, model_config, mesh_config, step: int | None = None):
    """(model, params, step, mesh, rules): a run's checkpoint placed on a mesh as training placed it.

    ``model_config`` is the hardware-resolved config of the recorded experiment's model.
    """
    from dss_jax import checkpoints, partitioning
    from dss_jax.model import T5, abstract_params

    model = T5(model_config)
    mesh = partitioning.make_mesh(*mesh_config.shape)
    rules = partitioning.logical_axis_rules(fsdp=mesh_config.fsdp)
    abstract = partitioning.with_sharding(abstract_params(model_config),
                                          partitioning.param_shardings(model, mesh, rules))
    step = checkpoints.latest_checkpoint_step(directory.checkpoints) if step is None else step
    if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {directory.checkpoints}")
    return model, checkpoints.restore_params(directory.checkpoints / str(step), abstract), step, mesh, rules
